//! Bad runtime input to the decoder pieces gets a typed error with the numbers in its message,
//! and leaves the cache, the layer and the output exactly as they were (the crate's
//! `semantics`, "Bad input" and rule 13): a full cache, positions past the rotary table,
//! weight files with missing names or another kv-head count.

use static_attention::io::LoadError;
use static_attention::positions::{NoPositions, PositionError, Rope, RopeStyle};
use static_attention::{
    Alignment, Bias, CacheError, GroupedQuery, KvCache, Mask, MultiHead, SMatrix, Scratch,
};

type Layer = GroupedQuery<16, 4, 2, 16, 8>;

fn tokens<const S: usize>(seed: usize) -> SMatrix<f32, S, 16> {
    SMatrix::from_fn(|i, j| (((seed + i) * 16 + j) as f32 * 0.37).sin())
}

#[test]
fn a_full_cache_is_an_error_and_stays_as_it_was() {
    let layer = Layer::from_seed(1);
    let mut cache = KvCache::<4, 8>::new();
    layer
        .decode(&tokens::<3>(0), &mut cache, &NoPositions)
        .expect("3 of 4");
    let before = cache.clone();
    let mut scratch = Scratch::new();
    let mut out = SMatrix::<f32, 2, 16>::repeat(7.0);
    let err = layer
        .decode_into(
            &tokens::<2>(3),
            &mut cache,
            &NoPositions,
            &mut scratch,
            &mut out,
        )
        .unwrap_err();
    assert_eq!(
        err,
        CacheError::Full {
            capacity: 4,
            len: 3,
            adding: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "the KV cache holds 3 of 4 positions and cannot take 2 more (reset it, or use a larger \
         capacity or a sliding window)"
    );
    assert_eq!(cache, before);
    assert_eq!(out, SMatrix::<f32, 2, 16>::repeat(7.0));
    // One more token still fits, then nothing does.
    layer
        .decode(&tokens::<1>(3), &mut cache, &NoPositions)
        .expect("4 of 4");
    assert_eq!(cache.len(), 4);
    let full = cache.clone();
    assert!(matches!(
        layer.decode(&tokens::<1>(4), &mut cache, &NoPositions),
        Err(CacheError::Full {
            len: 4,
            adding: 1,
            ..
        })
    ));
    assert_eq!(cache, full);
    // MultiHead's decoding checks the same way.
    let mha = MultiHead::<4, 16, 4>::from_seed(2);
    let mut c = KvCache::<2, 16>::new();
    assert!(matches!(
        mha.decode(&tokens::<3>(0), &mut c, &NoPositions),
        Err(CacheError::Full {
            capacity: 2,
            len: 0,
            adding: 3
        })
    ));
    assert!(c.is_empty() && c.position() == 0);
}

#[test]
fn reset_starts_over() {
    let layer = Layer::from_seed(3);
    let mut cache = KvCache::<8, 8>::new();
    let first = layer
        .decode(&tokens::<5>(0), &mut cache, &NoPositions)
        .expect("fits");
    cache.reset();
    assert!(cache.is_empty() && cache.position() == 0);
    let again = layer
        .decode(&tokens::<5>(0), &mut cache, &NoPositions)
        .expect("fits");
    assert_eq!(first, again);
}

#[test]
fn a_sliding_window_never_fills() {
    let layer = Layer::from_seed(4);
    let mut cache = KvCache::<3, 8>::sliding_window();
    for t in 0..50 {
        layer
            .decode(&tokens::<1>(t), &mut cache, &NoPositions)
            .expect("a ring never fills");
    }
    assert_eq!((cache.len(), cache.position()), (3, 50));
    // A prompt longer than the window goes through too.
    cache.reset();
    layer
        .decode(&tokens::<7>(0), &mut cache, &NoPositions)
        .expect("ring");
    assert_eq!((cache.len(), cache.position()), (3, 7));
}

#[test]
fn positions_past_the_rotary_table_are_an_error() {
    let layer = Layer::from_seed(5);
    let rope = Rope::<4, 6>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
    let mut cache = KvCache::<16, 8>::new();
    layer
        .decode(&tokens::<4>(0), &mut cache, &rope)
        .expect("positions 0..4");
    layer
        .decode(&tokens::<2>(4), &mut cache, &rope)
        .expect("positions 4..6");
    let before = cache.clone();
    let err = layer
        .decode(&tokens::<1>(6), &mut cache, &rope)
        .unwrap_err();
    assert_eq!(
        err,
        CacheError::Position(PositionError {
            first: 6,
            count: 1,
            table: 6
        })
    );
    assert_eq!(
        err.to_string(),
        "positions 6..7 are past the rotary table of 6 positions"
    );
    assert_eq!(cache, before);
    // A whole-sequence forward longer than the table.
    let err = layer
        .forward(&tokens::<7>(0), &Mask::causal(Alignment::TopLeft), &rope)
        .unwrap_err();
    assert_eq!((err.first, err.count, err.table), (0, 7, 6));
    // A full cache is reported before the table (both would fail).
    let mut small = KvCache::<6, 8>::new();
    layer
        .decode(&tokens::<6>(0), &mut small, &rope)
        .expect("fits both");
    assert!(matches!(
        layer.decode(&tokens::<1>(6), &mut small, &rope),
        Err(CacheError::Full { .. })
    ));
}

#[test]
fn weight_files_with_missing_names_or_another_kv_head_count() {
    let src = GroupedQuery::<16, 4, 2, 16, 8>::new(
        &mut <static_attention::init::SeedRng as rand::SeedableRng>::seed_from_u64(6),
        Bias::Present,
    );
    let prefix = "model.layers.3.self_attn.";
    let bytes = src.to_safetensors(prefix).expect("saves");
    // Round trip, biases included.
    let back = Layer::from_safetensors(&bytes, prefix).expect("loads");
    assert_eq!(back, src);
    assert!(back.q_proj().has_bias() && !back.out_proj().has_bias());

    // Into a layer expecting 4 kv heads: typed, and the layer is untouched.
    let mut other = GroupedQuery::<16, 4, 4, 16, 16>::from_seed(9);
    let before = other.clone();
    let err = other.load_safetensors(&bytes, prefix).unwrap_err();
    assert!(matches!(
        err,
        LoadError::WrongKvHeads {
            expected: 4,
            found: 2,
            head_dim: 4,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "model.layers.3.self_attn.k_proj.weight has 8 rows (the file's kv heads times their \
         width: 2 kv heads if they are 4 wide like the layer's, or as many heads of another \
         width as the file's head count says), but the layer needs KV_HEADS · HEAD_DIM = 4 · 4 \
         = 16 rows"
    );
    assert_eq!(other, before);

    // A wrong prefix: the first missing name, with its shape.
    let mut layer = Layer::from_seed(7);
    let before = layer.clone();
    let err = layer
        .load_safetensors(&bytes, "model.layers.4.self_attn.")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing tensor model.layers.4.self_attn.q_proj.weight (expected shape [16, 16])"
    );
    assert_eq!(layer, before);

    // Another hidden size.
    let err = GroupedQuery::<12, 4, 2, 16, 8>::from_safetensors(&bytes, prefix).unwrap_err();
    assert!(matches!(err, LoadError::WrongShape { .. }), "{err}");
}
