//! The readable reference: attention written as the paper writes it, one equation per line,
//! with nalgebra's matrix products. It builds every intermediate matrix, so it is slow and
//! allocates (it needs `std`); it is the oracle the fast paths are tested against, and the place
//! to start reading.
//!
//! Vaswani et al. 2017, "Attention Is All You Need":
//!
//! ```text
//! Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V
//! head_i             = Attention(X W_iQ, X W_iK, X W_iV)
//! MultiHead(X)       = Concat(head_1, …, head_h) W_O
//! ```

use std::vec::Vec;

use nalgebra::{DMatrix, SMatrix};

use crate::mask::Additive;
use crate::{Float, Mask, MultiHead, default_scale};

/// `softmax` over each row: `w_ij = e^(s_ij − max_j s_ij) / Σ_j e^(s_ij − max_j s_ij)`.
///
/// Entries of `−∞` (masked keys) get weight 0; a row of only `−∞` becomes all zeros (rule 7 of
/// [`crate::semantics`]) instead of the `0/0 = NaN` the formula would give.
#[must_use]
pub fn softmax_rows<T: Float>(scores: &DMatrix<T>) -> DMatrix<T> {
    let mut w = scores.clone();
    for mut row in w.row_iter_mut() {
        if row.iter().any(|s| s.is_nan_()) {
            // A NaN score makes the whole row NaN, as in PyTorch.
            row.fill(T::NAN);
            continue;
        }
        let max = row.iter().fold(T::NEG_INFINITY, |m, &s| m.max_(s));
        if max == T::NEG_INFINITY {
            row.fill(T::ZERO);
            continue;
        }
        row.apply(|s| {
            *s = if *s == T::NEG_INFINITY {
                T::ZERO
            } else {
                (*s - max).exp_()
            }
        });
        let sum = row.sum();
        row /= sum;
    }
    w
}

/// `Attention(Q, K, V) = softmax(Q Kᵀ · scale + M) V`, returning the output (`SQ × DV`) and the
/// weights (`SQ × SKV`). `scale` defaults to `1/√D`. `M` includes an ALiBi part as one head of
/// one ([`Mask::head_entry`]).
#[must_use]
pub fn attention<
    const SQ: usize,
    const SKV: usize,
    const D: usize,
    const DV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    q: &SMatrix<T, SQ, D>,
    k: &SMatrix<T, SKV, D>,
    v: &SMatrix<T, SKV, DV>,
    mask: &Mask<'_, SQ, SKV, A>,
    scale: Option<T>,
) -> (SMatrix<T, SQ, DV>, SMatrix<T, SQ, SKV>) {
    let scale = scale.unwrap_or_else(|| default_scale(D));
    let (out, w) = attention_dyn(
        &DMatrix::from_column_slice(SQ, D, q.as_slice()),
        &DMatrix::from_column_slice(SKV, D, k.as_slice()),
        &DMatrix::from_column_slice(SKV, DV, v.as_slice()),
        |i, j| mask.head_entry(i, j, 0, 1),
        scale,
    );
    (
        SMatrix::from_column_slice(out.as_slice()),
        SMatrix::from_column_slice(w.as_slice()),
    )
}

/// The same on dynamically sized matrices, with the mask as a function `(i, j) → Option<bias>`
/// (`None` = masked).
fn attention_dyn<T: Float>(
    q: &DMatrix<T>,
    k: &DMatrix<T>,
    v: &DMatrix<T>,
    mask: impl Fn(usize, usize) -> Option<T>,
    scale: T,
) -> (DMatrix<T>, DMatrix<T>) {
    // S = Q Kᵀ · scale + M   (a masked entry is −∞)
    let mut scores = q * k.transpose() * scale;
    for i in 0..scores.nrows() {
        for j in 0..scores.ncols() {
            scores[(i, j)] = match mask(i, j) {
                Some(m) => scores[(i, j)] + m,
                None => T::NEG_INFINITY,
            };
        }
    }
    // P = softmax(S)
    let weights = softmax_rows(&scores);
    // O = P V, summing only over keys the mask allows, so a masked key's values (even NaN)
    // are never multiplied, not even by zero. (A row with a NaN score has NaN weights.)
    let mut out = DMatrix::zeros(q.nrows(), v.ncols());
    for i in 0..q.nrows() {
        for j in 0..k.nrows() {
            if mask(i, j).is_some() {
                let contribution = v.row(j) * weights[(i, j)];
                let mut row = out.row_mut(i);
                row += contribution;
            }
        }
    }
    (out, weights)
}

/// `MultiHead(query, key, value) = Concat(head_1, …, head_h) W_Oᵀ + b_O` with
/// `head_h = Attention(query W_hQᵀ + b, key W_hKᵀ + b, value W_hVᵀ + b)`, returning the output
/// (`SQ × DIM`) and each head's weights (`SQ × SKV`).
#[must_use]
pub fn multi_head<
    const SEQ: usize,
    const DIM: usize,
    const HEADS: usize,
    const SQ: usize,
    const SKV: usize,
    T: Float,
    A: Additive<T, SQ, SKV>,
>(
    layer: &MultiHead<SEQ, DIM, HEADS, T>,
    query: &SMatrix<T, SQ, DIM>,
    key: &SMatrix<T, SKV, DIM>,
    value: &SMatrix<T, SKV, DIM>,
    mask: &Mask<'_, SQ, SKV, A>,
) -> (SMatrix<T, SQ, DIM>, Vec<SMatrix<T, SQ, SKV>>) {
    let d_k = DIM / HEADS;
    let project = |x: &DMatrix<T>, l: &crate::Linear<DIM, DIM, T>| {
        let w = DMatrix::from_fn(DIM, DIM, |n, p| l.weight_at(n, p));
        let b = DMatrix::from_column_slice(1, DIM, l.bias_or_zero().as_slice());
        let mut y = x * w.transpose();
        for mut row in y.row_iter_mut() {
            row += &b;
        }
        y
    };
    let dyn_of = |m: &[T], rows| DMatrix::from_column_slice(rows, DIM, m);
    let q = project(&dyn_of(query.as_slice(), SQ), layer.q_proj());
    let k = project(&dyn_of(key.as_slice(), SKV), layer.k_proj());
    let v = project(&dyn_of(value.as_slice(), SKV), layer.v_proj());

    let mut concat = DMatrix::zeros(SQ, DIM);
    let mut weights = Vec::with_capacity(HEADS);
    for h in 0..HEADS {
        let cols = h * d_k..(h + 1) * d_k;
        let (head, w) = attention_dyn(
            &q.columns(cols.start, d_k).into_owned(),
            &k.columns(cols.start, d_k).into_owned(),
            &v.columns(cols.start, d_k).into_owned(),
            |i, j| mask.head_entry(i, j, h, HEADS),
            default_scale(d_k),
        );
        concat.columns_mut(cols.start, d_k).copy_from(&head);
        weights.push(SMatrix::from_column_slice(w.as_slice()));
    }
    let out = project(&concat, layer.out_proj());
    (SMatrix::from_column_slice(out.as_slice()), weights)
}
