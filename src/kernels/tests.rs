//! Every kernel against the scalar kernel and the f64 oracle, through each kernel's table:
//! odd sizes (the tails of every tile and block: query
//! counts on both sides of 4, 8 and 16, key counts on both sides of 6 and of the 64-key
//! block, widths on both sides of the 6-wide micro-tiles), every kind of mask part, input
//! scales from 1e-3 to 30, `f32` and `f64`.
//!
//! Tolerances (see `crate::semantics`): the f32 kernels agree with each other within `2e-6` at
//! unit scale (the scale grows it in proportion to the logits), each is within the crate's
//! bound (`1e-5 + 1e-5·|ref|`) of an f64 oracle run on the same f32 inputs, and the f64
//! kernels agree within `1e-12`. Outputs written over their queries (in place) and queries
//! read through a stride are bit for bit the dense, separate results.
//!
//! `STATIC_ATTENTION_REQUIRE_KERNEL` (a kernel's `name()`, e.g. `avx2+fma`) makes
//! `the_required_kernel_is_the_one_tested` fail unless that kernel runs here, so a CI machine
//! cannot skip its fast kernel silently.

use std::vec::Vec;

use super::args::MQ_MAX;
use super::layout::WEIGHT_TILE;
use super::pattern::{Alignment, Pattern};
use super::{Dims, Float, Kernel, LinearIo, MaskView, PANEL_ROWS, Problem, QueryIo, Work, table};

/// Kernels to compare with the scalar one on this machine.
fn fast_kernels() -> impl Iterator<Item = Kernel> {
    Kernel::supported().filter(|&k| k != Kernel::Scalar)
}

/// Deterministic values uniform in `[-scale, scale]`.
fn values(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn cast<T: Float>(v: &[impl Float]) -> Vec<T> {
    v.iter().map(|&x| T::of(x.to_f64())).collect()
}

/// A mask's parts as owned data, and its view.
struct MaskData {
    pattern: Pattern,
    attend: Option<Vec<bool>>,
    block: Option<Vec<bool>>,
    pad: Option<Vec<bool>>,
    additive: Option<Vec<f64>>,
    /// ALiBi: slope and key rotation.
    alibi: Option<(f64, usize)>,
}

impl MaskData {
    /// Only `pattern`: no boolean, additive or ALiBi part.
    fn plain(pattern: Pattern) -> Self {
        MaskData {
            pattern,
            attend: None,
            block: None,
            pad: None,
            additive: None,
            alibi: None,
        }
    }

    fn view<'a, T: Float>(
        &'a self,
        sq: usize,
        skv: usize,
        add: &'a Option<Vec<T>>,
    ) -> MaskView<'a, T> {
        MaskView {
            pattern: self.pattern,
            sq,
            skv,
            q_offset: 0,
            sq_total: sq,
            attend: self.attend.as_deref(),
            block: self.block.as_deref(),
            pad: self.pad.as_deref(),
            additive: add.as_deref(),
            alibi: self
                .alibi
                .map(|(slope, key_rotate)| super::args::AlibiView {
                    slope: T::of(slope),
                    key_rotate,
                }),
        }
    }
}

/// The masks every shape runs under: patterns of both alignments, each boolean part, an
/// additive part with −∞ and NaN entries, and all parts at once.
fn masks(sq: usize, skv: usize, seed: u64) -> Vec<MaskData> {
    let n = sq * skv;
    let coin = |salt: u64, p: f64| -> Vec<bool> {
        values(seed ^ salt, n, 1.0)
            .iter()
            .map(|&x| x.abs() < p)
            .collect()
    };
    let pad: Vec<bool> = (0..skv).map(|j| j % 5 == 3).collect();
    let additive: Vec<f64> = values(seed ^ 9, n, 1.5)
        .iter()
        .enumerate()
        .map(|(i, &x)| match i % 11 {
            3 => f64::NEG_INFINITY,
            7 => f64::NAN,
            _ => x,
        })
        .collect();
    let plain = MaskData::plain;
    vec![
        plain(Pattern::Full),
        plain(Pattern::Causal(Alignment::TopLeft)),
        plain(Pattern::Causal(Alignment::BottomRight)),
        plain(Pattern::SlidingWindow {
            window: 5,
            alignment: Alignment::BottomRight,
        }),
        plain(Pattern::SlidingWindow {
            window: 70,
            alignment: Alignment::TopLeft,
        }),
        MaskData {
            pad: Some(pad.clone()),
            ..plain(Pattern::Causal(Alignment::BottomRight))
        },
        MaskData {
            attend: Some(coin(1, 0.7)),
            ..plain(Pattern::Full)
        },
        MaskData {
            block: Some(coin(2, 0.4)),
            ..plain(Pattern::Full)
        },
        MaskData {
            additive: Some(additive.clone()),
            ..plain(Pattern::Full)
        },
        MaskData {
            pattern: Pattern::Causal(Alignment::TopLeft),
            attend: Some(coin(3, 0.8)),
            block: Some(coin(4, 0.2)),
            pad: Some(pad.clone()),
            additive: Some(additive.clone()),
            alibi: None,
        },
        MaskData {
            alibi: Some((0.25, 0)),
            ..plain(Pattern::Causal(Alignment::BottomRight))
        },
        MaskData {
            // A ring of keys whose oldest entry sits in the middle.
            alibi: Some((0.0625, skv / 2)),
            ..plain(Pattern::Full)
        },
        MaskData {
            pattern: Pattern::SlidingWindow {
                window: 9,
                alignment: Alignment::TopLeft,
            },
            pad: Some(pad),
            additive: Some(additive),
            alibi: Some((core::f64::consts::FRAC_1_SQRT_2, 0)),
            ..plain(Pattern::Full)
        },
    ]
}

/// What [`run`] returns: the streaming outputs, the weights path's outputs, and the weights.
type Outputs<T> = [Vec<T>; 3];

/// The names of [`Outputs`]' parts, for the messages.
const PATHS: [&str; 3] = ["streaming", "weights path", "weights"];

/// Streaming and weights-path outputs of one kernel (and the weights), the queries read
/// from one buffer and the outputs written to another.
fn run<T: Float>(
    kernel: Kernel,
    inputs: (&[T], &[T], &[T]),
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
) -> Outputs<T> {
    run_io(kernel, inputs, dims, scale, mask, false)
}

/// [`run`], or with `in_place` each output written over its query (`dk == dv`).
fn run_io<T: Float>(
    kernel: Kernel,
    inputs: (&[T], &[T], &[T]),
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
    in_place: bool,
) -> Outputs<T> {
    run_with(kernel, inputs, dims, scale, mask, in_place, Variants::PLAIN)
}

/// The logit variants of a problem: the soft-cap and the sink logit.
#[derive(Clone, Copy, Debug)]
struct Variants {
    softcap: Option<f64>,
    sink: Option<f64>,
}

impl Variants {
    const PLAIN: Variants = Variants {
        softcap: None,
        sink: None,
    };
}

/// The variants the kernels are compared under: a cap that bites from logits of a few units,
/// a sink alone, Gemma's cap of 50 with a sink that outweighs small logits, and the sink of
/// −∞, which must be no sink at all.
const VARIANTS: [Variants; 4] = [
    Variants {
        softcap: Some(4.0),
        sink: None,
    },
    Variants {
        softcap: None,
        sink: Some(0.7),
    },
    Variants {
        softcap: Some(50.0),
        sink: Some(4.5),
    },
    Variants {
        softcap: Some(2.5),
        sink: Some(-1.25),
    },
];

/// [`run_io`] with the logit variants `var`.
fn run_with<T: Float>(
    kernel: Kernel,
    inputs: (&[T], &[T], &[T]),
    dims: Dims,
    scale: T,
    mask: &MaskView<'_, T>,
    in_place: bool,
    var: Variants,
) -> Outputs<T> {
    let (q, k, v) = inputs;
    let t = table::<T>(kernel);
    assert_eq!(t.kernel(), kernel, "the kernel runs here");
    let p = Problem {
        k,
        v,
        dims,
        scale,
        mask,
        softcap: var.softcap.map(T::of),
        sink: var.sink.map(T::of),
    };
    let start = if in_place {
        q.to_vec()
    } else {
        std::vec![T::NAN; dims.sq * dims.dv]
    };
    let (mut out, mut out_w) = (start.clone(), start);
    let mut w = std::vec![T::NAN; dims.sq * dims.skv];
    let mut work: std::boxed::Box<Work<T, 80>> = bytemuck::zeroed_box();
    if in_place {
        t.attention(QueryIo::InPlace(&mut out), &p, work.parts());
        t.attention_with_weights(QueryIo::InPlace(&mut out_w), &p, &mut w);
    } else {
        t.attention(QueryIo::Separate { q, out: &mut out }, &p, work.parts());
        t.attention_with_weights(QueryIo::Separate { q, out: &mut out_w }, &p, &mut w);
    }
    [out, out_w, w]
}

/// Queries, keys and values (`sq × dk`, `skv × dk`, `skv × dv`) in `f32`, uniform in
/// `[−1, 1]`, from seeds `seed`, `seed + 1` and `seed + 2`.
fn qkv_f32(seed: u64, sq: usize, skv: usize, dk: usize, dv: usize) -> [Vec<f32>; 3] {
    [
        cast(&values(seed, sq * dk, 1.0)),
        cast(&values(seed + 1, skv * dk, 1.0)),
        cast(&values(seed + 2, skv * dv, 1.0)),
    ]
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Each of `got` bit for bit its part of `want` (the parts named by [`PATHS`]).
fn assert_same_bits(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    for ((path, g), w) in PATHS.iter().zip(got).zip(want) {
        assert_eq!(bits(g), bits(w), "{what}: {path}");
    }
}

fn max_abs_diff<T: Float, U: Float>(a: &[T], b: &[U]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (x, y) = (x.to_f64(), y.to_f64());
            if x.is_nan() && y.is_nan() {
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(
            0.0,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
}

/// `got` within `atol + rtol·|want|` of `want`, entry by entry (NaN only against NaN).
fn assert_close<T: Float, U: Float>(what: &str, got: &[T], want: &[U], atol: f64, rtol: f64) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f64(), w.to_f64());
        if w.is_nan() || g.is_nan() {
            assert!(
                g.is_nan() && w.is_nan(),
                "{what}: entry {i} is {g}, want {w}"
            );
            continue;
        }
        let tol = atol + rtol * w.abs();
        assert!(
            (g - w).abs() <= tol,
            "{what}: entry {i} is {g}, want {w} (tolerance {tol:e})"
        );
    }
}

/// Shapes `(sq, skv, dk, dv)`: query counts around 4, 8 and 16 (f64 and f32 lane counts,
/// and the overlapping last tile), key counts around 6 and 64, widths around 6.
const SHAPES: [(usize, usize, usize, usize); 14] = [
    (1, 1, 1, 1),
    (1, 70, 8, 7),
    (3, 9, 5, 3),
    (4, 64, 12, 6),
    (7, 65, 6, 13),
    (8, 8, 16, 16),
    (9, 11, 5, 7),
    (15, 130, 7, 5),
    (16, 16, 8, 8),
    (17, 63, 3, 11),
    (23, 6, 9, 12),
    (33, 33, 16, 1),
    (40, 129, 32, 32),
    (70, 70, 64, 64),
];

/// Under Miri (an interpreter, thousands of times slower) a few small shapes that still have
/// tails for 4- and 8-lane vectors and both tile widths, one input scale, fewer masks.
const SHAPES_MIRI: [(usize, usize, usize, usize); 3] =
    [(1, 5, 3, 2), (9, 11, 5, 7), (17, 13, 4, 3)];

