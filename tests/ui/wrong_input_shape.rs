use nalgebra::SMatrix;
use rand::{SeedableRng, rngs::SmallRng};
use static_attention::{Mask, MultiHead};

fn main() {
    let layer = MultiHead::<3, 4, 2>::new(&mut SmallRng::seed_from_u64(0));
    // 5 features where the layer takes 4: a type error, not a runtime panic.
    let x = SMatrix::<f32, 3, 5>::zeros();
    let _ = layer.forward(&x, &Mask::none());
}
