use static_attention::MultiHead;

fn main() {
    let _layer = MultiHead::<8, 0, 2>::from_seed(0);
}