fn shapes() -> &'static [(usize, usize, usize, usize)] {
    if cfg!(miri) { &SHAPES_MIRI } else { &SHAPES }
}

fn input_scales() -> &'static [f64] {
    if cfg!(miri) {
        &[1.0]
    } else {
        &[1e-3, 0.3, 1.0, 4.0, 30.0]
    }
}

/// The masks a test walks: all of them, or under Miri every third (still each kind of part).
fn some_masks(sq: usize, skv: usize, seed: u64) -> Vec<MaskData> {
    let all = masks(sq, skv, seed);
    if cfg!(miri) {
        all.into_iter().step_by(3).collect()
    } else {
        all
    }
}

#[test]
fn attention_kernels_match_the_scalar_kernel_and_the_oracle() {
    for kernel in fast_kernels() {
        for (case, &(sq, skv, dk, dv)) in shapes().iter().enumerate() {
            let dims = Dims::new(sq, skv, dk, dv);
            let seed = case as u64 * 31 + 7;
            for &scale_in in input_scales() {
                let q = values(seed, sq * dk, scale_in);
                let k = values(seed + 1, skv * dk, scale_in);
                let v = values(seed + 2, skv * dv, 1.0);
                let scale = 1.0 / (dk as f64).sqrt();
                for (m, md) in some_masks(sq, skv, seed).iter().enumerate() {
                    let what = format!(
                        "{} {sq}×{skv}×{dk}×{dv} ×{scale_in} mask {m}",
                        kernel.name()
                    );
                    // f32: the fast kernel against the scalar one and the f64 oracle.
                    let (q32, k32, v32) = (cast::<f32>(&q), cast::<f32>(&k), cast::<f32>(&v));
                    let add32 = md.additive.as_ref().map(|a| cast::<f32>(a));
                    let mask32 = md.view(sq, skv, &add32);
                    let ins = (&q32[..], &k32[..], &v32[..]);
                    let fast = run(kernel, ins, dims, scale as f32, &mask32);
                    let slow = run(Kernel::Scalar, ins, dims, scale as f32, &mask32);
                    // The oracle: the scalar kernel in f64 on the same (f32-rounded) inputs.
                    let (q64, k64, v64) = (cast::<f64>(&q32), cast::<f64>(&k32), cast::<f64>(&v32));
                    let add64 = add32.as_ref().map(|a| cast::<f64>(a));
                    let mask64 = md.view(sq, skv, &add64);
                    let oracle = run(
                        Kernel::Scalar,
                        (&q64, &k64, &v64),
                        dims,
                        f64::from(scale as f32),
                        &mask64,
                    );
                    // f32 rounding of a logit s moves e^s by about |s|·2⁻²⁴: widen with the logits.
                    let logit = scale_in * scale_in * (dk as f64).sqrt();
                    let widen = 1.0 + logit / 4.0;
                    let paths = 2e-6 * widen;
                    for (path, (f, sl)) in PATHS.iter().zip(fast.iter().zip(&slow)) {
                        let diff = max_abs_diff(f, sl);
                        assert!(diff <= paths, "{what}: {path} vs scalar {diff:e}");
                    }
                    assert!(
                        max_abs_diff(&fast[0], &fast[1]) <= paths,
                        "{what}: streaming vs weights path"
                    );
                    for (path, (f, o)) in PATHS.iter().zip(fast.iter().zip(&oracle)) {
                        let what = format!("{what}: {path} vs oracle");
                        assert_close(&what, f, o, 1e-5 * widen, 1e-5);
                    }
                    // f64: fast and scalar agree to 1e-12.
                    let fast64 = run(
                        kernel,
                        (&q64, &k64, &v64),
                        dims,
                        f64::from(scale as f32),
                        &mask64,
                    );
                    let tol64 = 1e-12 * widen;
                    for (path, (f, o)) in PATHS.iter().zip(fast64.iter().zip(&oracle)) {
                        assert!(max_abs_diff(f, o) <= tol64, "{what}: f64 {path}");
                    }
                }
            }
        }
    }
}

#[test]
fn masked_non_finite_values_stay_out_bit_for_bit() {
    // Keys masked for some queries hold NaN and ∞ in V: the rows of the other queries are
    // bit for bit what they are with finite values there, on every kernel and path.
    for kernel in fast_kernels() {
        let shapes: &[(usize, usize, usize, usize)] = if cfg!(miri) {
            &[(9, 12, 4, 5)]
        } else {
            &[(3, 20, 4, 5), (9, 70, 8, 6), (33, 70, 16, 7)]
        };
        for &(sq, skv, dk, dv) in shapes {
            let dims = Dims::new(sq, skv, dk, dv);
            let [q, k, v] = qkv_f32(1, sq, skv, dk, dv);
            let pad: Vec<bool> = (0..skv).map(|j| j % 4 == 1).collect();
            let md = MaskData {
                pad: Some(pad.clone()),
                ..MaskData::plain(Pattern::Causal(Alignment::BottomRight))
            };
            let mask = md.view::<f32>(sq, skv, &None);
            let mut poisoned = v.clone();
            for j in (0..skv).filter(|&j| pad[j]) {
                for e in 0..dv {
                    poisoned[j + e * skv] = if e % 2 == 0 { f32::NAN } else { f32::INFINITY };
                }
            }
            let clean = run(kernel, (&q, &k, &v), dims, 0.5, &mask);
            let dirty = run(kernel, (&q, &k, &poisoned), dims, 0.5, &mask);
            // Both paths' outputs.
            let what = format!("{} {sq}×{skv}", kernel.name());
            assert_same_bits(&what, &dirty[..2], &clean[..2]);
        }
    }
}

#[test]
fn keys_and_values_read_through_a_stride() {
    // A KV cache hands the kernels its first `skv` rows of a taller buffer: every kernel and
    // path gives bit for bit the dense result, and never reads the rows below (NaN there).
    for kernel in Kernel::supported() {
        let shapes: &[(usize, usize, usize, usize)] = if cfg!(miri) {
            &[(1, 5, 4, 4), (17, 9, 4, 3)]
        } else {
            &[
                (1, 5, 4, 4),
                (3, 70, 8, 6),
                (17, 40, 16, 16),
                (40, 129, 8, 8),
            ]
        };
        for &(sq, skv, dk, dv) in shapes {
            let ld = skv + 13;
            let [q, k, v] = qkv_f32(1, sq, skv, dk, dv);
            let strided = |x: &[f32], width: usize| {
                let mut t = std::vec![f32::NAN; ld * width];
                for c in 0..width {
                    t[c * ld..c * ld + skv].copy_from_slice(&x[c * skv..(c + 1) * skv]);
                }
                t
            };
            let (ks, vs) = (strided(&k, dk), strided(&v, dv));
            for (md, var) in some_masks(sq, skv, 5).iter().zip(all_variants().cycle()) {
                let add = md.additive.as_ref().map(|a| cast::<f32>(a));
                let mask = md.view(sq, skv, &add);
                let dims = Dims::new(sq, skv, dk, dv);
                let dense = run_with(kernel, (&q, &k, &v), dims, 0.5, &mask, false, var);
                let dims = Dims { ldkv: ld, ..dims };
                let got = run_with(kernel, (&q, &ks, &vs), dims, 0.5, &mask, false, var);
                assert_same_bits(&format!("{} {var:?}", kernel.name()), &got, &dense);
            }
        }
    }
}

#[test]
fn linear_kernels_match_the_scalar_kernel() {
    let all = [
        (1, 1, 1),
        // One or two tokens: the GEMV path (strips of 12, a vectorised or a plain last strip).
        (1, 64, 64),
        (1, 37, 29),
        (2, 50, 100),
        (1, 256, 8),
        (2, 96, 24),
        (3, 5, 7),
        (15, 64, 6),
        (16, 13, 13),
        (17, 130, 5),
        (33, 7, 64),
        (40, 96, 96),
    ];
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(1, 13, 14), (3, 5, 7), (17, 6, 13)]
    } else {
        &all
    };
    for kernel in fast_kernels() {
        for (case, &(s, din, dout)) in shapes.iter().enumerate() {
            for &scale in if cfg!(miri) {
                &[1.0][..]
            } else {
                &[1e-3, 1.0, 1e3][..]
            } {
                let x = values(case as u64, s * din, scale);
                // W[c][d] (row-major), and the same in the tile layout the kernels read.
                let w_rows = values(case as u64 + 1, din * dout, 1.0);
                let wm = |c: usize, d: usize| w_rows[c * din + d];
                let mut w = std::vec![0.0; din * dout];
                for c in 0..dout {
                    for d in 0..din {
                        w[super::layout::grouped_index::<1>(c, d, din, dout)] = wm(c, d);
                    }
                }
                let b = values(case as u64 + 2, dout, 1.0);
                // The exact product in f64, and a bound on f32 rounding: eps · din · Σ|x·w|.
                let mut exact = std::vec![0.0; s * dout];
                let mut size = std::vec![0.0; s * dout];
                for c in 0..dout {
                    for i in 0..s {
                        let mut acc = b[c];
                        let mut mag = b[c].abs();
                        for d in 0..din {
                            acc += x[i + d * s] * wm(c, d);
                            mag += (x[i + d * s] * wm(c, d)).abs();
                        }
                        exact[i + c * s] = acc;
                        size[i + c * s] = mag;
                    }
                }
                // Packs of 1, 7 and every input feature per panel, and one large enough for
                // the GEMV path and its vectorised last strip on every lane count (with 12
                // panel rows on NEON, `PANEL_ROWS · din` is not).
                let gemv = 2 * WEIGHT_TILE * din + 2 * MQ_MAX;
                for pack_len in [PANEL_ROWS, 7 * PANEL_ROWS, din * PANEL_ROWS, gemv] {
                    let what = format!("{} {s}×{din}→{dout} pack {pack_len}", kernel.name());
                    let (ins, shape, want) = (
                        (&x[..], &w[..], &b[..]),
                        (s, din, dout),
                        (&exact[..], &size[..]),
                    );
                    check_linear::<f32>(kernel, ins, shape, pack_len, want, &what);
                    check_linear::<f64>(kernel, ins, shape, pack_len, want, &what);
                }
            }
        }
    }
}

/// The projection of `s` tokens `x` by weights `w` (`dout × din`, tile layout) and bias `b`
/// in `T` through `kernel`'s table with a pack buffer of `pack_len` values: each output
/// within `T::EPSILON · (din + 2) · size` of `exact` (`size` bounds the terms' magnitudes).
fn check_linear<T: Float>(
    kernel: Kernel,
    (x, w, b): (&[f64], &[f64], &[f64]),
    (s, din, dout): (usize, usize, usize),
    pack_len: usize,
    (exact, size): (&[f64], &[f64]),
    what: &str,
) {
    let (x, w, b) = (cast::<T>(x), cast::<T>(w), cast::<T>(b));
    let mut got = std::vec![T::NAN; s * dout];
    let mut pack = std::vec![T::ZERO; pack_len];
    table::<T>(kernel).linear(
        LinearIo::Out {
            x: &x,
            out: &mut got,
        },
        s,
        din,
        &w,
        dout,
        &b,
        &[],
        &mut pack,
    );
    for (i, (&g, (&e, &m))) in got.iter().zip(exact.iter().zip(size)).enumerate() {
        let tol = T::EPSILON.to_f64() * (din as f64 + 2.0) * m;
        let ty = core::any::type_name::<T>();
        assert!((g.to_f64() - e).abs() <= tol, "{what} {ty}: {i}");
    }
}

