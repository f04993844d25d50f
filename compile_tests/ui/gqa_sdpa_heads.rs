use static_attention::{Mask, SMatrix, grouped_query_attention};

fn main() {
    // 6 query heads over 4 key/value heads.
    let q = [SMatrix::<f32, 2, 4>::zeros(); 6];
    let kv = [SMatrix::<f32, 3, 4>::zeros(); 4];
    let _ = grouped_query_attention(&q, &kv, &kv, &Mask::none(), None);
}
