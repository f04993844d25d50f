use static_attention::*;
fn main() {
    let layer = MultiHead::<16, 64, 4>::from_seed(2);
    let x = SMatrix::<f32, 16, 64>::from_fn(|i, j| ((i * 31 + j * 7) % 100) as f32 / 50.0 - 1.0);
    let mut s = Scratch::<16, 16, 64>::new_boxed();
    let mut o = SMatrix::<f32, 16, 64>::zeros();
    let t = std::time::Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < 5.0 { for _ in 0..1000 { layer.forward_into(&x, &Mask::none(), &mut s, &mut o); } n += 1000; }
    println!("{:.2} µs/call", t.elapsed().as_secs_f64() / n as f64 * 1e6);
}
