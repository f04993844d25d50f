use rand::{SeedableRng, rngs::SmallRng};
use static_attention::MultiHead;

fn main() {
    let _layer = MultiHead::<8, 16, 0>::new(&mut SmallRng::seed_from_u64(0));
}