/// `i8` weights on every kernel: the outputs of `Table::linear` bit for bit those of the
/// scalar reference (`i8` weights are for `f32` layers), for odd sizes (inputs not a multiple of four, every
/// storage-tile width, partial panels), inputs split into chunks and tokens into groups by
/// packs from the smallest the table takes to a large one, more tokens than one group holds,
/// input scales from `1e-38` (where `127 / max |x|` overflows) to `1e30`, zero inputs, a token of zeros and one with a
/// non-finite input.
#[test]
fn i8_projections_match_the_scalar_kernel_bit_for_bit() {
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(3, 5, 13), (17, 9, 7)]
    } else {
        &[
            (1, 1, 1),
            (3, 5, 13),
            (16, 4, 12),
            (17, 9, 7),
            (33, 255, 25),
            (40, 257, 30),
            (5, 600, 70),
            (300, 37, 13),
            (530, 6, 5),
        ]
    };
    // Every kernel's table, and on x86 each AVX2 form by itself (the table takes the AVX-VNNI
    // one where the CPU has it).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut forms: Vec<(String, I8Projection)> = fast_kernels()
        .map(|k| {
            let f: I8Projection = std::boxed::Box::new(move |io, s, din, w, dout, sc, b, pack| {
                table::<f32>(k).linear(io, s, din, w, dout, b, sc, pack);
            });
            (k.name().into(), f)
        })
        .collect();
    #[cfg(target_arch = "x86_64")]
    {
        if super::x86::avx2_available() {
            forms.push((
                "avx2 pairs".into(),
                // SAFETY: the CPU runs AVX2 (checked).
                std::boxed::Box::new(|io, s, din, w, dout, sc, b, pack| unsafe {
                    one_i8(
                        super::int8_avx2::linear,
                        io,
                        (s, din),
                        (w, dout, sc, b),
                        pack,
                    );
                }),
            ));
        }
        if super::x86::avx_vnni_available() {
            forms.push((
                "avx-vnni quads".into(),
                // SAFETY: the CPU runs AVX2 and AVX-VNNI (checked).
                std::boxed::Box::new(|io, s, din, w, dout, sc, b, pack| unsafe {
                    one_i8(
                        super::int8_avx2::linear_vnni,
                        io,
                        (s, din),
                        (w, dout, sc, b),
                        pack,
                    );
                }),
            ));
        }
    }
    for (name, project) in &forms {
        for (case, &(s, din, dout)) in shapes.iter().enumerate() {
            let seed = case as u64 * 7;
            let q: Vec<i8> = values(seed, din * dout, 127.49)
                .iter()
                .map(|&v| v.round() as i8)
                .collect();
            let mut w = std::vec![0i8; din * dout];
            for c in 0..dout {
                for d in 0..din {
                    let at = super::layout::weight_index(crate::WeightKind::I8, c, d, din, dout);
                    w[at] = q[c * din + d];
                }
            }
            let scales: Vec<f64> = values(seed + 1, dout, 0.01)
                .iter()
                .map(|v| v.abs())
                .collect();
            let bias = values(seed + 2, dout, 1.0);
            for scale in [1.0, 1e-30, 1e-38, 1e30] {
                let mut x = values(seed + 3, s * din, scale);
                // Zero inputs, a token of zeros and (with two tokens or more) an infinite input.
                for (i, v) in x.iter_mut().enumerate() {
                    if i % 5 == 2 {
                        *v = 0.0;
                    }
                }
                for d in 0..din {
                    x[s / 2 + d * s] = 0.0;
                }
                if s > 1 {
                    x[s - 1 + (din - 1) * s] = f64::INFINITY;
                }
                let gemv = 2 * WEIGHT_TILE * din + 2 * MQ_MAX;
                for pack_len in [
                    2 * PANEL_ROWS,
                    7 * PANEL_ROWS + 3,
                    din * PANEL_ROWS,
                    gemv,
                    1 << 16,
                ] {
                    let what = format!("{name} {s}×{din}→{dout} pack {pack_len} scale {scale}");
                    check_i8(
                        project,
                        (&x, &w, &scales, &bias),
                        (s, din, dout),
                        pack_len,
                        &what,
                    );
                }
            }
        }
    }
}

/// [`i8_projections_match_the_scalar_kernel_bit_for_bit`]'s comparison.
fn check_i8(
    project: &I8Projection,
    (x, w, scales, bias): (&[f64], &[i8], &[f64], &[f64]),
    (s, din, dout): (usize, usize, usize),
    pack_len: usize,
    what: &str,
) {
    type T = f32;
    let (x, scales, bias) = (cast::<T>(x), cast::<T>(scales), cast::<T>(bias));
    let run = |project: &I8Projection| {
        let mut out = std::vec![T::NAN; s * dout];
        let mut pack = std::vec![T::ZERO; pack_len];
        let io = LinearIo::Out {
            x: &x,
            out: &mut out,
        };
        project(io, s, din, w, dout, &scales, &bias, &mut pack);
        out
    };
    let scalar: I8Projection = std::boxed::Box::new(|io, s, din, w, dout, sc, b, pack| {
        table::<f32>(Kernel::Scalar).linear(io, s, din, w, dout, b, sc, pack);
    });
    let (got, want) = (run(project), run(&scalar));
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_f64().to_bits() == e.to_f64().to_bits(),
            "{what}: output {i}: {g:?} ≠ {e:?}"
        );
    }
}

