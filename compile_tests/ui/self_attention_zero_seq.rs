use static_attention::SelfAttention;

fn main() {
    let _head = SelfAttention::<0, 4>::from_seed(0);
}
