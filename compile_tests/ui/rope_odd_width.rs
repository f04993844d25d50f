use static_attention::positions::{Rope, RopeStyle};

fn main() {
    // RoPE rotates pairs: 7 features cannot be paired.
    let _rope = Rope::<7, 32>::new(10_000.0, RopeStyle::Interleaved);
}
