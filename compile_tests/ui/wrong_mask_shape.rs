use nalgebra::SMatrix;
use static_attention::{Mask, MultiHead};

fn main() {
    let layer = MultiHead::<3, 4, 2>::from_seed(0);
    let x = SMatrix::<f32, 3, 4>::zeros();
    let blocked = SMatrix::<bool, 3, 4>::repeat(false);
    // A 3 × 4 mask for 3 × 3 self-attention.
    let _ = layer.forward(&x, &Mask::block_where(&blocked));
}
