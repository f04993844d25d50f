use nalgebra::SMatrix;
use static_attention::{Mask, scaled_dot_product_attention};

fn main() {
    // Queries and keys with no features: the default scale 1/√0 would be infinite.
    let q = SMatrix::<f32, 2, 0>::zeros();
    let k = SMatrix::<f32, 3, 0>::zeros();
    let v = SMatrix::<f32, 3, 2>::zeros();
    let _ = scaled_dot_product_attention(&q, &k, &v, &Mask::none(), None);
}
