use nalgebra::SMatrix;
use rand::{SeedableRng, rngs::SmallRng};
use static_attention::{Mask, MultiHead};

fn main() {
    let layer = MultiHead::<3, 4, 2>::new(&mut SmallRng::seed_from_u64(0));
    let x = SMatrix::<f32, 3, 4>::zeros();
    let memory = SMatrix::<f32, 7, 8>::zeros();
    let _ = layer.cross_attention(&x, &memory, &Mask::none());
}
