use nalgebra::SMatrix;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use static_attention::*;

#[test]
fn fast_matches_reference() {
    let mut rng = SmallRng::seed_from_u64(3);
    let layer = MultiHead::<7, 12, 3, f64>::new(&mut rng);
    let x = SMatrix::<f64, 7, 12>::from_fn(|_, _| rng.random_range(-1.0..1.0));
    for mask in [
        Mask::none(),
        Mask::causal(Alignment::TopLeft),
        Mask::sliding_window(2),
    ] {
        let (y, w) = layer.forward_with_weights(&x, &mask);
        let y2 = layer.forward(&x, &mask);
        let (yr, wr) = reference::multi_head(&layer, &x, &x, &x, &mask);
        println!("{} {}", (y - yr).amax(), (y2 - yr).amax());
        assert!((y - yr).amax() < 1e-12);
        assert!((y2 - yr).amax() < 1e-12);
        for h in 0..3 {
            assert!((w.head(h) - wr[h]).amax() < 1e-12);
        }
    }
}
