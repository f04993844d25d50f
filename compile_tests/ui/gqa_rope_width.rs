use static_attention::positions::{Rope, RopeStyle};
use static_attention::{Alignment, GroupedQuery, Mask, SMatrix};

fn main() {
    // Heads of 8 features, a rotary table for heads of 16.
    let layer = GroupedQuery::<64, 8, 2, 64, 16>::from_seed(0);
    let rope = Rope::<16, 32>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
    let x = SMatrix::<f32, 4, 64>::zeros();
    let _ = layer.forward(&x, &Mask::causal(Alignment::TopLeft), &rope);
}
