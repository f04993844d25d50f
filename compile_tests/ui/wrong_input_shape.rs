use nalgebra::SMatrix;
use static_attention::{Mask, MultiHead};

fn main() {
    let layer = MultiHead::<3, 4, 2>::from_seed(0);
    // 5 features where the layer takes 4: a type error, not a runtime panic.
    let x = SMatrix::<f32, 3, 5>::zeros();
    let _ = layer.forward(&x, &Mask::none());
}
