use rand::{SeedableRng, rngs::SmallRng};
use static_attention::MultiHead;

fn main() {
    // 10 features cannot be split evenly over 4 heads.
    let _layer = MultiHead::<8, 10, 4>::new(&mut SmallRng::seed_from_u64(0));
}
