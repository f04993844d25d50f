//! No forward pass touches the heap: a counting global allocator fails the test on any
//! allocation made while a forward call runs on this thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nalgebra::SMatrix;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use std::hint::black_box;

use static_attention::mask::Additive;
use static_attention::{
    Alignment, AttentionWeights, Linear, Mask, MultiHead, Scratch, SelfAttention,
    scaled_dot_product_attention, scaled_dot_product_attention_into,
    scaled_dot_product_attention_with_weights, scaled_dot_product_attention_with_weights_into,
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

/// Everything a forward pass can be asked for, with one mask: by-value, caller-owned and
/// general entry points of both layers and of scaled dot-product attention.
#[allow(clippy::too_many_arguments)]
fn every_entry_point<A: Additive<f32, 9, 9>, C: Additive<f32, 9, 5>>(
    layer: &MultiHead<9, 12, 3>,
    head: &SelfAttention<9, 12>,
    x: &SMatrix<f32, 9, 12>,
    memory: &SMatrix<f32, 5, 12>,
    mask: &Mask<'_, 9, 9, A>,
    cross_mask: &Mask<'_, 9, 5, C>,
    bufs: &mut Buffers,
) {
    black_box(layer.forward(x, mask));
    black_box(layer.forward_with_weights(x, mask));
    black_box(layer.cross_attention(x, memory, cross_mask));
    black_box(layer.cross_attention_with_weights(x, memory, cross_mask));
    layer.forward_into(x, mask, &mut bufs.scratch, &mut bufs.out);
    layer.forward_with_weights_into(x, mask, &mut bufs.scratch, &mut bufs.out, &mut bufs.w);
    layer.cross_attention_into(
        x,
        memory,
        cross_mask,
        &mut bufs.cross_scratch,
        &mut bufs.out,
    );
    layer.cross_attention_with_weights_into(
        x,
        memory,
        cross_mask,
        &mut bufs.cross_scratch,
        &mut bufs.out,
        &mut bufs.cross_w,
    );
    black_box(head.forward(x, mask));
    black_box(head.forward_with_weights(x, mask));
    black_box(head.cross_attention(x, memory, cross_mask));
    black_box(head.cross_attention_with_weights(x, memory, cross_mask));
    head.forward_into(x, mask, &mut bufs.scratch, &mut bufs.out);
    head.forward_with_weights_into(x, mask, &mut bufs.scratch, &mut bufs.out, &mut bufs.w1);
    head.attend(
        x,
        memory,
        memory,
        cross_mask,
        &mut bufs.cross_scratch,
        &mut bufs.out,
        None,
    );
    black_box(scaled_dot_product_attention(x, x, x, mask, None));
    black_box(scaled_dot_product_attention_with_weights(
        x,
        x,
        x,
        mask,
        Some(0.5),
    ));
    scaled_dot_product_attention_into(x, x, x, mask, None, &mut bufs.out);
    scaled_dot_product_attention_with_weights_into(
        x,
        x,
        x,
        mask,
        None,
        &mut bufs.out,
        &mut bufs.w1,
    );
}

/// Caller-owned buffers for [`every_entry_point`].
struct Buffers {
    scratch: Scratch<9, 9, 12>,
    cross_scratch: Scratch<9, 5, 12>,
    out: SMatrix<f32, 9, 12>,
    w: AttentionWeights<9, 9, 3>,
    cross_w: AttentionWeights<9, 5, 3>,
    w1: SMatrix<f32, 9, 9>,
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
    let cross_bias = SMatrix::<f32, 9, 5>::from_fn(|i, j| (i as f32 - j as f32) * 0.1);
    let masks: [Mask<'_, 9, 9>; 6] = [
        Mask::none(),
        Mask::causal(Alignment::TopLeft),
        Mask::causal(Alignment::BottomRight).with_key_is_padding(&pad),
        Mask::sliding_window(3, Alignment::BottomRight),
        Mask::block_where(&blocked),
        Mask::attend_where(&blocked),
    ];
    let mut bufs = Buffers {
        scratch: Scratch::new(),
        cross_scratch: Scratch::new(),
        out: SMatrix::zeros(),
        w: AttentionWeights::zeros(),
        cross_w: AttentionWeights::zeros(),
        w1: SMatrix::zeros(),
    };
    let l = Linear::<12, 12>::zeros();

    let (_, n) = allocations(|| {
        for mask in &masks {
            let cross = Mask::causal(Alignment::BottomRight);
            every_entry_point(&layer, &head, &x, &memory, mask, &cross, &mut bufs);
        }
        let both = Mask::block_where(&blocked).with_additive(&bias);
        let cross = Mask::additive(&cross_bias);
        every_entry_point(&layer, &head, &x, &memory, &both, &cross, &mut bufs);
        black_box(l.forward(&x));
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
