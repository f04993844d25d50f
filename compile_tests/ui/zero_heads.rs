use static_attention::MultiHead;

fn main() {
    let _layer = MultiHead::<8, 16, 0>::from_seed(0);
}
