//! The one attention core every layer type runs: project (with the positions' rotation),
//! attend each query head against its key/value head, concatenate, project out.
//!
//! A layer lowers itself to a [`Layer`]: borrowed projections and its head counts.
//! [`crate::MultiHead`] is the grouped case with as many key/value heads as heads,
//! [`crate::SelfAttention`] one head with no output projection (its head is its output), and
//! [`crate::GroupedQuery`] the general case. The weights, the mask and ALiBi, the rotary table,
//! the KV cache and the threads of the `rayon` feature are all inputs to the same functions.
//!
//! Working memory is one layout ([`Buffers`], from a [`crate::Scratch`] or the arrays a
//! by-value entry point declares): the projected queries (`SQ × Q_DIM`), keys and values
//! (`SKV × KV_DIM`), the kernel's block state and a projection panel. The heads need no buffer
//! of their own: each head's outputs replace its queries (`QueryIo::InPlace`), so after the
//! loop the query buffer holds the concatenated heads, which the output projection reads.
//!
//! Every column-major buffer here puts head `h` in the columns `h·HEAD_DIM ..`, one contiguous
//! block of `rows · HEAD_DIM` values.

use nalgebra::SMatrix;

use crate::kernels::{
    Dims, MaskView, Problem, QueryIo, Table, WorkRef, pattern::Alignment, pattern::Pattern,
};
use crate::mask::{Additive, Alibi};
use crate::positions::{PositionEncoding, PositionError};
use crate::variant::Tweaks;
use crate::{CacheError, Float, KvCache, Linear, Mask, Weight, WeightKind};

/// The default softmax scale `1/√d` for keys of width `d`.
///
/// ```
/// assert_eq!(static_attention::default_scale::<f64>(64), 0.125);
/// ```
#[inline]
#[must_use]
pub fn default_scale<T: Float>(d: usize) -> T {
    T::of(1.0 / crate::kernels::math::sqrt(d as f64))
}

/// How many query heads and how many key/value heads: query head `h` reads kv head
/// `h / (count / kv)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub count: usize,
    pub kv: usize,
}

impl Heads {
    /// The kv head query head `h` reads.
    #[inline]
    pub(crate) fn kv_head(self, h: usize) -> usize {
        h / (self.count / self.kv)
    }
}

/// How one call turns dot products into logits: the scale, the mask (lowered), the ALiBi
/// part and, for a ring of keys, the index of the oldest key; the soft-cap and each query
/// head's sink logit, if the layer has them.
#[derive(Clone, Copy)]
pub(crate) struct Scores<'a, T> {
    pub scale: T,
    pub mask: &'a MaskView<'a, T>,
    pub alibi: Option<Alibi>,
    pub key_rotate: usize,
    pub softcap: Option<T>,
    pub sinks: Option<&'a [T]>,
    /// The layer stores `bf16` (or `i8`) weights: where the kernel's table has an attention
    /// for them (`Table::attention_bf16`: AVX512-BF16 without AMX; `Table::attention_i8`:
    /// AMX), the attention runs in `bf16` (`i8`) products too (see [`crate::Weight`]).
    pub reduced: Option<WeightKind>,
}

impl<'a, T: Float> Scores<'a, T> {
    /// The scores of heads of width `head_dim` under `tweaks` (scale `1/√head_dim` unless
    /// they set one), ALiBi distances from key 0.
    pub fn new(
        head_dim: usize,
        mask: &'a MaskView<'a, T>,
        alibi: Option<Alibi>,
        tweaks: &Tweaks<'a, T>,
    ) -> Self {
        Self {
            scale: tweaks.scale.unwrap_or_else(|| default_scale(head_dim)),
            mask,
            alibi,
            key_rotate: 0,
            softcap: tweaks.softcap,
            sinks: tweaks.sinks,
            reduced: None,
        }
    }
}

/// `pattern` narrowed to a sliding window of `window` keys, if the layer has one: a causal
/// pattern becomes that window, a window the narrower of the two; a full pattern (no causal
/// order) is kept.
fn windowed(pattern: Pattern, window: Option<usize>) -> Pattern {
    match (pattern, window) {
        (Pattern::Causal(alignment), Some(window)) => Pattern::SlidingWindow { window, alignment },
        (
            Pattern::SlidingWindow {
                window: w,
                alignment,
            },
            Some(window),
        ) => Pattern::SlidingWindow {
            window: w.min(window),
            alignment,
        },
        (p, _) => p,
    }
}

