use static_attention::MultiHead;

fn main() {
    // 10 features cannot be split evenly over 4 heads.
    let _layer = MultiHead::<8, 10, 4>::from_seed(0);
}
