use rand::{SeedableRng, rngs::SmallRng};
use static_attention::MultiHead;

fn main() {
    let _layer = MultiHead::<0, 16, 2>::new(&mut SmallRng::seed_from_u64(0));
}