/// Whether a call over `tokens` queries of a layer storing `W` asks for the attention in
/// `bf16` or `i8` products (and in which): `bf16` or `i8` weights and more than two tokens
/// (one or two, a decoding step, keep the `f32` attention: a step reads each key and value
/// once, and packing them would cost what the products save).
fn reduced_attention<T: Float, W: Weight<T>>(tokens: usize) -> Option<WeightKind> {
    (matches!(W::KIND, WeightKind::Bf16 | WeightKind::I8) && tokens > 2).then_some(W::KIND)
}

#[allow(clippy::too_many_arguments)]
/// One head: `kernels::attention` (or `attention_with_weights` into `weights`) for query head
/// `h` of `heads`, with its ALiBi slope. `io` and `k`, `v` start at the head's own columns.
#[inline]
fn attend_head<T: Float>(
    kt: &Table<T>,
    io: QueryIo<'_, T>,
    (k, v): (&[T], &[T]),
    dims: Dims,
    (h, heads): (usize, usize),
    scores: &Scores<'_, T>,
    work: WorkRef<'_, T>,
    weights: Option<&mut [T]>,
) {
    let slope = scores.alibi.map(|a| a.slope(h, heads));
    let mask = scores.mask.with_alibi(slope, scores.key_rotate);
    let p = Problem {
        k,
        v,
        dims,
        scale: scores.scale,
        mask: &mask,
        softcap: scores.softcap,
        sink: scores.sinks.map(|s| s[h]),
    };
    match weights {
        Some(w) => kt.attention_with_weights(io, &p, w),
        None => kt.attention_reduced(scores.reduced, io, &p, work),
    }
}

/// The per-head loop: every query head of `heads` attending over its kv head. `io` holds all
/// heads' queries (and outputs), head `h` at `h·dk·ldq` (`h·dv·ldq` for the outputs); `k` and
/// `v` all kv heads, head `g` at `g·dk·ldkv` and `g·dv·ldkv`; `weights`, when given, one
/// column-major matrix of leading dimension `ldq` per head, `step` scalars apart (at least
/// `ldq · skv`). `dims` is one head's problem.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_heads<T: Float>(
    kt: &Table<T>,
    mut io: QueryIo<'_, T>,
    (k, v): (&[T], &[T]),
    dims: Dims,
    heads: Heads,
    scores: &Scores<'_, T>,
    mut work: WorkRef<'_, T>,
    mut weights: Option<(&mut [T], usize)>,
) {
    // The distance from one head to the next in each array.
    let (q_step, out_step) = (dims.dk * dims.ldq, dims.dv * dims.ldq);
    let (k_step, v_step) = (dims.dk * dims.ldkv, dims.dv * dims.ldkv);
    for h in 0..heads.count {
        let g = heads.kv_head(h);
        let head_io = match &mut io {
            QueryIo::InPlace(buf) => QueryIo::InPlace(&mut buf[h * q_step..]),
            QueryIo::Separate { q, out } => QueryIo::Separate {
                q: &q[h * q_step..],
                out: &mut out[h * out_step..],
            },
        };
        let kv = (&k[g * k_step..], &v[g * v_step..]);
        let w = weights.as_mut().map(|(w, step)| &mut w[h * *step..]);
        attend_head(
            kt,
            head_io,
            kv,
            dims,
            (h, heads.count),
            scores,
            work.reborrow(),
            w,
        );
    }
}

/// Working memory of one call, borrowed: projected queries (`sq × Q_DIM`), keys and values
/// (`skv × KV_DIM`), the attention kernel's block state and a projection panel.
pub(crate) struct Buffers<'s, T> {
    pub q: &'s mut [T],
    pub k: &'s mut [T],
    pub v: &'s mut [T],
    pub work: WorkRef<'s, T>,
    pub pack: &'s mut [T],
}

/// Declares zeroed local working memory for `$sq` queries and `$skv` keys, `$qd` query and
/// `$kvd` key/value features, and binds `$buf` to a [`Buffers`] over it. Each buffer is its own
/// array variable, which every optimisation level (`opt-level = 0` included) builds in place.
macro_rules! local_buffers {
    ($buf:ident, $t:ty, $sq:expr, $skv:expr, $qd:expr, $kvd:expr) => {
        let mut q = [[<$t as $crate::Float>::ZERO; $sq]; $qd];
        let mut k = [[<$t as $crate::Float>::ZERO; $skv]; $kvd];
        let mut v = [[<$t as $crate::Float>::ZERO; $skv]; $kvd];
        let mut work = $crate::kernels::Work::<$t, $qd>::new();
        let mut pack = [[<$t as $crate::Float>::ZERO; $crate::kernels::PANEL_ROWS]; $qd];
        let $buf = $crate::heads::Buffers {
            q: q.as_flattened_mut(),
            k: k.as_flattened_mut(),
            v: v.as_flattened_mut(),
            work: work.parts(),
            pack: pack.as_flattened_mut(),
        };
    };
}
pub(crate) use local_buffers;

