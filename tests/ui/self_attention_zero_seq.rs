use rand::{SeedableRng, rngs::SmallRng};
use static_attention::SelfAttention;

fn main() {
    let _head = SelfAttention::<0, 4>::new(&mut SmallRng::seed_from_u64(0));
}
