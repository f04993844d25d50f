//! No forward pass touches the heap: a counting global allocator fails the test on any
//! allocation made while a forward call runs on this thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nalgebra::SMatrix;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use std::hint::black_box;

use static_attention::mask::Additive;
use static_attention::positions::{NoPositions, PositionEncoding, Rope, RopeStyle};
use static_attention::{
    Alibi, Alignment, AttentionWeights, Bias, GroupedQuery, KvCache, Linear, Mask, MultiHead,
    Scratch, SelfAttention, Weight, bf16, f16, grouped_query_attention,
    grouped_query_attention_into, scaled_dot_product_attention, scaled_dot_product_attention_into,
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
    let w = Some(&mut bufs.w);
    layer.attend(x, x, x, mask, &mut bufs.scratch, &mut bufs.out, w);
    let (scratch, out) = (&mut bufs.cross_scratch, &mut bufs.out);
    layer.attend(x, memory, memory, cross_mask, scratch, out, None);
    let w = Some(&mut bufs.cross_w);
    layer.attend(x, memory, memory, cross_mask, scratch, out, w);
    black_box(head.forward(x, mask));
    black_box(head.forward_with_weights(x, mask));
    black_box(head.cross_attention(x, memory, cross_mask));
    black_box(head.cross_attention_with_weights(x, memory, cross_mask));
    head.forward_into(x, mask, &mut bufs.scratch, &mut bufs.out);
    let w = Some(&mut bufs.w1);
    head.attend(x, x, x, mask, &mut bufs.scratch, &mut bufs.out, w);
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
    let layer = MultiHead::<9, 12, 3>::new(&mut rng, Bias::Present);
    let head = SelfAttention::<9, 12>::new(&mut rng, Bias::Present);
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
    let layer = MultiHead::<7, 12, 3, f64>::new(&mut rng, Bias::Present);
    let x = SMatrix::<f64, 7, 12>::from_fn(|i, j| (i * 12 + j) as f64 * 0.01);
    let (_, n) = allocations(|| {
        std::hint::black_box(layer.forward(&x, &Mask::causal(Alignment::TopLeft)));
        std::hint::black_box(layer.forward_with_weights(&x, &Mask::none()));
    });
    assert_eq!(n, 0);
}

/// A grouped-query layer of the decoder tests' kind, small enough for Miri: 16 features, 4
/// query heads of 4 features on 2 kv heads.
type Gqa<W = f32> = GroupedQuery<16, 4, 2, 16, 8, f32, W>;

/// The decoder entry points of a grouped-query layer with one position encoding: a whole
/// prompt by value and into buffers, then a 5-token prefill and one decoding step through a
/// cache, by value and into buffers.
fn decoder_entry_points<W: Weight<f32>, P: PositionEncoding<f32>>(
    layer: &Gqa<W>,
    x: &SMatrix<f32, 6, 16>,
    positions: &P,
    cache: &mut KvCache<8, 8>,
    bufs: &mut DecoderBuffers,
) {
    let causal = Mask::causal(Alignment::TopLeft);
    black_box(layer.forward(x, &causal, positions).expect("fits"));
    black_box(
        layer
            .forward_with_weights(x, &causal, positions)
            .expect("fits"),
    );
    layer
        .forward_into(x, &causal, positions, &mut bufs.full, &mut bufs.out)
        .expect("fits");
    let w = Some(&mut bufs.weights);
    layer
        .attend(
            x,
            x,
            x,
            &causal,
            positions,
            &mut bufs.full,
            &mut bufs.out,
            w,
        )
        .expect("fits");
    let prompt = x.fixed_rows::<5>(0).into_owned();
    let token = x.fixed_rows::<1>(5).into_owned();
    cache.reset();
    black_box(layer.decode(&prompt, cache, positions).expect("fits"));
    black_box(layer.decode(&token, cache, positions).expect("fits"));
    cache.reset();
    layer
        .decode_into(
            &prompt,
            cache,
            positions,
            &mut bufs.prompt,
            &mut bufs.prompt_out,
        )
        .expect("fits");
    layer
        .decode_into(
            &token,
            cache,
            positions,
            &mut bufs.token,
            &mut bufs.token_out,
        )
        .expect("fits");
}