/// A layer as the core sees it: its projections, borrowed, and its head counts. `out` is
/// `None` for a layer whose heads are its output (`Q_DIM = DIM`).
pub(crate) struct Layer<'l, const DIM: usize, const QD: usize, const KVD: usize, T, W: Weight<T>> {
    pub q: &'l Linear<DIM, QD, T, W>,
    pub k: &'l Linear<DIM, KVD, T, W>,
    pub v: &'l Linear<DIM, KVD, T, W>,
    pub out: Option<&'l Linear<QD, DIM, T, W>>,
    pub heads: Heads,
    pub tweaks: Tweaks<'l, T>,
}

impl<'l, const DIM: usize, const QD: usize, const KVD: usize, T: Float, W: Weight<T>>
    Layer<'l, DIM, QD, KVD, T, W>
{
    /// A layer of `count` query heads over `kv` key/value heads: its query, key and value
    /// projections, and its output projection if it has one.
    pub(crate) fn new(
        q: &'l Linear<DIM, QD, T, W>,
        k: &'l Linear<DIM, KVD, T, W>,
        v: &'l Linear<DIM, KVD, T, W>,
        out: Option<&'l Linear<QD, DIM, T, W>>,
        (count, kv): (usize, usize),
    ) -> Self {
        let heads = Heads { count, kv };
        Self {
            q,
            k,
            v,
            out,
            heads,
            tweaks: Tweaks::PLAIN,
        }
    }

    /// This layer running the variant `tweaks`.
    pub(crate) fn with_tweaks(self, tweaks: Tweaks<'l, T>) -> Self {
        Self { tweaks, ..self }
    }

    /// QK-norm, then the rotary embedding, on projected queries (`sq` tokens) and keys
    /// (`skv` tokens) at positions `first ..`.
    fn prepare<P: PositionEncoding<T>>(
        &self,
        (q, sq): (&mut [T], usize),
        (k, skv): (&mut [T], usize),
        positions: &P,
        first: usize,
    ) {
        if let Some(n) = self.tweaks.q_norm {
            n.apply(q, sq, QD);
        }
        if let Some(n) = self.tweaks.k_norm {
            n.apply(k, skv, KVD);
        }
        positions.rotate(q, sq, self.heads.count, first);
        positions.rotate(k, skv, self.heads.kv, first);
    }

    /// Features per head.
    fn head_dim(&self) -> usize {
        QD / self.heads.count
    }

    /// `sq` query tokens and `skv` key/value tokens projected into the buffers, queries and
    /// keys normalised (with QK-norm) and rotated for positions `first ..`.
    #[allow(clippy::too_many_arguments)]
    fn project<P: PositionEncoding<T>>(
        &self,
        kt: &Table<T>,
        (query, sq): (&[T], usize),
        (key, value, skv): (&[T], &[T], usize),
        positions: &P,
        first: usize,
        buf: &mut Buffers<'_, T>,
    ) {
        let same = |a: &[T], b: &[T]| core::ptr::eq(a, b);
        if kt.shares_inputs::<W>() && sq == skv && sq > 0 && same(query, key) && same(key, value) {
            // Self-attention: one call, which quantizes `i8` layers' tokens once.
            let projs = [
                self.q.projection(&mut buf.q[..sq * QD]),
                self.k.projection(&mut buf.k[..sq * KVD]),
                self.v.projection(&mut buf.v[..sq * KVD]),
            ];
            kt.linear_shared(query, sq, DIM, projs, buf.pack);
        } else {
            self.q.project(kt, query, sq, buf.q, buf.pack);
            self.k.project(kt, key, skv, buf.k, buf.pack);
            self.v.project(kt, value, skv, buf.v, buf.pack);
        }
        self.prepare((buf.q, sq), (buf.k, skv), positions, first);
    }

    /// Where the heads go: over their queries when an output projection follows, into `out`
    /// otherwise.
    fn heads_io<'a>(&self, q: &'a mut [T], out: &'a mut [T]) -> QueryIo<'a, T> {
        match self.out {
            Some(_) => QueryIo::InPlace(q),
            None => QueryIo::Separate { q, out },
        }
    }

    /// `out = heads · W_oᵀ + b_o` for `sq` tokens (nothing to do without an output
    /// projection: the heads already are the output).
    fn project_out(&self, kt: &Table<T>, heads: &[T], sq: usize, out: &mut [T], pack: &mut [T]) {
        if let Some(o) = self.out {
            o.project(kt, heads, sq, out, pack);
        }
    }

    /// `SQ` queries from `query` attend to `SKV` keys from `key` and values from `value`
    /// (positions `0 ..` for both), the `SQ × DIM` result into `out` and, when given, each
    /// head's weights into `weights` (`heads` matrices of `SQ × SKV`).
    ///
    /// # Errors
    /// [`PositionError`] if the positions do not fit the rotary table; nothing is written then.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward<const SQ: usize, const SKV: usize, P, A>(
        &self,
        kt: &Table<T>,
        query: &SMatrix<T, SQ, DIM>,
        (key, value): (&SMatrix<T, SKV, DIM>, &SMatrix<T, SKV, DIM>),
        mask: &Mask<'_, SQ, SKV, A>,
        positions: &P,
        mut buf: Buffers<'_, T>,
        out: &mut [T],
        weights: Option<&mut [T]>,
    ) -> Result<(), PositionError>
    where
        P: PositionEncoding<T>,
        A: Additive<T, SQ, SKV>,
    {
        positions.check(0, SQ.max(SKV))?;
        let inputs = (key.as_slice(), value.as_slice(), SKV);
        self.project(kt, (query.as_slice(), SQ), inputs, positions, 0, &mut buf);
        let hd = self.head_dim();
        let mut view = mask.view();
        view.pattern = windowed(view.pattern, self.tweaks.window);
        let alibi = positions.alibi().or(mask.alibi());
        let scores = Scores {
            reduced: reduced_attention::<T, W>(SQ),
            ..Scores::new(hd, &view, alibi, &self.tweaks)
        };
        let kv = (&*buf.k, &*buf.v);
        let io = self.heads_io(&mut *buf.q, &mut *out);
        let dims = Dims::new(SQ, SKV, hd, hd);
        let weights = weights.map(|w| (w, SQ * SKV));
        attend_heads(kt, io, kv, dims, self.heads, &scores, buf.work, weights);
        self.project_out(kt, buf.q, SQ, out, buf.pack);
        Ok(())
    }

    /// Appends `SQ` tokens to `cache` at its next positions and attends each to everything the
    /// cache holds up to its own position (within the layer's window, if it has one); the
    /// `SQ × DIM` result into `out` and, when given, each head's weights into `weights`
    /// (`heads` matrices of `SQ × CAP`, column `r` for the cache's row `r` as the token saw
    /// it; rows it did not attend to get 0). Checks everything before changing anything.
    ///
    /// # Errors
    /// [`CacheError::Full`] if the tokens do not fit, [`CacheError::Position`] past the rotary
    /// table, [`CacheError::Window`] for a ring whose capacity is not the layer's window; the
    /// cache and `out` are unchanged then.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode<const SQ: usize, const CAP: usize, P: PositionEncoding<T>>(
        &self,
        kt: &Table<T>,
        x: &SMatrix<T, SQ, DIM>,
        cache: &mut KvCache<CAP, KVD, T>,
        positions: &P,
        mut buf: Buffers<'_, T>,
        out: &mut [T],
        mut weights: Option<&mut [T]>,
    ) -> Result<(), CacheError> {
        let ring = cache.is_sliding_window();
        if let Some(window) = self.tweaks.window
            && ring
            && window != CAP
        {
            return Err(CacheError::Window {
                window,
                capacity: CAP,
            });
        }
        cache.check_room(SQ)?;
        let first = cache.position();
        positions.check(first, SQ)?;
        let x = x.as_slice();
        self.project(kt, (x, SQ), (x, x, SQ), positions, first, &mut buf);
        let hd = self.head_dim();
        let alibi = positions.alibi();
        if let Some(w) = weights.as_deref_mut() {
            w.fill(T::ZERO);
        }
        // A growing cache takes all SQ tokens, then every query sees the cache up to its own
        // position (causal, aligned bottom-right: the new tokens are the newest positions). A
        // ring goes token by token: each query sees exactly what the ring holds once its own
        // key is in (the last CAP positions, itself included), reading its query through the
        // buffer's stride.
        let (steps, rows) = if ring { (SQ, 1) } else { (1, SQ) };
        let pattern = if ring {
            Pattern::Full
        } else {
            windowed(Pattern::Causal(Alignment::BottomRight), self.tweaks.window)
        };
        for step in 0..steps {
            for t in step * rows..(step + 1) * rows {
                cache.push(buf.k, buf.v, SQ, t);
            }
            let len = cache.len();
            let view = MaskView::structural(pattern, rows, len);
            let scores = Scores {
                // ALiBi distances count from the oldest position, wherever a ring put it.
                key_rotate: cache.oldest_row(),
                reduced: reduced_attention::<T, W>(rows),
                ..Scores::new(hd, &view, alibi, &self.tweaks)
            };
            let dims = Dims {
                ldq: SQ,
                ldkv: CAP,
                ..Dims::new(rows, len, hd, hd)
            };
            let io = self.heads_io(&mut buf.q[step..], &mut out[step..]);
            let work = buf.work.reborrow();
            let w = weights.as_deref_mut().map(|w| (&mut w[step..], SQ * CAP));
            attend_heads(kt, io, cache.storage(), dims, self.heads, &scores, work, w);
        }
        self.project_out(kt, buf.q, SQ, out, buf.pack);
        Ok(())
    }
}