/// Three `i8` projections of the same tokens in one call that quantizes the tokens once
/// (`Table::linear_shared` of every kernel, and on x86 each shared kernel called directly)
/// against three separate calls of the scalar reference, bit for bit: each projection with
/// its own weights, scales and biases, odd sizes, features that fill [`super::int8`]'s block
/// of compensations and split across it (1 000 + 700 + 13 with the block at 1 536), no
/// tokens, zero and non-finite tokens, more than one panel of tokens, small and large packs.
#[test]
fn shared_i8_projections_match_separate_calls_bit_for_bit() {
    use super::Projection;
    #[cfg(target_arch = "x86_64")]
    use super::args::I8Out;
    type T = f32;
    type Weights = [(Vec<i8>, Vec<T>, Vec<T>); 3];
    type Shared = std::boxed::Box<dyn Fn(&[T], usize, usize, &Weights, &mut [T]) -> [Vec<T>; 3]>;
    let shapes: &[(usize, usize, [usize; 3])] = if cfg!(miri) {
        &[(3, 5, [13, 1, 12])]
    } else {
        &[
            (0, 5, [3, 4, 5]),
            (1, 1, [1, 1, 1]),
            (3, 5, [13, 1, 12]),
            (33, 255, [25, 24, 25]),
            (70, 64, [1000, 700, 13]),
            (5, 9, [1536, 1536, 7]),
            (40, 257, [256, 64, 64]),
            // AMX over three panels, the last of 6 tokens, and a partial last quad.
            (70, 131, [37, 12, 25]),
        ]
    };
    let outputs =
        |s: usize, w: &Weights| w.each_ref().map(|(_, _, b)| std::vec![T::NAN; s * b.len()]);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut forms: Vec<(String, Shared)> = fast_kernels()
        .map(|k| {
            let f: Shared = std::boxed::Box::new(move |x, s, din, w, pack| {
                let mut out = outputs(s, w);
                let [o0, o1, o2] = &mut out;
                let projs =
                    [(&w[0], o0), (&w[1], o1), (&w[2], o2)].map(|((q, sc, b), out)| Projection {
                        w: q.as_slice(),
                        bias: b,
                        scales: sc,
                        out: out.as_mut_slice(),
                    });
                table::<T>(k).linear_shared(x, s, din, projs, pack);
                out
            });
            (k.name().into(), f)
        })
        .collect();
    #[cfg(target_arch = "x86_64")]
    let direct = |f: I8Kernel| -> Shared {
        std::boxed::Box::new(move |x, s, din, w, pack| {
            let mut out = outputs(s, w);
            if s > 0 {
                let [o0, o1, o2] = &mut out;
                let mut projs =
                    [(&w[0], o0), (&w[1], o1), (&w[2], o2)].map(|((q, sc, b), out)| I8Out {
                        q: q.as_slice(),
                        scales: sc,
                        bias: b,
                        out: out.as_mut_slice(),
                    });
                // SAFETY: only kernels whose features the CPU has are pushed below.
                unsafe { f(x, s, din, &mut projs, pack) };
            }
            out
        })
    };
    #[cfg(target_arch = "x86_64")]
    {
        if super::x86::avx2_available() {
            forms.push(("avx2 pairs".into(), direct(super::int8_avx2::linear)));
        }
        if super::x86::avx_vnni_available() {
            forms.push((
                "avx-vnni quads".into(),
                direct(super::int8_avx2::linear_vnni),
            ));
        }
        if super::x86::avx512_vnni_available() {
            forms.push(("avx512-vnni".into(), direct(super::int8::linear)));
        }
        if super::x86::amx_available() {
            forms.push(("amx".into(), direct(super::amx::linear)));
        }
    }
    let scalar = table::<T>(Kernel::Scalar);
    for (case, &(s, din, douts)) in shapes.iter().enumerate() {
        let seed = 100 + case as u64 * 11;
        let mut i = 0u64;
        let weights: Weights = douts.map(|dout| {
            // Each projection its own weights, scales and biases.
            i += 1;
            let seed = seed + 10 * i;
            let q: Vec<i8> = values(seed, din * dout, 127.49)
                .iter()
                .map(|&v| v.round() as i8)
                .collect();
            let scales: Vec<f64> = values(seed + 1, dout, 0.01)
                .iter()
                .map(|v| v.abs())
                .collect();
            (
                q,
                cast::<T>(&scales),
                cast::<T>(&values(seed + 2, dout, 1.0)),
            )
        });
        for scale in [1.0, 1e-38, 1e30] {
            let mut x = cast::<T>(&values(seed + 3, s * din, scale));
            if s > 0 {
                for d in 0..din {
                    x[s / 2 + d * s] = 0.0;
                }
            }
            if s > 2 {
                x[s - 1 + (din - 1) * s] = T::NAN;
            }
            let mut want = outputs(s, &weights);
            for ((q, sc, b), out) in weights.iter().zip(&mut want) {
                let io = LinearIo::Out { x: &x, out };
                scalar.linear(io, s, din, q, b.len(), b, sc, &mut []);
            }
            // 24 panel rows: AMX's chunks of 64 inputs.
            for pack_len in [2 * PANEL_ROWS, 5 * PANEL_ROWS + 1, 24 * PANEL_ROWS, 1 << 14] {
                for (name, run) in &forms {
                    let mut pack = std::vec![T::ZERO; pack_len];
                    let got = run(&x, s, din, &weights, &mut pack);
                    for (p, (got, want)) in got.iter().zip(&want).enumerate() {
                        for (i, (g, e)) in got.iter().zip(want).enumerate() {
                            assert!(
                                g.to_bits() == e.to_bits(),
                                "{name} {s}×{din}→{douts:?} scale {scale} pack {pack_len}: \
                                 projection {p} output {i}: {g:?} ≠ {e:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// An `i8` projection `(io, s, din, weights, dout, scales, bias, pack)`.
type I8Projection = std::boxed::Box<
    dyn Fn(LinearIo<'_, f32>, usize, usize, &[i8], usize, &[f32], &[f32], &mut [f32]),
>;

/// `bf16` weights on every kernel, against the accuracy contract of `crate::Weight`: with
/// `M = Σ_p |x_p·w_p| + |b|` (or `+ |out|` when adding), every output is within
/// `(u + (1 + u)·γ(din + 1))·M + η` of the exact `Σ x_p·w_p + b` (`u = 2⁻⁸`, `γ(n) = n·2⁻²³ /
/// (1 − n·2⁻²³)`, `η = 2⁻¹²⁶·(din + 1)·(1 + max|w|)`). Where the kernel multiplies in `bf16`
/// (more than two tokens on [`Kernel::Avx512Bf16`] and [`Kernel::NeonBf16`]), each output is also within `γ(din + 1)·M̂
/// + η` of the exact sum over the inputs rounded to `bf16` (`M̂` over those), which shows the
/// rounding is to nearest and nothing else is lost; elsewhere within the `f32` bound of the
/// projection test above. Odd sizes and odd input counts (an unpaired last row), every
/// storage-tile width, chunks of inputs split by small packs, the `Add` form, and input
/// scales from `1e-36` (products below `f32`'s normal range) to `1e3`.
#[test]
fn bf16_projections_on_every_kernel_keep_the_contract() {
    use half::bf16;
    // (3, 1, 1): the first weight of all is the whole odd last row, which AVX2's widening
    // must not look back from (Miri checks the reads).
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(3, 5, 13), (3, 1, 1)]
    } else {
        &[
            (3, 1, 1),
            (3, 2, 12),
            (4, 7, 13),
            (15, 64, 29),
            (16, 33, 24),
            (17, 130, 5),
            (31, 3, 40),
            (32, 65, 11),
            (33, 96, 36),
            (70, 257, 25),
            (1, 300, 40),
            (2, 19, 7),
            // AMX: a pair whose second tile is narrower (dout mod 24 in 13..23), exactly one
            // tile of tokens, and both at once over an odd width.
            (40, 100, 20),
            (16, 64, 24),
            (48, 127, 40),
        ]
    };
    let u = 2f64.powi(-8);
    // Unit 2⁻²³: Arm's `BFDOT` rounds its sums to odd (below one ulp).
    let gamma = |n: usize| n as f64 * 2f64.powi(-23) / (1.0 - n as f64 * 2f64.powi(-23));
    let mut worst = 0f64;
    for kernel in Kernel::supported() {
        for (case, &(s, din, dout)) in shapes.iter().enumerate() {
            let scales: &[f64] = if cfg!(miri) {
                &[1.0]
            } else {
                &[1e-36, 1e-3, 1.0, 1e3]
            };
            for &scale in scales {
                let x = cast::<f32>(&values(case as u64 + 40, s * din, scale));
                let w_rows: Vec<bf16> = values(case as u64 + 41, din * dout, 1.0)
                    .iter()
                    .map(|&v| bf16::from_f64(v))
                    .collect();
                let wm = |c: usize, d: usize| w_rows[c * din + d].to_f64();
                let mut w = std::vec![bf16::ZERO; din * dout];
                for c in 0..dout {
                    for d in 0..din {
                        let at =
                            super::layout::weight_index(crate::WeightKind::Bf16, c, d, din, dout);
                        w[at] = w_rows[c * din + d];
                    }
                }
                let b = cast::<f32>(&values(case as u64 + 42, dout, scale));
                let start = cast::<f32>(&values(case as u64 + 43, s * dout, scale));
                let rounded = |v: f32| f64::from(bf16::from_f32(v).to_f32());
                let by_bf16 = matches!(kernel, Kernel::Avx512Bf16 | Kernel::NeonBf16) && s > 2;
                let eta = 2f64.powi(-126) * (din as f64 + 1.0) * 2.0;
                // 40 panel rows: AMX's chunks of 64 inputs (the two smaller packs send AMX's
                // `bf16` projections to `vdpbf16ps`; Miri has no AMX).
                let chunked = if cfg!(miri) { 0 } else { 40 * PANEL_ROWS };
                for pack_len in [
                    PANEL_ROWS,
                    7 * PANEL_ROWS,
                    chunked,
                    din * PANEL_ROWS + PANEL_ROWS,
                ] {
                    if pack_len == 0 {
                        continue;
                    }
                    for add in [false, true] {
                        let mut got = if add {
                            start.clone()
                        } else {
                            std::vec![f32::NAN; s * dout]
                        };
                        // The chunked pack starts 12 bytes past where the allocation does, so
                        // AMX's pack skips to a 64-byte boundary elsewhere.
                        let off = if pack_len == chunked { 3 } else { 0 };
                        let mut pack_buf = std::vec![0f32; pack_len + off];
                        let pack = &mut pack_buf[off..];
                        let io = if add {
                            LinearIo::Add {
                                x: &x,
                                out: &mut got,
                            }
                        } else {
                            LinearIo::Out {
                                x: &x,
                                out: &mut got,
                            }
                        };
                        table::<f32>(kernel).linear(io, s, din, &w, dout, &b, &[], pack);
                        for c in 0..dout {
                            for i in 0..s {
                                let first = if add { start[i + c * s] } else { b[c] };
                                let (mut exact, mut mag) =
                                    (f64::from(first), f64::from(first).abs());
                                let (mut exact_r, mut mag_r) = (exact, mag);
                                for d in 0..din {
                                    let xv = x[i + d * s];
                                    exact += f64::from(xv) * wm(c, d);
                                    mag += (f64::from(xv) * wm(c, d)).abs();
                                    exact_r += rounded(xv) * wm(c, d);
                                    mag_r += (rounded(xv) * wm(c, d)).abs();
                                }
                                let g = f64::from(got[i + c * s]);
                                let what = format!(
                                    "{} {s}×{din}→{dout} scale {scale} pack {pack_len} add {add}: \
                                     token {i} feature {c}",
                                    kernel.name()
                                );
                                let bound = (u + (1.0 + u) * gamma(din + 1)) * mag + eta;
                                assert!((g - exact).abs() <= bound, "{what}: {g} vs {exact}");
                                worst = worst.max((g - exact).abs() / bound);
                                if by_bf16 {
                                    let tight = gamma(din + 1) * mag_r + eta;
                                    assert!(
                                        (g - exact_r).abs() <= tight,
                                        "{what}: {g} vs {exact_r} (bf16 inputs)"
                                    );
                                } else {
                                    let tight = f64::from(f32::EPSILON) * (din as f64 + 2.0) * mag;
                                    assert!(
                                        (g - exact).abs() <= tight,
                                        "{what}: {g} vs {exact} (f32)"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    std::println!("bf16 projections: worst error / contract bound = {worst:.3}");
}

/// The attention in `bf16` products ([`Kernel::Avx512Bf16`]'s `attention_bf16`) against an
/// f64 oracle on the same `f32` inputs, under its contract (the `weight` module's docs):
/// every output within `(4u + 2·(e^(2Δ) − 1) + n·2⁻²³)·max|v|` of the exact attention, `u = 2⁻⁸`,
/// `Δ = |scale|·(2u + u² + γ(dk)·(1 + u)²)·max_j Σ_e |q_e·k_je|` (the largest change the
/// rounding of `q` and `k` can make to a row's scores). Every pattern (full, causal in both
/// alignments, windows of 5 and 70), odd shapes and widths, query tiles cut short, partial
/// key blocks, in place and not, logits from small to about ±30. The problems it must
/// decline (a mask with more than its pattern, a sink, a non-finite value, a head wider than
/// 128) leave the outputs untouched and report so.
#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_attention_keeps_its_contract() {
    // Called directly: with AMX the table runs `bf16` layers' attention in `f32` instead.
    if !Kernel::supported().any(|k| k == Kernel::Avx512Bf16) {
        return;
    }
    let f: super::table::ReducedAttentionFn<f32> = super::bf16::attention;
    let u = 2f64.powi(-8);
    let gamma = |n: usize| n as f64 * 2f64.powi(-23) / (1.0 - n as f64 * 2f64.powi(-23));
    let bound = |c: &Case<'_>, i: usize| {
        let row = (0..c.skv)
            .map(|j| {
                (0..c.dk)
                    .map(|e| f64::from(c.q[i + e * c.sq] * c.k[j + e * c.skv]).abs())
                    .sum::<f64>()
            })
            .fold(0f64, f64::max);
        let delta = c.scale.abs() * (2.0 * u + u * u + gamma(c.dk) * (1.0 + u).powi(2)) * row;
        let sums = c.skv as f64 * 2f64.powi(-23);
        std::vec![(4.0 * u + 2.0 * ((2.0 * delta).exp() - 1.0) + sums) * c.vmax; c.dv]
    };
    let worst = reduced_attention_contract(f, 128, &bound);
    std::println!("bf16 attention: worst error / contract bound = {worst:.3}");
}

/// AMX's `attention_i8` ([`Kernel::Avx512Bf16`]'s where the CPU has AMX; elsewhere `None`,
/// and `the_fast_kernel_is_selected_where_the_cpu_has_it` says where it must be there).
fn i8_attention() -> Option<super::table::ReducedAttentionFn<f32>> {
    Kernel::supported()
        .find(|&k| k == Kernel::Avx512Bf16)
        .map(table::<f32>)
        .and_then(|t| t.attention_i8)
}

/// The attention in `i8` tile products (AMX's `attention_i8`, on [`Kernel::Avx512Bf16`]
/// where the CPU has AMX) against an f64 oracle on the same `f32` inputs, under its contract
/// (the `weight` module's docs), over the cases of [`reduced_attention_contract`]: every
/// output within this of the exact attention (`α = max|q|/127`, `β_j = max|k_j|/127`):
///
/// ```text
/// (2·(e^(2Δ) − 1) + (½ + 2⁻¹⁴)/127 + 2⁻¹⁰ + n·2⁻²⁸)·max|v|
/// Δ = |scale|·max_j [(½ + 2⁻¹⁴)·(α·‖k_j‖₁ + β_j·‖q‖₁) + (½ + 2⁻¹⁴)²·dk·α·β_j + 2⁻²⁰·Σ_e |q_e·k_je|]
/// ```
#[test]
fn i8_attention_keeps_its_contract() {
    let Some(f) = i8_attention() else {
        return;
    };
    let half = 0.5 + 2f64.powi(-14);
    let bound = |c: &Case<'_>, i: usize| {
        let row_max = |x: &[f32], n: usize, r: usize, d: usize| {
            (0..d).fold(0f64, |m, e| m.max(f64::from(x[r + e * n]).abs()))
        };
        let row_l1 = |x: &[f32], n: usize, r: usize, d: usize| {
            (0..d).map(|e| f64::from(x[r + e * n]).abs()).sum::<f64>()
        };
        let alpha = row_max(c.q, c.sq, i, c.dk) / 127.0;
        let q1 = row_l1(c.q, c.sq, i, c.dk);
        let delta = (0..c.skv)
            .map(|j| {
                let beta = row_max(c.k, c.skv, j, c.dk) / 127.0;
                let qk = (0..c.dk)
                    .map(|e| f64::from(c.q[i + e * c.sq] * c.k[j + e * c.skv]).abs())
                    .sum::<f64>();
                half * (alpha * row_l1(c.k, c.skv, j, c.dk) + beta * q1)
                    + half * half * c.dk as f64 * alpha * beta
                    + 2f64.powi(-20) * qk
            })
            .fold(0f64, f64::max)
            * c.scale.abs();
        let sums = c.skv as f64 * 2f64.powi(-28);
        let bound =
            (2.0 * ((2.0 * delta).exp() - 1.0) + half / 127.0 + 2f64.powi(-10) + sums) * c.vmax;
        std::vec![bound; c.dv]
    };
    let worst = reduced_attention_contract(f, 64, &bound);
    std::println!("i8 attention: worst error / contract bound = {worst:.3}");
}

/// The `i8` attention where a coarse rounding would show: one key that takes most of the
/// weight beside a long tail of keys whose weights are each below half of `2⁻¹⁶` of it (an
/// attention sink's shape); causal rows whose keys' values are small while a later key's is
/// large (no output may depend on a value its query does not see); and the problems it
/// declines besides [`reduced_attention_contract`]'s: a head 65 wide, and a row of keys
/// whose largest magnitude is below `2⁻¹⁰⁰` but not 0 (values: `2⁻⁶⁰`). Also a row of half a
/// million equal weights, and blocks of weights too small to round against.
#[test]
fn i8_attention_keeps_tails_and_ignores_unseen_values() {
    let Some(f) = i8_attention() else {
        return;
    };
    let run = |q: &[f32], k: &[f32], v: &[f32], dims: Dims, pattern: Pattern| {
        let data = MaskData::plain(pattern);
        let view = data.view::<f32>(dims.sq, dims.skv, &None);
        let p = Problem {
            k,
            v,
            dims,
            scale: 1.0,
            mask: &view,
            softcap: None,
            sink: None,
        };
        let mut out = std::vec![f32::NAN; dims.sq * dims.dv];
        let mut work: std::boxed::Box<Work<f32, 128>> = bytemuck::zeroed_box();
        let mut io = QueryIo::Separate { q, out: &mut out };
        // SAFETY: the kernel runs here (it is among the supported ones).
        let taken = unsafe { f(&mut io, &p, &mut work.parts()) };
        (taken, out)
    };
    // The tail: 4 queries of one feature (1), 4 000 keys; key 0's score 0 and value 0, every
    // other's score ln(0.45 · 2⁻¹⁶) and value 1. Exact output: t / (1 + t), t = 3 999 · 0.45 ·
    // 2⁻¹⁶ (a 16-bit rounding of the weights against the largest would give 0).
    let skv = 4000;
    let tail = (0.45f64 * 2f64.powi(-16)).ln();
    let k: Vec<f32> = (0..skv)
        .map(|j| if j == 0 { 0.0 } else { tail as f32 })
        .collect();
    let v: Vec<f32> = (0..skv).map(|j| if j == 0 { 0.0 } else { 1.0 }).collect();
    let q = std::vec![1.0f32; 4];
    let (taken, out) = run(&q, &k, &v, Dims::new(4, skv, 1, 1), Pattern::Full);
    assert!(taken);
    let w = f64::from(k[1]).exp();
    let t = 3999.0 * w;
    let want = t / (1.0 + t);
    for &y in &out {
        assert!(
            (f64::from(y) - want).abs() <= 2f64.powi(-10) + want * 0.05,
            "tail: {y} vs {want}"
        );
    }
    // A long row of equal weights (each sum's roundings all one way) whose values are all 1:
    // the output is 1 within the bound's `n·2⁻²⁸` for the `f32` sums (about 2⁻⁹ here) and
    // the rest (about 2⁻⁸ with the scores' rounding).
    let skv = 1 << 19;
    let k: Vec<f32> = (0..skv)
        .map(|j| if j == 0 { 0.0 } else { (1.0f32 - 0.0155).ln() })
        .collect();
    let v = std::vec![1.0f32; skv];
    let (taken, out) = run(&[1.0], &k, &v, Dims::new(1, skv, 1, 1), Pattern::Full);
    assert!(taken);
    let bound = 2f64.powi(-10) + 0.5 / 127.0 + skv as f64 * 2f64.powi(-28) + 1e-3;
    assert!((f64::from(out[0]) - 1.0).abs() <= bound, "{} vs 1", out[0]);
    // Blocks whose weights times value scales all fall below 2⁻¹¹⁰ (`max u` too small to
    // round against: they add nothing): 128 causal keys, the first with score 0, the rest 35
    // below (weights about 2⁻⁵⁰), every value 2⁻⁶⁰ (the smallest taken): each output is
    // 2⁻⁶⁰, and the last key's value changes no other row.
    let (sq, skv) = (128, 128);
    let k: Vec<f32> = (0..skv).map(|j| if j == 0 { 0.0 } else { -35.0 }).collect();
    let mut v = std::vec![2f32.powi(-60); skv];
    let q = std::vec![1.0f32; sq];
    let dims = Dims::new(sq, skv, 1, 1);
    let causal = Pattern::Causal(Alignment::TopLeft);
    let (taken, before) = run(&q, &k, &v, dims, causal);
    assert!(taken);
    for &y in &before {
        let want = 2f64.powi(-60);
        assert!((f64::from(y) - want).abs() <= 0.01 * want, "{y} vs {want}");
    }
    v[skv - 1] = 1.0;
    let (_, after) = run(&q, &k, &v, dims, causal);
    assert_eq!(
        before[..sq - 1],
        after[..sq - 1],
        "a row saw a value it cannot see"
    );
    // Causal rows do not see the last key: its value cannot change their outputs.
    let (sq, skv, d) = (70, 70, 16);
    let [q, k, mut v] = qkv_f32(3, sq, skv, d, d);
    for x in &mut v {
        *x *= 0.003;
    }
    let dims = Dims::new(sq, skv, d, d);
    let causal = Pattern::Causal(Alignment::TopLeft);
    let (_, before) = run(&q, &k, &v, dims, causal);
    for e in 0..d {
        v[skv - 1 + e * skv] = 1.0;
    }
    let (taken, after) = run(&q, &k, &v, dims, causal);
    assert!(taken);
    for e in 0..d {
        for i in 0..sq - 1 {
            assert_eq!(
                before[i + e * sq].to_bits(),
                after[i + e * sq].to_bits(),
                "row {i} saw a value it cannot see"
            );
        }
    }
    // Declined: a head of 65, a tiny row of keys, a tiny row of values.
    let [q65, k65, v65] = qkv_f32(4, 20, 30, 65, 65);
    assert!(!run(&q65, &k65, &v65, Dims::new(20, 30, 65, 65), Pattern::Full).0);
    let [q, mut k, mut v] = qkv_f32(5, 20, 30, 8, 8);
    let dims = Dims::new(20, 30, 8, 8);
    assert!(run(&q, &k, &v, dims, Pattern::Full).0);
    for e in 0..8 {
        k[7 + e * 30] = if e == 3 { 1e-38 } else { 0.0 };
    }
    assert!(
        !run(&q, &k, &v, dims, Pattern::Full).0,
        "a tiny row of keys"
    );
    let k = qkv_f32(5, 20, 30, 8, 8)[1].clone();
    for e in 0..8 {
        v[11 + e * 30] = if e == 0 { -1e-19 } else { 0.0 };
    }
    assert!(
        !run(&q, &k, &v, dims, Pattern::Full).0,
        "a tiny row of values"
    );
}

/// One problem of [`reduced_attention_contract`]: the queries and keys (column-major, `sq`,
/// `skv` rows), the scale and the largest `|v|`.
struct Case<'a> {
    q: &'a [f32],
    k: &'a [f32],
    sq: usize,
    skv: usize,
    dk: usize,
    dv: usize,
    scale: f64,
    vmax: f64,
}

/// An attention kernel in reduced-precision products (`f`, taking heads up to `max_head`
/// wide) against an f64 oracle on the same `f32` inputs: every output `(i, e)` within
/// `bound(case, i)[e]` of the exact attention. Every pattern (full, causal in both
/// alignments, windows of 5 and 70), odd shapes and widths, query tiles cut short, partial
/// key blocks, in place and not, logits from small to about ±30. A query's result does not
/// depend on the queries sharing its call; the problems it must decline (a mask with more
/// than its pattern, a sink, a non-finite value, a head wider than 128) leave the outputs
/// untouched and report so. Returns the worst error over its bound.
fn reduced_attention_contract(
    f: super::table::ReducedAttentionFn<f32>,
    max_head: usize,
    bound: &dyn Fn(&Case<'_>, usize) -> Vec<f64>,
) -> f64 {
    let mut worst = 0f64;
    let shapes = [
        (1, 9, 8, 8),
        (3, 40, 64, 64),
        (16, 16, 8, 8),
        (17, 40, 64, 64),
        (33, 70, 31, 12),
        (48, 33, 128, 128),
        (20, 100, 7, 100),
        (64, 64, 64, 64),
        // Several chunks of query tiles sharing each block, the last one short.
        (150, 150, 64, 64),
        (200, 37, 16, 16),
        (70, 90, 128, 40),
        // A partial second group of 16 value columns; partial blocks of keys.
        (40, 130, 64, 40),
        (9, 65, 3, 1),
    ];
    let mut logits = 0f64;
    for (case, &(sq, skv, dk, dv)) in shapes.iter().enumerate() {
        if dk.max(dv) > max_head {
            continue;
        }
        for &scale_in in &[0.05, 1.0, 2.5, 5.0] {
            let q = cast::<f32>(&values(case as u64 * 7 + 1, sq * dk, scale_in));
            let k = cast::<f32>(&values(case as u64 * 7 + 2, skv * dk, scale_in));
            let v = cast::<f32>(&values(case as u64 * 7 + 3, skv * dv, 1.0));
            // Every third case with a negative scale.
            let sign = if case % 3 == 2 { -1.0 } else { 1.0 };
            let scale = sign / (dk as f64).sqrt();
            for i in 0..sq {
                for j in 0..skv {
                    let z: f64 = (0..dk)
                        .map(|e| f64::from(q[i + e * sq]) * f64::from(k[j + e * skv]))
                        .sum();
                    logits = logits.max((scale * z).abs());
                }
            }
            for mask in masks(sq, skv, case as u64).iter().take(5) {
                let view = mask.view::<f32>(sq, skv, &None);
                let view64 = mask.view::<f64>(sq, skv, &None);
                let dims = Dims::new(sq, skv, dk, dv);
                let p = Problem {
                    k: &k,
                    v: &v,
                    dims,
                    scale: scale as f32,
                    mask: &view,
                    softcap: None,
                    sink: None,
                };
                let [want, _, _] = naive_attention(
                    (&cast::<f64>(&q), &cast::<f64>(&k), &cast::<f64>(&v)),
                    dims,
                    scale,
                    &view64,
                    Variants::PLAIN,
                );
                let vmax = v.iter().fold(0f64, |a, &x| a.max(f64::from(x).abs()));
                for in_place in [false, true] {
                    if in_place && dk != dv {
                        continue;
                    }
                    // Working memory for 8 tiles of 16 queries of up to 64 value columns, or
                    // (for the in-place runs) for as few as one tile.
                    let mut work: std::boxed::Box<Work<f32, 128>> = bytemuck::zeroed_box();
                    let mut parts = work.parts();
                    if in_place {
                        parts.acc = &mut parts.acc[..16 * dv];
                    }
                    let mut out = if in_place {
                        q.clone()
                    } else {
                        std::vec![f32::NAN; sq * dv]
                    };
                    let taken = {
                        let mut io = if in_place {
                            QueryIo::InPlace(&mut out)
                        } else {
                            QueryIo::Separate {
                                q: &q,
                                out: &mut out,
                            }
                        };
                        // SAFETY: the kernel runs here (it is among the supported ones).
                        unsafe { f(&mut io, &p, &mut parts) }
                    };
                    assert!(taken, "case {case}: a plain problem is taken");
                    let c = Case {
                        q: &q,
                        k: &k,
                        sq,
                        skv,
                        dk,
                        dv,
                        scale,
                        vmax,
                    };
                    for i in 0..sq {
                        let bounds = bound(&c, i);
                        for e in 0..dv {
                            let bound = bounds[e];
                            let (g, w) = (f64::from(out[i + e * sq]), want[i + e * sq]);
                            assert!(
                                (g - w).abs() <= bound,
                                "case {case} scale {scale_in} {:?} in place {in_place}: \
                                 row {i} col {e}: {g} vs {w} (bound {bound:e})",
                                mask.pattern
                            );
                            worst = worst.max((g - w).abs() / bound);
                        }
                    }
                }
            }
        }
    }
    // A query's result does not depend on the queries that share its call: the same bits with
    // working memory for one tile, and with the queries split over two calls (as the threads
    // of `Parallel` split them).
    for &(sq, skv, d) in &[(150, 150, 64), (70, 90, 40), (40, 33, 16), (300, 200, 64)] {
        let [q, k, v] = qkv_f32(11, sq, skv, d, d);
        for mask in masks(sq, skv, 11).iter().take(5) {
            let view = mask.view::<f32>(sq, skv, &None);
            let run = |rows: core::ops::Range<usize>, tiles: usize| {
                let n = rows.len();
                let part = view.rows(rows.start, n);
                let p = Problem {
                    k: &k,
                    v: &v,
                    dims: Dims::new(n, skv, d, d),
                    scale: 0.125,
                    mask: &part,
                    softcap: None,
                    sink: None,
                };
                let qs: std::vec::Vec<f32> = (0..d)
                    .flat_map(|e| q[e * sq + rows.start..e * sq + rows.end].iter().copied())
                    .collect();
                let mut out = std::vec![0f32; n * d];
                let mut work: std::boxed::Box<Work<f32, 128>> = bytemuck::zeroed_box();
                let mut parts = work.parts();
                parts.acc = &mut parts.acc[..tiles * 16 * d];
                let mut io = QueryIo::Separate {
                    q: &qs,
                    out: &mut out,
                };
                // SAFETY: as above.
                assert!(unsafe { f(&mut io, &p, &mut parts) });
                out
            };
            let whole = run(0..sq, 4);
            assert_eq!(
                whole,
                run(0..sq, 1),
                "{sq}x{skv}: one tile of working memory"
            );
            let cut = 23;
            let (a, b) = (run(0..cut, 4), run(cut..sq, 4));
            for e in 0..d {
                for i in 0..sq {
                    let got = if i < cut {
                        a[i + e * cut]
                    } else {
                        b[i - cut + e * (sq - cut)]
                    };
                    assert_eq!(
                        got.to_bits(),
                        whole[i + e * sq].to_bits(),
                        "{sq}x{skv}: split"
                    );
                }
            }
        }
    }
    // What it declines, untouched.
    let (sq, skv, d) = (20, 24, 16);
    let [q, k, v] = qkv_f32(5, sq, skv, d, d);
    let data = &masks(sq, skv, 5);
    let mut vbad = v.clone();
    vbad[3] = f32::NAN;
    let mut qinf = q.clone();
    qinf[7] = f32::NEG_INFINITY;
    // Scores up to 0.25 · 16 · 10³⁰ · max|k|, beyond 2¹⁰⁰.
    let qhuge: std::vec::Vec<f32> = q.iter().map(|x| x * 1e30).collect();
    let wide = cast::<f32>(&values(6, sq * 130, 1.0));
    let wide_k = cast::<f32>(&values(7, skv * 130, 1.0));
    // (what, queries, q, k, v, which of `masks`, sink)
    type Declined<'a> = (
        &'a str,
        usize,
        &'a [f32],
        &'a [f32],
        &'a [f32],
        usize,
        Option<f32>,
    );
    let declined: [Declined<'_>; 6] = [
        ("a padding mask", sq, &q, &k, &v, 5, None),
        ("a sink", sq, &q, &k, &v, 0, Some(0.5)),
        ("a NaN value", sq, &q, &k, &vbad, 0, None),
        ("an infinite query", sq, &qinf, &k, &v, 0, None),
        ("scores that could overflow", sq, &qhuge, &k, &v, 0, None),
        ("a head of 130", sq, &wide, &wide_k, &v, 0, None),
    ];
    for (what, n, q, k, v, m, sink) in declined {
        let dk = q.len() / sq;
        let view = data[m].view::<f32>(n, skv, &None);
        let p = Problem {
            k,
            v,
            dims: Dims::new(n, skv, dk, d),
            scale: 0.25,
            mask: &view,
            softcap: None,
            sink,
        };
        let mut out = std::vec![f32::NAN; n * d];
        let mut work: std::boxed::Box<Work<f32, 128>> = bytemuck::zeroed_box();
        let mut io = QueryIo::Separate {
            q: &q[..n * dk],
            out: &mut out,
        };
        // SAFETY: as above.
        let taken = unsafe { f(&mut io, &p, &mut work.parts()) };
        assert!(!taken, "{what} is declined");
        assert!(out.iter().all(|x| x.is_nan()), "{what}: nothing written");
    }
    std::println!("largest |logit| of the cases: {logits:.1}");
    assert!(logits > 25.0, "the cases should reach large logits");
    worst
}

#[test]
fn the_fast_kernel_is_selected_where_the_cpu_has_it() {
    // CI runs on AVX2 + FMA (or AVX-512): it must not silently fall back to a slower kernel.
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
        let avx512 = avx2 && std::is_x86_feature_detected!("avx512f");
        let bf16 = avx512
            && std::is_x86_feature_detected!("avx512bf16")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni");
        // The `i8` projections: `vpdpbusd` on 512 bits with AVX512-VNNI (which
        // `Kernel::Avx512Bf16` requires, and `Kernel::Avx512` takes where it is there), on 256 bits on `Kernel::Avx2Fma` where the CPU has
        // AVX-VNNI, AVX2's 16-bit pairs otherwise. (Miri gives each function pointer made
        // from a function an address of its own, so there no two compare equal.)
        let by = |k: Kernel, f: I8Kernel| {
            cfg!(miri)
                || table::<f32>(k)
                    .linear_i8
                    .is_some_and(|g| core::ptr::fn_addr_eq(g, f))
        };
        if bf16 {
            // With AMX (AMX-TILE, AMX-INT8, AMX-BF16) and the OS managing the tiles, the tile
            // products. Asked of CPUID and XCR0 directly (std cannot detect AMX on stable
            // Rust): leaf 7 EDX bits 22, 24 and 25, XCR0 bits 17 and 18. (Where Linux refused
            // the process the tile data, this fails: the fast kernel would be skipped.)
            const AMX: u32 = (1 << 22) | (1 << 24) | (1 << 25);
            #[allow(unused_unsafe)]
            // SAFETY: CPUID exists on every x86-64 CPU, XGETBV wherever AVX-512 runs.
            let amx = !cfg!(miri)
                && cfg!(target_os = "linux")
                && unsafe { core::arch::x86_64::__cpuid_count(7, 0) }.edx & AMX == AMX
                && unsafe { core::arch::x86_64::_xgetbv(0) } & (3 << 17) == 3 << 17;
            let tiles: I8Kernel = if amx {
                super::amx::linear
            } else {
                super::int8::linear
            };
            assert!(by(Kernel::Avx512Bf16, tiles));
            // The attention of `i8` layers in tile products there too, and only there.
            assert_eq!(table::<f32>(Kernel::Avx512Bf16).attention_i8.is_some(), amx);
            // The attention of `bf16` layers in `vdpbf16ps` products only without AMX (with it,
            // `f32`: the products run at half the FMA rate on the Xeons that have AMX).
            assert_eq!(
                table::<f32>(Kernel::Avx512Bf16).attention_bf16.is_some(),
                !amx
            );
            // And the `bf16` projections.
            let bf16_tiles: HalfKernel = if amx {
                super::amx_bf16::linear
            } else {
                super::bf16::linear
            };
            assert!(
                cfg!(miri)
                    || table::<f32>(Kernel::Avx512Bf16)
                        .linear_bf16
                        .is_some_and(|g| core::ptr::fn_addr_eq(g, bf16_tiles))
            );
        }
        for k in [Kernel::Avx512, Kernel::Avx2Fma] {
            if Kernel::supported().any(|s| s == k) {
                assert!(table::<f32>(k).attention_i8.is_none());
            }
        }
        if avx512 {
            let vnni: I8Kernel = if std::is_x86_feature_detected!("avx512vnni") {
                super::int8::linear
            } else {
                super::int8_avx2::linear
            };
            assert!(by(Kernel::Avx512, vnni));
        }
        if avx2 {
            let vnni: I8Kernel = if std::is_x86_feature_detected!("avxvnni") {
                super::int8_avx2::linear_vnni
            } else {
                super::int8_avx2::linear
            };
            assert!(by(Kernel::Avx2Fma, vnni));
        }
        if !cfg!(feature = "force-scalar") {
            if bf16 {
                // Where the CPU has `bf16` dot products, layers with `bf16` weights use them.
                assert_eq!(super::selected(), Kernel::Avx512Bf16);
                assert!(super::current::<f32>().linear_bf16.is_some());
            } else if avx512 {
                assert_eq!(super::selected(), Kernel::Avx512);
            } else if avx2 {
                assert_eq!(super::selected(), Kernel::Avx2Fma);
            }
        }
        assert_eq!(Kernel::Avx2Fma.is_supported(), avx2);
        assert_eq!(Kernel::Avx512.is_supported(), avx512);
        assert_eq!(Kernel::Avx512Bf16.is_supported(), bf16);
    }
    #[cfg(target_arch = "aarch64")]
    {
        assert!(Kernel::Neon.is_supported());
        // `Kernel::NeonBf16` needs BF16 and the dot product (every BF16 core has both; qemu's
        // `-cpu max` has both, `-cpu cortex-a72` neither).
        let bf16 = std::arch::is_aarch64_feature_detected!("bf16")
            && std::arch::is_aarch64_feature_detected!("dotprod");
        assert_eq!(Kernel::NeonBf16.is_supported(), bf16);
        // Its `f32` table, and only its, projects `i8` weights with `SDOT`.
        let sdot: I8Kernel = super::arm_int8::linear;
        let by_sdot =
            |t: &super::Table<f32>| t.linear_i8.is_some_and(|f| core::ptr::fn_addr_eq(f, sdot));
        assert!(!by_sdot(table::<f32>(Kernel::Neon)));
        if bf16 {
            assert!(by_sdot(table::<f32>(Kernel::NeonBf16)));
        }
        if !cfg!(feature = "force-scalar") {
            if bf16 {
                // Where the CPU has `BFDOT` and `SDOT`, layers with `bf16` and `i8` weights
                // use them.
                assert_eq!(super::selected(), Kernel::NeonBf16);
                assert!(super::current::<f32>().linear_bf16.is_some());
                assert!(by_sdot(super::current::<f32>()));
            } else {
                assert_eq!(super::selected(), Kernel::Neon);
            }
        }
    }
    if cfg!(feature = "force-scalar") {
        assert_eq!(super::selected(), Kernel::Scalar);
    }
}

/// A `bf16` projection kernel's signature (`Table::linear_bf16`'s).
#[cfg(target_arch = "x86_64")]
type HalfKernel = unsafe fn(LinearIo<'_, f32>, usize, usize, &[u16], usize, &[f32], &mut [f32]);

/// An `i8` projection kernel's signature (`Table::linear_i8`'s).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type I8Kernel = unsafe fn(&[f32], usize, usize, &mut [super::args::I8Out<'_, f32>], &mut [f32]);

/// One projection through an `i8` kernel called directly, with [`Table::linear`]'s operands.
///
/// # Safety
/// The CPU runs the kernel's features.
#[cfg(target_arch = "x86_64")]
unsafe fn one_i8(
    f: I8Kernel,
    io: LinearIo<'_, f32>,
    (s, din): (usize, usize),
    (q, dout, scales, bias): (&[i8], usize, &[f32], &[f32]),
    pack: &mut [f32],
) {
    let LinearIo::Out { x, out } = io else {
        unreachable!("the i8 kernels write their outputs")
    };
    assert_eq!(scales.len(), dout);
    let mut proj = [super::args::I8Out {
        q,
        scales,
        bias,
        out,
    }];
    // SAFETY: the caller's promise.
    unsafe { f(x, s, din, &mut proj, pack) };
}

/// The `i8` projections of every kernel (on aarch64 `SDOT` on [`Kernel::NeonBf16`] and the
/// `f32` GEMM on [`Kernel::Neon`]) bit for bit as the scalar kernel's: token counts on both
/// sides of the 8-token panel (and of x86's 16- and 32-token ones), inputs not a multiple of 4, widths on both sides of the 12-feature
/// tile and of its groups of 4, packs of two quads, of seven and of every input (the partial
/// sums wait in the outputs between chunks), input scales from subnormal to huge, a token of
/// zeros, one with a single subnormal input (its `127/a` overflows), one with an infinity and
/// one with a NaN.
#[test]
fn i8_projections_match_the_scalar_kernel_on_every_panel_shape() {
    let tokens: &[usize] = if cfg!(miri) {
        &[3, 9]
    } else {
        &[1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 40]
    };
    let shapes: &[(usize, usize)] = if cfg!(miri) {
        &[(5, 13), (9, 15)]
    } else {
        &[
            (1, 1),
            (3, 5),
            (4, 12),
            (5, 13),
            (7, 25),
            (13, 4),
            (64, 36),
            (67, 29),
            (130, 11),
            (1031, 14),
            // The last quads of a narrow last tile, whose 16-byte loads would run past the tile,
            // gather their partial group of 3, 2 or 1 words.
            (8, 3),
            (12, 7),
            (9, 15),
            (28, 23),
            (16, 2),
        ]
    };
    for (case, &(din, dout)) in shapes.iter().enumerate() {
        let case = case as u64;
        // Integers in −127 ..= 127 (the layout does not matter: both read the same bytes).
        let q: Vec<i8> = values(case + 7, din * dout, 127.49)
            .iter()
            .map(|v| v.round() as i8)
            .collect();
        let scales: Vec<f32> = values(case + 8, dout, 0.01)
            .iter()
            .map(|v| v.abs() as f32)
            .collect();
        let bias: Vec<f32> = cast(&values(case + 9, dout, 1.0));
        for &s in tokens {
            for &scale in &[1e-42, 1e-30, 1e-3, 1.0, 3e30] {
                let mut x: Vec<f32> = cast(&values(case * 41 + s as u64, s * din, scale));
                let token = |x: &mut Vec<f32>, i: usize, f: &dyn Fn(usize) -> f32| {
                    if i < s {
                        for p in 0..din {
                            x[i + p * s] = f(p);
                        }
                    }
                };
                token(&mut x, 1, &|_| 0.0);
                token(&mut x, 3, &|p| if p == din / 2 { 1e-45 } else { 0.0 });
                let (inf, nan) = (x[(din / 3) * s], x[(din - 1) * s]);
                token(&mut x, 4, &|p| {
                    if p == din / 3 { f32::INFINITY } else { inf }
                });
                token(&mut x, 6, &|p| if p == din - 1 { f32::NAN } else { nan });
                let mut want = std::vec![0f32; s * dout];
                let io = LinearIo::Out {
                    x: &x,
                    out: &mut want,
                };
                super::scalar::linear_i8(io, s, din, &q, dout, &scales, &bias);
                for kernel in fast_kernels() {
                    let all = din.div_ceil(4) * PANEL_ROWS;
                    // AMX's pack needs a step of 64 inputs of 32 tokens (16 panel rows) from
                    // a 64-byte boundary: 17 always have one.
                    let packs = [2, 7, 17, 24].map(|n| n * PANEL_ROWS);
                    for pack_len in packs.into_iter().chain([all.max(2 * PANEL_ROWS)]) {
                        let mut got = std::vec![f32::NAN; s * dout];
                        let mut pack = std::vec![0f32; pack_len];
                        let io = LinearIo::Out {
                            x: &x,
                            out: &mut got,
                        };
                        table::<f32>(kernel)
                            .linear(io, s, din, &q, dout, &bias, &scales, &mut pack);
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{} {s}×{din}→{dout} scale {scale:e} pack {pack_len}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_required_kernel_is_the_one_tested() {
    // CI names the best kernel of its CPU; this fails if that kernel does not run here (so the
    // tests above, which run every supported kernel, did not test it) or, unless
    // `force-scalar` pins the scalar kernel, is not the one the library selects.
    let Ok(name) = std::env::var("STATIC_ATTENTION_REQUIRE_KERNEL") else {
        return;
    };
    let kernel = Kernel::ALL
        .into_iter()
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("STATIC_ATTENTION_REQUIRE_KERNEL={name} names no kernel"));
    assert!(
        kernel.is_supported(),
        "STATIC_ATTENTION_REQUIRE_KERNEL={name}, but that kernel does not run here"
    );
    assert!(fast_kernels().any(|k| k == kernel) || kernel == Kernel::Scalar);
    if !cfg!(feature = "force-scalar") {
        assert_eq!(super::selected(), kernel, "the selected kernel");
    }
}

#[test]
fn outputs_replace_their_queries_bit_for_bit() {
    // In place (each head's outputs over its queries, as the layers run it): the same bits as
    // separate buffers, on every kernel, every path and every kind of mask, at shapes with
    // whole tiles, a half tile and single rows left over.
    for kernel in Kernel::supported() {
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(9, 11, 4)]
        } else {
            &[(1, 5, 4), (7, 9, 8), (16, 40, 8), (33, 70, 16), (45, 20, 6)]
        };
        for &(sq, skv, d) in shapes {
            let dims = Dims::new(sq, skv, d, d);
            let [q, k, v] = qkv_f32(11, sq, skv, d, d);
            for (m, md) in some_masks(sq, skv, 3).iter().enumerate() {
                let add = md.additive.as_ref().map(|a| cast::<f32>(a));
                let mask = md.view(sq, skv, &add);
                for var in all_variants() {
                    let ins = (&q[..], &k[..], &v[..]);
                    let separate = run_with(kernel, ins, dims, 0.5, &mask, false, var);
                    let in_place = run_with(kernel, ins, dims, 0.5, &mask, true, var);
                    let what = format!("{} {sq}×{skv}×{d} mask {m} {var:?}", kernel.name());
                    assert_same_bits(&what, &in_place, &separate);
                }
            }
        }
    }
}

#[test]
fn queries_read_through_a_stride() {
    // A decoding step through a ring reads one token of a longer sequence: queries and outputs
    // with a leading dimension above `sq` give bit for bit the dense result and leave the rows
    // between them untouched.
    for kernel in Kernel::supported() {
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(1, 5, 4), (9, 7, 3)]
        } else {
            &[(1, 5, 4), (1, 70, 8), (3, 9, 5), (17, 40, 16)]
        };
        for &(sq, skv, d) in shapes {
            let ld = sq + 5;
            let dims = Dims::new(sq, skv, d, d);
            let [q, k, v] = qkv_f32(21, sq, skv, d, d);
            let mut strided = std::vec![-7.0f32; ld * d];
            for c in 0..d {
                strided[c * ld..c * ld + sq].copy_from_slice(&q[c * sq..(c + 1) * sq]);
            }
            for (md, var) in some_masks(sq, skv, 4).iter().zip(all_variants().cycle()) {
                let add = md.additive.as_ref().map(|a| cast::<f32>(a));
                let mask = md.view(sq, skv, &add);
                let dense = run_with(kernel, (&q, &k, &v), dims, 0.5, &mask, false, var);
                let p = Problem {
                    k: &k,
                    v: &v,
                    dims: Dims { ldq: ld, ..dims },
                    scale: 0.5,
                    mask: &mask,
                    softcap: var.softcap.map(f32::of),
                    sink: var.sink.map(f32::of),
                };
                let mut buf = strided.clone();
                let mut work: std::boxed::Box<Work<f32, 80>> = bytemuck::zeroed_box();
                table::<f32>(kernel).attention(QueryIo::InPlace(&mut buf), &p, work.parts());
                for c in 0..d {
                    for i in 0..ld {
                        let got = buf[c * ld + i];
                        let want = if i < sq { dense[0][c * sq + i] } else { -7.0 };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{} {sq}×{skv} {var:?}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn huge_values_are_rescaled_not_overflowed() {
    // Values near f32::MAX overflow Σ p·v unless the kernel rescales: every kernel gives the
    // finite answer (the mean of the values here, all keys being equal).
    for kernel in Kernel::supported() {
        for &(sq, skv) in &[(1usize, 8usize), (5, 8), (16, 8), (33, 12)] {
            let d = 2;
            let dims = Dims::new(sq, skv, d, d);
            let q = std::vec![0.0f32; sq * d];
            let k = std::vec![0.0f32; skv * d];
            let v: Vec<f32> = (0..skv * d)
                .map(|i| f32::MAX * if i % 3 == 0 { 0.9 } else { 0.8 })
                .collect();
            let mask = MaskView::structural(Pattern::Full, sq, skv);
            for var in all_variants() {
                // Every score is 0 (capped or not), so each key's weight is 1/(skv + e^s).
                let ins = (&q[..], &k[..], &v[..]);
                let [out, _, _] = run_with(kernel, ins, dims, 1.0, &mask, false, var);
                let den = skv as f64 + var.sink.map_or(0.0, f64::exp);
                for e in 0..d {
                    let mean: f64 = (0..skv).map(|j| f64::from(v[j + e * skv])).sum::<f64>() / den;
                    for i in 0..sq {
                        let got = f64::from(out[i + e * sq]);
                        assert!(
                            (got - mean).abs() <= 1e-5 * mean,
                            "{} {sq}×{skv} {var:?}: {got} vs {mean}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}

/// No variant, then each of [`VARIANTS`].
fn all_variants() -> impl Clone + Iterator<Item = Variants> {
    core::iter::once(Variants::PLAIN).chain(VARIANTS)
}

/// Input scales of the variant tests (logits from 1e-6 to several hundred).
fn variant_scales() -> &'static [f64] {
    if cfg!(miri) {
        &[1.0]
    } else {
        &[1e-3, 1.0, 30.0]
    }
}

#[test]
fn attention_kernels_match_the_scalar_kernel_with_softcap_and_sinks() {
    // As `attention_kernels_match_the_scalar_kernel_and_the_oracle`, under each variant: the
    // cap runs through the vector `tanh`, the sink through the softmax state of every path
    // (both tile widths, the rows path, the weights tiles and their scalar last rows).
    for kernel in fast_kernels() {
        for (case, &(sq, skv, dk, dv)) in shapes().iter().enumerate() {
            let dims = Dims::new(sq, skv, dk, dv);
            let seed = case as u64 * 17 + 3;
            for &scale_in in variant_scales() {
                let q = values(seed, sq * dk, scale_in);
                let k = values(seed + 1, skv * dk, scale_in);
                let v = values(seed + 2, skv * dv, 1.0);
                let scale = 1.0 / (dk as f64).sqrt();
                for (m, md) in some_masks(sq, skv, seed).iter().enumerate() {
                    let (q32, k32, v32) = (cast::<f32>(&q), cast::<f32>(&k), cast::<f32>(&v));
                    let add32 = md.additive.as_ref().map(|a| cast::<f32>(a));
                    let mask32 = md.view(sq, skv, &add32);
                    let (q64, k64, v64) = (cast::<f64>(&q32), cast::<f64>(&k32), cast::<f64>(&v32));
                    let add64 = add32.as_ref().map(|a| cast::<f64>(a));
                    let mask64 = md.view(sq, skv, &add64);
                    let s32 = scale as f32;
                    let s64 = f64::from(s32);
                    // A cap only lowers the logits, so the plain test's widening bounds them.
                    let logit = scale_in * scale_in * (dk as f64).sqrt();
                    let widen = 1.0 + logit / 4.0;
                    for var in VARIANTS {
                        let what = format!(
                            "{} {sq}×{skv}×{dk}×{dv} ×{scale_in} mask {m} {var:?}",
                            kernel.name()
                        );
                        let ins = (&q32[..], &k32[..], &v32[..]);
                        let fast = run_with(kernel, ins, dims, s32, &mask32, false, var);
                        let slow = run_with(Kernel::Scalar, ins, dims, s32, &mask32, false, var);
                        let ins64 = (&q64[..], &k64[..], &v64[..]);
                        let oracle =
                            run_with(Kernel::Scalar, ins64, dims, s64, &mask64, false, var);
                        let paths = 2e-6 * widen;
                        for (path, (f, sl)) in PATHS.iter().zip(fast.iter().zip(&slow)) {
                            let diff = max_abs_diff(f, sl);
                            assert!(diff <= paths, "{what}: {path} vs scalar {diff:e}");
                        }
                        assert!(
                            max_abs_diff(&fast[0], &fast[1]) <= paths,
                            "{what}: streaming vs weights path"
                        );
                        for (path, (f, o)) in PATHS.iter().zip(fast.iter().zip(&oracle)) {
                            let what = format!("{what}: {path} vs oracle");
                            assert_close(&what, f, o, 1e-5 * widen, 1e-5);
                        }
                        let fast64 = run_with(kernel, ins64, dims, s64, &mask64, false, var);
                        for (path, (f, o)) in PATHS.iter().zip(fast64.iter().zip(&oracle)) {
                            let diff = max_abs_diff(f, o);
                            assert!(diff <= 1e-12 * widen, "{what}: f64 {path} {diff:e}");
                        }
                    }
                }
            }
        }
    }
}

/// Attention computed the direct way, in `f64`: every score materialised
/// (`scale · q·k`, capped, plus the mask's bias; masked keys left out), the sink appended as
/// one more logit, the row softmaxed and the sink's column dropped. Returns the outputs, the
/// weights (both with leading dimension `sq`) and each row's sink share `e^(s − m)/den`.
fn naive_attention(
    (q, k, v): (&[f64], &[f64], &[f64]),
    dims: Dims,
    scale: f64,
    mask: &MaskView<'_, f64>,
    var: Variants,
) -> [Vec<f64>; 3] {
    let Dims {
        sq, skv, dk, dv, ..
    } = dims;
    let mut out = std::vec![0.0; sq * dv];
    let mut w = std::vec![0.0; sq * skv];
    let mut share = std::vec![0.0; sq];
    for i in 0..sq {
        let (lo, hi) = mask.key_range(i);
        let mut z: Vec<Option<f64>> = std::vec![None; skv];
        for (j, zj) in z.iter_mut().enumerate().take(hi).skip(lo) {
            let entry = if mask.is_dense() {
                mask.dense_entry(i, j)
            } else {
                Some(0.0)
            };
            if let Some(bias) = entry {
                let dot: f64 = (0..dk).map(|d| q[i + d * sq] * k[j + d * skv]).sum();
                let mut x = scale * dot;
                if let Some(c) = var.softcap {
                    x = c * (x / c).tanh();
                }
                *zj = Some(x + bias);
            }
        }
        let logits: Vec<f64> = z.iter().flatten().copied().chain(var.sink).collect();
        if logits.is_empty() {
            continue;
        }
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let den: f64 = logits.iter().map(|&x| (x - m).exp()).sum();
        for (j, zj) in z.iter().enumerate() {
            if let Some(x) = zj {
                let wij = (x - m).exp() / den;
                w[i + j * sq] = wij;
                for e in 0..dv {
                    out[i + e * sq] += wij * v[j + e * skv];
                }
            }
        }
        share[i] = var.sink.map_or(0.0, |s| (s - m).exp() / den);
    }
    [out, w, share]
}

#[test]
fn every_kernel_matches_a_naive_softmax_with_the_sink_column() {
    // The scalar kernel (the reference of every other test) and each fast kernel, in f64,
    // against the direct computation; and each row's weights sum to 1 − the sink's share (to
    // 0 for a row whose keys are all masked).
    for kernel in Kernel::supported() {
        for (case, &(sq, skv, dk, dv)) in shapes().iter().enumerate() {
            let dims = Dims::new(sq, skv, dk, dv);
            let seed = case as u64 * 13 + 5;
            for &scale_in in variant_scales() {
                let q = values(seed, sq * dk, scale_in);
                let k = values(seed + 1, skv * dk, scale_in);
                let v = values(seed + 2, skv * dv, 1.0);
                let scale = 1.0 / (dk as f64).sqrt();
                let widen = 1.0 + scale_in * scale_in * (dk as f64).sqrt() / 4.0;
                for (m, md) in some_masks(sq, skv, seed).iter().enumerate() {
                    let mask = md.view(sq, skv, &md.additive);
                    for var in all_variants() {
                        let what = format!(
                            "{} {sq}×{skv}×{dk}×{dv} ×{scale_in} mask {m} {var:?}",
                            kernel.name()
                        );
                        let ins = (&q[..], &k[..], &v[..]);
                        let got = run_with(kernel, ins, dims, scale, &mask, false, var);
                        // The −∞ sink of the last variant is no sink: the naive softmax
                        // has no column for it.
                        let plain_sink = Variants {
                            sink: var.sink.filter(|s| s.is_finite()),
                            ..var
                        };
                        let [out, w, share] = naive_attention(ins, dims, scale, &mask, plain_sink);
                        let tol = 1e-12 * widen;
                        assert_close(&format!("{what}: streaming"), &got[0], &out, tol, 0.0);
                        assert_close(&format!("{what}: weights path"), &got[1], &out, tol, 0.0);
                        assert_close(&format!("{what}: weights"), &got[2], &w, tol, 0.0);
                        for i in 0..sq {
                            let sum: f64 = (0..skv).map(|j| got[2][i + j * sq]).sum();
                            let any = (0..skv).any(|j| w[i + j * sq] > 0.0);
                            let want = if any { 1.0 - share[i] } else { 0.0 };
                            assert!(
                                (sum - want).abs() <= 1e-12 * skv as f64,
                                "{what}: row {i} sums to {sum}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn sinks_of_infinity_and_nan_and_rows_with_no_key() {
    // A sink of −∞ is bit for bit no sink; NaN and +∞ make every output and weight NaN; a row
    // whose keys are all masked gets zeros with a sink and a cap too. Every kernel, both IO
    // modes, shapes with whole tiles, a half tile and single rows.
    for kernel in Kernel::supported() {
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(9, 11, 4)]
        } else {
            &[(1, 5, 4), (7, 9, 8), (33, 70, 16), (45, 20, 6)]
        };
        for &(sq, skv, d) in shapes {
            let dims = Dims::new(sq, skv, d, d);
            let [q, k, v] = qkv_f32(31, sq, skv, d, d);
            let ins = (&q[..], &k[..], &v[..]);
            for md in some_masks(sq, skv, 6) {
                let add = md.additive.as_ref().map(|a| cast::<f32>(a));
                let mask = md.view(sq, skv, &add);
                for in_place in [false, true] {
                    let what = format!("{} {sq}×{skv} in place {in_place}", kernel.name());
                    for softcap in [None, Some(3.0)] {
                        let plain = Variants {
                            softcap,
                            sink: None,
                        };
                        let none = run_with(kernel, ins, dims, 0.5, &mask, in_place, plain);
                        let minus_inf = Variants {
                            sink: Some(f64::NEG_INFINITY),
                            ..plain
                        };
                        let got = run_with(kernel, ins, dims, 0.5, &mask, in_place, minus_inf);
                        assert_same_bits(&format!("{what} −∞ sink"), &got, &none);
                        for sink in [f64::NAN, f64::INFINITY] {
                            let var = Variants {
                                sink: Some(sink),
                                ..plain
                            };
                            let got = run_with(kernel, ins, dims, 0.5, &mask, in_place, var);
                            for (path, part) in PATHS.iter().zip(&got) {
                                assert!(
                                    part.iter().all(|x| x.is_nan()),
                                    "{what} sink {sink}: {path}"
                                );
                            }
                        }
                    }
                }
            }
            // Every key padded away: zeros, whatever the variants.
            let md = MaskData {
                pad: Some(std::vec![true; skv]),
                ..MaskData::plain(Pattern::Full)
            };
            let mask = md.view::<f32>(sq, skv, &None);
            for var in all_variants() {
                let got = run_with(kernel, ins, dims, 0.5, &mask, false, var);
                for (path, part) in PATHS.iter().zip(&got) {
                    assert!(
                        part.iter().all(|&x| x.to_bits() == 0),
                        "{} {sq}×{skv} {var:?}: {path} of a row with no key",
                        kernel.name()
                    );
                }
            }
        }
    }
}

/// The largest relative error of `kernel`'s `tanh` (the soft-cap's) over `xs` against
/// `f64::tanh` of the same inputs, after checking the special values.
fn tanh_error<T: Float>(kernel: Kernel, xs: &[f64]) -> f64 {
    let mut got: Vec<T> = cast(xs);
    let exact: Vec<f64> = got.iter().map(|x| x.to_f64().tanh()).collect();
    table::<T>(kernel).tanh(&mut got);
    let mut worst = 0.0f64;
    for (i, (g, e)) in got.iter().zip(&exact).enumerate() {
        let g = g.to_f64();
        assert!(
            g.abs() <= 1.0 && (g == 0.0 || g.signum() == e.signum()),
            "{} tanh({}) = {g}",
            kernel.name(),
            xs[i]
        );
        if *e != 0.0 {
            worst = worst.max((g - e).abs() / e.abs());
        } else {
            assert_eq!(g, 0.0);
        }
    }
    let mut special: Vec<T> = cast(&[f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 0.0]);
    table::<T>(kernel).tanh(&mut special);
    assert_eq!(special[0].to_f64(), 1.0, "{}", kernel.name());
    assert_eq!(special[1].to_f64(), -1.0, "{}", kernel.name());
    assert!(special[2].is_nan_(), "{}", kernel.name());
    assert_eq!(special[3].to_f64(), 0.0, "{}", kernel.name());
    worst
}

#[test]
fn vector_tanh_is_accurate() {
    // Relative error against f64's tanh. f32: every 97th f32 bit pattern from 1e-30 to 25,
    // both signs (about 2.4 million values, each binade and the switch at 0.625 covered).
    // f64: a dense sweep of [−25, 25], the neighbourhood of the switch, and random points at
    // scales from 1e-300 to 10. The bounds are the measured errors rounded up.
    let lo = 1e-30f32.to_bits();
    let hi = 25.0f32.to_bits();
    let xs32: Vec<f64> = (lo..=hi)
        .step_by(if cfg!(miri) { 1 << 22 } else { 97 })
        .flat_map(|b| {
            let x = f64::from(f32::from_bits(b));
            [x, -x]
        })
        .collect();
    let n = if cfg!(miri) { 100 } else { 400_000 };
    let mut xs64: Vec<f64> = (-n..=n)
        .map(|i| f64::from(i) * 25.0 / f64::from(n))
        .collect();
    xs64.extend((0..2000).map(|i| 0.625 + f64::from(i - 1000) * 1e-6));
    for (seed, scale) in [1e-300, 1e-20, 1e-8, 1e-3, 0.1, 0.7, 2.0, 10.0]
        .into_iter()
        .enumerate()
    {
        xs64.extend(values(
            seed as u64 + 40,
            if cfg!(miri) { 10 } else { 20_000 },
            scale,
        ));
    }
    for kernel in Kernel::supported() {
        let e32 = tanh_error::<f32>(kernel, &xs32);
        let e64 = tanh_error::<f64>(kernel, &xs64);
        std::eprintln!("{} tanh: f32 {e32:.3e}, f64 {e64:.3e}", kernel.name());
        assert!(
            e32 <= 2e-7,
            "{} f32 tanh relative error {e32:e}",
            kernel.name()
        );
        assert!(
            e64 <= 5e-16,
            "{} f64 tanh relative error {e64:e}",
            kernel.name()
        );
    }
}
