use static_attention::MultiHead;

fn main() {
    let _layer = MultiHead::<0, 16, 2>::from_seed(0);
}