#[cfg(feature = "rayon")]
mod parallel {
    //! The core over threads: projections by output columns, attention by (head, block of
    //! queries), the output projection by output columns. Each task's working memory is
    //! allocated; every task runs the caller's kernel table.

    use std::boxed::Box;
    use std::vec::Vec;

    use rayon::prelude::*;

    use super::{Buffers, Layer, Scores, attend_head};
    use crate::kernels::layout::WEIGHT_TILE;
    use crate::kernels::{Dims, LinearIo, PANEL_ROWS, QueryIo, Table, Work};
    use crate::mask::Additive;
    use crate::positions::{PositionEncoding, PositionError};
    use crate::{Float, Linear, Mask, SMatrix, Weight};

    /// `out[:, j0 .. j0 + n] = x · W[j0 .. j0 + n, :]ᵀ + b[j0 .. j0 + n]` for `s` tokens: the
    /// output columns of one task (contiguous in column-major `out`). `j0` is a multiple of
    /// the weights' 12-feature tiles, so rows `j0 ..` of `W` are the stored values from
    /// `j0 · IN` on, in the same layout.
    fn project_columns<const IN: usize, const OUT: usize, T: Float, W: Weight<T>>(
        kt: &Table<T>,
        lin: &Linear<IN, OUT, T, W>,
        x: &[T],
        s: usize,
        j0: usize,
        out_cols: &mut [T],
        pack: &mut [T],
    ) {
        let n = out_cols.len() / s;
        kt.linear(
            LinearIo::Out { x, out: out_cols },
            s,
            IN,
            &lin.weight_tiles()[j0 * IN..],
            n,
            &lin.bias_slice()[j0..j0 + n],
            lin.scale_values().get(j0..j0 + n).unwrap_or(&[]),
            pack,
        );
    }

