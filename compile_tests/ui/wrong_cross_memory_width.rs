use nalgebra::SMatrix;
use static_attention::{Mask, MultiHead};

fn main() {
    let layer = MultiHead::<3, 4, 2>::from_seed(0);
    let x = SMatrix::<f32, 3, 4>::zeros();
    let memory = SMatrix::<f32, 7, 8>::zeros();
    let _ = layer.cross_attention(&x, &memory, &Mask::none());
}
