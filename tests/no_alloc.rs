//! No forward pass touches the heap: a counting global allocator fails the test on any
//! allocation made while a forward call runs on this thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nalgebra::SMatrix;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use static_attention::{
    Alignment, AttentionWeights, Linear, Mask, MultiHead, Scratch, SelfAttention,
    scaled_dot_product_attention, scaled_dot_product_attention_with_weights,
};

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

fn note() {
    // `try_with` because the allocator can run while thread-locals are being torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is `System`'s; the counting touches only const-initialised
// thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above; `ptr` came from this allocator, which is `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` with allocation counting armed and returns how many allocations it made.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let r = std::hint::black_box(f());
    ARMED.with(|a| a.set(false));
    (r, COUNT.with(Cell::get))
}

#[test]
fn the_counter_sees_allocations() {
    // Guard against a test that cannot fail: a real allocation is counted.
    let (_, n) = allocations(|| std::hint::black_box(vec![1u8; 64]));
    assert!(n >= 1);
}

fn rand_matrix<const R: usize, const C: usize>(rng: &mut SmallRng) -> SMatrix<f32, R, C> {
    SMatrix::from_fn(|_, _| rng.random_range(-1.0..1.0))
}

#[test]
fn forward_passes_do_not_allocate() {
    let mut rng = SmallRng::seed_from_u64(11);
    let layer = MultiHead::<9, 12, 3>::new(&mut rng);
    let head = SelfAttention::<9, 12>::new(&mut rng);
    let x: SMatrix<f32, 9, 12> = rand_matrix(&mut rng);
    let memory: SMatrix<f32, 5, 12> = rand_matrix(&mut rng);
    let pad = [false, true, false, false, true, false, false, false, false];
    let blocked = SMatrix::<bool, 9, 9>::from_fn(|i, j| (i + 2 * j) % 5 == 0);
    let bias = SMatrix::<f32, 9, 9>::from_fn(|i, j| (i as f32 - j as f32) * 0.1);
    let masks = [
        Mask::none(),
        Mask::causal(Alignment::TopLeft),
        Mask::causal(Alignment::BottomRight).with_key_is_padding(&pad),
        Mask::sliding_window(3, Alignment::BottomRight),
        Mask::block_where(&blocked),
        Mask::attend_where(&blocked),
        Mask::additive(&bias),
    ];
    let mut scratch = Scratch::<f32, 9, 5, 12>::new();
    let mut out = SMatrix::<f32, 9, 12>::zeros();
    let mut weights = AttentionWeights::<f32, 9, 5, 3>::zeros();
    let l = Linear::<f32, 12, 12>::zeros();

    let (_, n) = allocations(|| {
        for mask in &masks {
            std::hint::black_box(layer.forward(&x, mask));
            std::hint::black_box(layer.forward_with_weights(&x, mask));
            std::hint::black_box(head.forward(&x, mask));
            std::hint::black_box(head.forward_with_weights(&x, mask));
            std::hint::black_box(scaled_dot_product_attention(&x, &x, &x, mask, None));
            std::hint::black_box(scaled_dot_product_attention_with_weights(
                &x,
                &x,
                &x,
                mask,
                Some(0.5),
            ));
        }
        std::hint::black_box(layer.cross_attention(&x, &memory, &Mask::none()));
        layer.attend(
            &x,
            &memory,
            &memory,
            &Mask::none(),
            &mut scratch,
            &mut out,
            Some(&mut weights),
        );
        layer.attend(
            &x,
            &memory,
            &memory,
            &Mask::none(),
            &mut scratch,
            &mut out,
            None,
        );
        std::hint::black_box(l.forward(&x));
    });
    assert_eq!(n, 0, "forward passes allocated {n} times");
}

#[test]
fn f64_forward_does_not_allocate() {
    let mut rng = SmallRng::seed_from_u64(12);
    let layer = MultiHead::<7, 12, 3, f64>::new(&mut rng);
    let x = SMatrix::<f64, 7, 12>::from_fn(|i, j| (i * 12 + j) as f64 * 0.01);
    let (_, n) = allocations(|| {
        std::hint::black_box(layer.forward(&x, &Mask::causal(Alignment::TopLeft)));
        std::hint::black_box(layer.forward_with_weights(&x, &Mask::none()));
    });
    assert_eq!(n, 0);
}