    /// Columns per projection task: about `dim / (2 · threads)`, a multiple of the weights'
    /// 12-feature tiles.
    fn column_chunk(dim: usize) -> usize {
        let tasks = 2 * rayon::current_num_threads().max(1);
        dim.div_ceil(tasks).div_ceil(WEIGHT_TILE).max(1) * WEIGHT_TILE
    }

    impl<const DIM: usize, const QD: usize, const KVD: usize, T, W> Layer<'_, DIM, QD, KVD, T, W>
    where
        T: Float + Send + Sync,
        W: Weight<T> + Sync,
    {
        /// [`Layer::forward`] for self-attention over `SEQ` tokens, the work spread over
        /// rayon's threads: the result equals the single-threaded one within rounding (the
        /// same kernels; a block's last rows may take another path, so within 2e-6 rather
        /// than bit for bit).
        pub(crate) fn forward_par<const SEQ: usize, P, A>(
            &self,
            kt: &'static Table<T>,
            x: &SMatrix<T, SEQ, DIM>,
            mask: &Mask<'_, SEQ, SEQ, A>,
            positions: &P,
            buf: Buffers<'_, T>,
            out: &mut SMatrix<T, SEQ, DIM>,
        ) -> Result<(), PositionError>
        where
            P: PositionEncoding<T> + Sync,
            A: Additive<T, SEQ, SEQ> + Sync,
        {
            positions.check(0, SEQ)?;
            let x = x.as_slice();
            let new_pack = || std::vec![T::ZERO; PANEL_ROWS * DIM.max(QD)];

            // Q, K and V by output columns.
            let (qc, kc) = (column_chunk(QD), column_chunk(KVD));
            let q_tasks = buf.q.chunks_mut(qc * SEQ).enumerate();
            let k_tasks = buf.k.chunks_mut(kc * SEQ).enumerate();
            let v_tasks = buf.v.chunks_mut(kc * SEQ).enumerate();
            let mut tasks: Vec<(usize, usize, &mut [T])> = Vec::new();
            tasks.extend(q_tasks.map(|(c, cols)| (0, c * qc, cols)));
            tasks.extend(k_tasks.map(|(c, cols)| (1, c * kc, cols)));
            tasks.extend(v_tasks.map(|(c, cols)| (2, c * kc, cols)));
            tasks
                .into_par_iter()
                .for_each_init(new_pack, |pack, (which, j0, cols)| match which {
                    0 => project_columns(kt, self.q, x, SEQ, j0, cols, pack),
                    1 => project_columns(kt, self.k, x, SEQ, j0, cols, pack),
                    _ => project_columns(kt, self.v, x, SEQ, j0, cols, pack),
                });
            self.prepare((&mut *buf.q, SEQ), (&mut *buf.k, SEQ), positions, 0);

            // Attention by (head, query block): each task copies its queries and writes its
            // own output block; the blocks are then placed into the concatenated heads.
            let hd = QD / self.heads.count;
            let threads = rayon::current_num_threads().max(1);
            let blocks = (2 * threads).div_ceil(self.heads.count).max(1);
            let rows = SEQ.div_ceil(blocks);
            let mut view = mask.view();
            view.pattern = super::windowed(view.pattern, self.tweaks.window);
            let alibi = positions.alibi().or(mask.alibi());
            let scores = Scores {
                reduced: super::reduced_attention::<T, W>(SEQ),
                ..Scores::new(hd, &view, alibi, &self.tweaks)
            };
            let (q, k, v) = (&*buf.q, &*buf.k, &*buf.v);
            let heads = self.heads;
            let pieces: Vec<(usize, usize, Vec<T>)> = (0..heads.count)
                .flat_map(|h| (0..SEQ).step_by(rows).map(move |qa| (h, qa)))
                .collect::<Vec<_>>()
                .into_par_iter()
                .map_init(
                    || -> Box<Work<T, QD>> { bytemuck::zeroed_box() },
                    |work, (h, qa)| {
                        let n = rows.min(SEQ - qa);
                        let mut q_block = std::vec![T::ZERO; n * hd];
                        for d in 0..hd {
                            let col = &q[(h * hd + d) * SEQ..(h * hd + d + 1) * SEQ];
                            q_block[d * n..(d + 1) * n].copy_from_slice(&col[qa..qa + n]);
                        }
                        let g = heads.kv_head(h);
                        let kv = (&k[g * hd * SEQ..], &v[g * hd * SEQ..]);
                        let block_view = scores.mask.rows(qa, n);
                        let block = Scores {
                            mask: &block_view,
                            ..scores
                        };
                        let dims = Dims::new(n, SEQ, hd, hd);
                        let io = QueryIo::InPlace(&mut q_block);
                        let ws = work.parts();
                        attend_head(kt, io, kv, dims, (h, heads.count), &block, ws, None);
                        (h, qa, q_block)
                    },
                )
                .collect();
            // Every query of every head has been copied out: the query buffer takes the heads
            // (or, without an output projection, the output does).
            let concat: &mut [T] = match self.out {
                Some(_) => buf.q,
                None => out.as_mut_slice(),
            };
            for (h, qa, o) in pieces {
                let n = o.len() / hd;
                for d in 0..hd {
                    let at = (h * hd + d) * SEQ + qa;
                    concat[at..at + n].copy_from_slice(&o[d * n..(d + 1) * n]);
                }
            }

            // The output projection by output columns (the heads are in the query buffer).
            if let Some(o) = self.out {
                let heads: &[T] = buf.q;
                let chunk = column_chunk(DIM);
                out.as_mut_slice()
                    .par_chunks_mut(chunk * SEQ)
                    .enumerate()
                    .for_each_init(new_pack, |pack, (c, cols)| {
                        project_columns(kt, o, heads, SEQ, c * chunk, cols, pack);
                    });
            }
            Ok(())
        }
    }
}