/// Caller-owned buffers for [`decoder_entry_points`].
struct DecoderBuffers {
    full: Scratch<6, 6, 16, f32, 8>,
    prompt: Scratch<5, 5, 16, f32, 8>,
    token: Scratch<1, 1, 16, f32, 8>,
    weights: AttentionWeights<6, 6, 4>,
    out: SMatrix<f32, 6, 16>,
    prompt_out: SMatrix<f32, 5, 16>,
    token_out: SMatrix<f32, 1, 16>,
}

#[test]
fn decoder_batch_and_half_weight_entry_points_do_not_allocate() {
    let gqa: Gqa = Gqa::from_seed(31);
    let gqa_bf16: Gqa<bf16> = gqa.to_weights();
    let mha = MultiHead::<6, 16, 4>::from_seed(32);
    let mha_f16: MultiHead<6, 16, 4, f32, f16> = mha.to_weights();
    let head = SelfAttention::<6, 16>::from_seed(33);
    let head_f16: SelfAttention<6, 16, f32, f16> = head.to_weights();
    let rope = Rope::<4, 8>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
    let x = SMatrix::<f32, 6, 16>::from_fn(|i, j| ((i * 16 + j) as f32 * 0.37).sin());
    let xs = [x, -x, x * 0.5];
    let pad = [false, true, false, false, false, false];
    let masks = [
        Mask::causal(Alignment::TopLeft),
        Mask::none().with_key_is_padding(&pad),
        Mask::sliding_window(2, Alignment::TopLeft),
    ];
    let q: [SMatrix<f32, 6, 4>; 4] = core::array::from_fn(|h| x.fixed_columns::<4>(4 * h).into());
    let kv: [SMatrix<f32, 8, 4>; 2] =
        core::array::from_fn(|g| SMatrix::from_fn(|i, j| ((i + g) as f32 - j as f32) * 0.1));
    let mut bufs = DecoderBuffers {
        full: Scratch::new(),
        prompt: Scratch::new(),
        token: Scratch::new(),
        weights: AttentionWeights::zeros(),
        out: SMatrix::zeros(),
        prompt_out: SMatrix::zeros(),
        token_out: SMatrix::zeros(),
    };
    let mut cache = KvCache::<8, 8>::new();
    let mut mha_cache = KvCache::<8, 16>::new();
    let mut mha_prompt = Scratch::<5, 5, 16>::new();
    let mut mha_token = Scratch::<1, 1, 16>::new();
    let mut scratch = Scratch::<6, 6, 16>::new();
    let mut outs = [SMatrix::<f32, 6, 16>::zeros(); 3];
    let mut heads_out = [SMatrix::<f32, 6, 4>::zeros(); 4];
    let mut weights = AttentionWeights::<6, 6, 4>::zeros();
    let mut rotated = SMatrix::<f32, 3, 4>::from_fn(|i, j| (i + j) as f32 * 0.25);

    // Miri interprets every instruction: under it, the grouped-query entry points with RoPE,
    // an f16-weight forward, batches and grouped SDPA once each (the paths the other
    // combinations share), which keeps CI's two Miri runs of this file near a minute each.
    let all = !cfg!(miri);
    let (_, n) = allocations(|| {
        // Grouped-query layers (f32 and bf16 weights) with each position encoding.
        decoder_entry_points(&gqa, &x, &rope, &mut cache, &mut bufs);
        if all {
            decoder_entry_points(&gqa_bf16, &x, &Alibi::Slope(0.5), &mut cache, &mut bufs);
            decoder_entry_points(&gqa, &x, &NoPositions, &mut cache, &mut bufs);
            decoder_entry_points(&gqa, &x, &Alibi::PerHead, &mut cache, &mut bufs);
            decoder_entry_points(&gqa_bf16, &x, &rope, &mut cache, &mut bufs);
        }
        // MultiHead decoding (f32 and f16 weights), by value and into buffers: the decoder
        // code above with as many kv heads as heads.
        if all {
            let prompt = x.fixed_rows::<5>(0).into_owned();
            let token = x.fixed_rows::<1>(5).into_owned();
            mha_cache.reset();
            black_box(
                mha.decode(&prompt, &mut mha_cache, &NoPositions)
                    .expect("fits"),
            );
            black_box(
                mha.decode(&token, &mut mha_cache, &NoPositions)
                    .expect("fits"),
            );
            mha_cache.reset();
            mha.decode_into(
                &prompt,
                &mut mha_cache,
                &NoPositions,
                &mut mha_prompt,
                &mut bufs.prompt_out,
            )
            .expect("fits");
            mha.decode_into(
                &token,
                &mut mha_cache,
                &NoPositions,
                &mut mha_token,
                &mut bufs.token_out,
            )
            .expect("fits");
            mha_cache.reset();
            mha_f16
                .decode_into(
                    &prompt,
                    &mut mha_cache,
                    &Alibi::PerHead,
                    &mut mha_prompt,
                    &mut bufs.prompt_out,
                )
                .expect("fits");
            mha_f16
                .decode_into(
                    &token,
                    &mut mha_cache,
                    &Alibi::PerHead,
                    &mut mha_token,
                    &mut bufs.token_out,
                )
                .expect("fits");
        }
        // Layers with f16 weights through the encoder entry points.
        mha_f16.forward_into(&x, &masks[2], &mut scratch, &mut outs[0]);
        if all {
            black_box(mha_f16.forward(&x, &masks[0]));
            black_box(mha_f16.forward_with_weights(&x, &masks[1]));
            let w = Some(&mut weights);
            mha_f16.attend(&x, &x, &x, &masks[0], &mut scratch, &mut outs[1], w);
            black_box(head_f16.forward(&x, &masks[0]));
            head_f16.forward_into(&x, &masks[1], &mut scratch, &mut outs[2]);
        }
        // Batches: one shared mask and one mask per sequence.
        for layer_masks in [&masks[..1], &masks[..]]
            .into_iter()
            .take(if all { 2 } else { 1 })
        {
            mha.forward_batch_into(&xs, layer_masks, &mut scratch, &mut outs, None)
                .expect("lengths fit");
            mha_f16
                .forward_batch_into(&xs, layer_masks, &mut scratch, &mut outs, None)
                .expect("lengths fit");
            head.forward_batch_into(&xs, layer_masks, &mut scratch, &mut outs, None)
                .expect("lengths fit");
            if all {
                let mut per_sequence = [weights.clone(), weights.clone(), weights.clone()];
                mha.forward_batch_into(
                    &xs,
                    layer_masks,
                    &mut scratch,
                    &mut outs,
                    Some(&mut per_sequence),
                )
                .expect("lengths fit");
                black_box(&per_sequence);
            }
        }
        // Grouped scaled dot-product attention, by value and into buffers, with ALiBi.
        for mask in [
            Mask::<6, 8>::causal(Alignment::BottomRight),
            Mask::none().with_alibi(),
        ] {
            black_box(grouped_query_attention(&q, &kv, &kv, &mask, None));
            grouped_query_attention_into(&q, &kv, &kv, &mask, Some(0.5), &mut heads_out);
        }
        // A rotary table on its own.
        rope.rotate(&mut rotated, 5).expect("5..8 fit");
    });
    assert_eq!(
        n, 0,
        "decoder, batch and half-weight entry points allocated {n} times"
    );
}
