use nalgebra::SMatrix;
use static_attention::{Linear, Mask, MultiHead, SelfAttention};

const W: [[f32; 4]; 4] = [[0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.5]];
const L: Linear<4, 4> = Linear::from_rows(W, [0.0; 4]);
static LAYER: MultiHead<3, 4, 2> = MultiHead::from_parts(L, L, L, L);

fn main() {
    let x = SMatrix::<f32, 3, 4>::repeat(1.0);
    let _ = LAYER.forward(&x, &Mask::none());
    let head = SelfAttention::<3, 4>::from_parts(L, L, L);
    let _ = head.forward(&x, &Mask::none());
}
