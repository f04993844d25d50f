//! A guided tour of attention ("Attention Is All You Need", Vaswani et al. 2017, §3.2).
//!
//! Run with `cargo run --example demo`. Every number comes from a seeded generator, so the
//! output is the same on every run.
//!
//! 1. What queries, keys and values are.
//! 2. One head, `SelfAttention<3, 4>`: input, output and the 3 × 3 attention weights, checked
//!    against the formula computed by hand; then the same input as a batch of one sequence,
//!    with the shapes PyTorch would give.
//! 3. Two heads, `MultiHead<3, 4, 2>`: output and one 3 × 3 weight matrix per head, and again
//!    the shapes of a batch of one.
//! 4. A sentence through `MultiHead<7, 16, 2>`, with and without a causal mask, each head's
//!    weights shown as a table and as a heatmap.

use nalgebra::SMatrix;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use static_attention::{
    Alignment, AttentionWeights, Bias, Mask, MultiHead, Scratch, SelfAttention, positions,
};

/// Seed for the toy input and every layer's weights.
const SEED: u64 = 2017;

/// The sentence of part 4, one token per word.
const SENTENCE: [&str; 7] = ["the", "cat", "sat", "on", "the", "mat", "."];
/// Number of tokens (the `SEQ` of part 4).
const N: usize = SENTENCE.len();
/// Model width `d_model` of part 4.
const DIM: usize = 16;
/// Number of heads of part 4 (`d_k = DIM / HEADS = 8`).
const HEADS: usize = 2;

fn main() {
    explain_qkv();

    let mut rng = SmallRng::seed_from_u64(SEED);
    let x = random_matrix::<3, 4>(&mut rng, 1.0);
    single_head(&x, &mut rng);
    multi_head(&x, &mut rng);
    sentence(&mut rng);
}

/// Part 1: the words behind the formula.
fn explain_qkv() {
    println!("== 1. Queries, keys and values ==");
    println!("Each token (a row of X) is projected three ways:");
    println!("  query q = x W_Q : what this token is looking for");
    println!("  key   k = x W_K : what this token offers, to be found by other queries");
    println!("  value v = x W_V : what this token passes on when it is attended to");
    println!("Token i scores key j by q_i·k_j; a softmax over j turns scores into weights:");
    println!("  weights = softmax(Q Kᵀ / √d_k)   (each row sums to 1)     [paper eq. 1]");
    println!("  output  = weights · V            (row i = weighted average of values)");
    println!();
}

/// Part 2: one head. `SelfAttention<SEQ, DIM>` has no output projection, so its output is
/// exactly `softmax(Q Kᵀ / √d_k) V` with `d_k = DIM`.
fn single_head(x: &SMatrix<f32, 3, 4>, rng: &mut SmallRng) {
    println!("== 2. One head: SelfAttention<3, 4>, d_k = 4, scale 1/√4 ==");
    let head = SelfAttention::<3, 4>::new(rng, Bias::Present);
    let (out, weights) = head.forward_with_weights(x, &Mask::none());

    print_matrix("input X", x);
    print_matrix("output = weights · V", &out);
    print_matrix("weights = softmax(Q Kᵀ / √d_k)", &weights);

    // The same numbers by hand, straight from eq. 1: Q = X W_Qᵀ + b (PyTorch layout), ...
    let q = head.q_proj().forward(x);
    let k = head.k_proj().forward(x);
    let v = head.v_proj().forward(x);
    let d_k = 4.0_f32;
    let by_hand = softmax_rows(&(q * k.transpose() / d_k.sqrt()));
    println!(
        "check by hand: max |Δweights| = {:.1e}, max |Δoutput| = {:.1e}",
        (by_hand - weights).amax(),
        (by_hand * v - out).amax()
    );

    // PyTorch works on batches: `(batch, seq, dim)` with `batch_first=True`. The batch API
    // takes a slice of sequences and gives a slice of outputs and of weights, one per sequence.
    let xs = [*x];
    let mut outs = [SMatrix::zeros(); 1];
    let mut batch_weights = [SMatrix::zeros(); 1];
    head.forward_batch_into(
        &xs,
        &[Mask::none()],
        &mut Scratch::new(),
        &mut outs,
        Some(&mut batch_weights),
    )
    .expect("one input, one output, one weights matrix");
    assert_eq!((outs[0], batch_weights[0]), (out, weights));
    print_batch_shapes(
        [
            batch_shape(&xs),
            batch_shape(&outs),
            batch_shape(&batch_weights),
        ],
        "batch, queries, keys",
        "nn.MultiheadAttention(4, 1, batch_first=True) with need_weights=True",
    );
    println!();
}

/// Part 3: two heads. Each head attends in its own `d_k = DIM / HEADS`-wide slice of Q, K
/// and V; the heads' outputs are concatenated and mixed by `W_O`:
/// `MultiHead(X) = Concat(head_1, head_2) W_O`  [paper §3.2.2].
fn multi_head(x: &SMatrix<f32, 3, 4>, rng: &mut SmallRng) {
    let d_k = MultiHead::<3, 4, 2>::HEAD_DIM;
    println!("== 3. Two heads: MultiHead<3, 4, 2>, d_k = 4 / 2 = {d_k}, scale 1/√{d_k} ==");
    let layer = MultiHead::<3, 4, 2>::new(rng, Bias::Present);
    let (out, weights) = layer.forward_with_weights(x, &Mask::none());

    print_matrix("output = Concat(head_0, head_1) W_O", &out);
    println!("weights (2 × 3 × 3), one softmax(Q_h K_hᵀ / √{d_k}) per head:");
    for (h, w) in weights.heads().iter().enumerate() {
        print_matrix(&format!("  head {h}"), w);
    }

    // The same input as a batch of one: the weights keep one matrix per head.
    let xs = [*x];
    let mut outs = [SMatrix::zeros(); 1];
    let mut batch_weights = [AttentionWeights::zeros()];
    layer
        .forward_batch_into(
            &xs,
            &[Mask::none()],
            &mut Scratch::new(),
            &mut outs,
            Some(&mut batch_weights),
        )
        .expect("one input, one output, one set of weights");
    assert_eq!(outs[0], out);
    assert_eq!(batch_weights[0], weights);
    print_batch_shapes(
        [
            batch_shape(&xs),
            batch_shape(&outs),
            heads_shape(&batch_weights),
        ],
        "batch, heads, queries, keys",
        "nn.MultiheadAttention(4, 2, batch_first=True) with need_weights=True, \
         average_attn_weights=False",
    );
    println!(
        "(PyTorch's default, average_attn_weights=True, is the mean over heads: weights.average())"
    );
    println!();
}

/// Part 4: a sentence. Token embeddings plus position encodings go through a two-head layer,
/// once with a causal mask (as in a decoder) and once without (as in an encoder).
fn sentence(rng: &mut SmallRng) {
    println!(
        "== 4. \"{}\" through MultiHead<{N}, {DIM}, {HEADS}> ==",
        SENTENCE.join(" ")
    );
    println!("X = embedding(word) + PE(position), {N} × {DIM}; the layer is untrained, so its");
    println!("attention is close to uniform; training is what makes heads sharp and specific.");
    let layer = MultiHead::<N, DIM, HEADS>::new(rng, Bias::Present);
    let x = embed(&SENTENCE);

    let causal = Mask::causal(Alignment::TopLeft);
    let (_, weights) = layer.forward_with_weights(&x, &causal);
    for h in 0..HEADS {
        println!();
        println!("head {h}, causal mask (query i sees keys j ≤ i; · = masked):");
        print_table_and_heatmap(weights.head(h), &causal);
    }

    let none = Mask::none();
    let (_, weights) = layer.forward_with_weights(&x, &none);
    for h in 0..HEADS {
        println!();
        println!("head {h}, no mask (every query sees every key):");
        print_table_and_heatmap(weights.head(h), &none);
    }
    println!();
    println!("The last row is the same with and without the mask: \".\" sees every key anyway.");
    // PyTorch's `average_attn_weights=True` returns the mean over heads.
    let avg: Vec<String> = weights
        .average()
        .row(N - 1)
        .iter()
        .map(|w| format!("{w:.2}"))
        .collect();
    println!(
        "Mean over heads (weights.average()), row \".\": [{}]",
        avg.join(", ")
    );
    print_legend();
}

/// `R × C` uniform samples in `[-bound, bound)`, row by row.
fn random_matrix<const R: usize, const C: usize>(
    rng: &mut SmallRng,
    bound: f32,
) -> SMatrix<f32, R, C> {
    SMatrix::from_fn(|_, _| rng.random_range(-bound..bound))
}

/// Row-wise softmax: `w_ij = exp(s_ij − max_j s_ij) / Σ_j exp(s_ij − max_j s_ij)`.
fn softmax_rows<const R: usize, const C: usize>(s: &SMatrix<f32, R, C>) -> SMatrix<f32, R, C> {
    let mut w = *s;
    for mut row in w.row_iter_mut() {
        let max = row.max();
        row.apply(|e| *e = (*e - max).exp());
        let sum = row.sum();
        row /= sum;
    }
    w
}

/// Embeds tokens: a random vector per distinct word (seeded by the word, so both "the" get
/// the same one) plus the sinusoidal position encoding of §3.5:
/// `PE(pos, 2i) = sin(pos / 10000^(2i/DIM))`, `PE(pos, 2i+1) = cos(pos / 10000^(2i/DIM))`.
fn embed<const S: usize, const D: usize>(tokens: &[&str; S]) -> SMatrix<f32, S, D> {
    let mut x = positions::sinusoidal::<S, D, f32>();
    for (pos, word) in tokens.iter().enumerate() {
        let mut word_rng = SmallRng::seed_from_u64(fnv1a(word));
        for f in 0..D {
            x[(pos, f)] += word_rng.random_range(-1.0..1.0);
        }
    }
    x
}

/// FNV-1a hash: a stable seed per word (unlike `std`'s hasher, fixed across Rust versions).
fn fnv1a(word: &str) -> u64 {
    word.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Prints a matrix under a label that states its shape, taken from the type.
fn print_matrix<const R: usize, const C: usize>(label: &str, m: &SMatrix<f32, R, C>) {
    println!("{label} ({R} × {C}):");
    for row in m.row_iter() {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:7.3}")).collect();
        println!("  [{} ]", cells.join(""));
    }
}

/// Prints the shapes of a batch's input, output and weights, and the PyTorch module and
/// options whose results have the same shapes.
fn print_batch_shapes([input, output, weights]: [String; 3], weight_axes: &str, pytorch: &str) {
    println!("as a batch of one sequence (forward_batch_into): the same numbers, PyTorch's shapes");
    println!("  input   {input:12} (batch, tokens, features)");
    println!("  output  {output:12} (batch, queries, features)");
    println!("  weights {weights:12} ({weight_axes})");
    println!("these match {pytorch}");
}

/// The shape of a batch of `R × C` matrices in PyTorch's notation, `[batch, R, C]`: the
/// batch's length and the matrices' dimensions, which are part of their type.
fn batch_shape<const R: usize, const C: usize>(batch: &[SMatrix<f32, R, C>]) -> String {
    format!("[{}, {R}, {C}]", batch.len())
}

/// The shape of a batch of per-head attention weights, `[batch, heads, queries, keys]`.
fn heads_shape<const SQ: usize, const SKV: usize, const H: usize>(
    batch: &[AttentionWeights<SQ, SKV, H>],
) -> String {
    format!("[{}, {H}, {SQ}, {SKV}]", batch.len())
}

/// One head's weights as a table (left) and a heatmap (right), side by side.
fn print_table_and_heatmap(w: &SMatrix<f32, N, N>, mask: &Mask<'_, N, N>) {
    let table = table_lines(w, mask);
    let heatmap = heatmap_lines(w, mask);
    for (t, h) in table.iter().zip(&heatmap) {
        println!("  {t}    {h}");
    }
}

/// The weights with 2 decimals: row = query token, column = key token, `·` = masked key.
fn table_lines(w: &SMatrix<f32, N, N>, mask: &Mask<'_, N, N>) -> Vec<String> {
    let header: String = SENTENCE.iter().map(|k| format!("{k:>5}")).collect();
    let mut lines = vec![format!("{:>4} │{header}", "q\\k")];
    for (i, query) in SENTENCE.iter().enumerate() {
        let cells: String = (0..N)
            .map(|j| {
                if mask.allows(i, j) {
                    format!("{:5.2}", w[(i, j)])
                } else {
                    format!("{:>5}", "·")
                }
            })
            .collect();
        lines.push(format!("{query:>4} │{cells}"));
    }
    lines
}

/// The weights as shades, two characters per cell so cells look roughly square.
fn heatmap_lines(w: &SMatrix<f32, N, N>, mask: &Mask<'_, N, N>) -> Vec<String> {
    let header: String = SENTENCE
        .iter()
        .map(|k| format!("{:2}", first_char(k)))
        .collect();
    let mut lines = vec![format!("│{header}│")];
    for i in 0..N {
        let cells: String = (0..N)
            .map(|j| {
                if mask.allows(i, j) {
                    shade(w[(i, j)]).to_string().repeat(2)
                } else {
                    "· ".to_string()
                }
            })
            .collect();
        lines.push(format!("│{cells}│"));
    }
    lines
}

/// Shade thresholds: a weight below `SHADES[k].0` is drawn with `SHADES[k].1`. They grow
/// roughly geometrically so that near-uniform rows (≈ 1/7) still show their differences.
const SHADES: [(f32, char); 5] = [
    (0.05, ' '),
    (0.12, '░'),
    (0.20, '▒'),
    (0.40, '▓'),
    (f32::INFINITY, '█'),
];

fn shade(w: f32) -> char {
    SHADES
        .iter()
        .find(|(limit, _)| w < *limit)
        .map_or('█', |s| s.1)
}

fn first_char(word: &str) -> char {
    word.chars().next().unwrap_or(' ')
}

fn print_legend() {
    let mut lower = 0.0;
    let mut parts = Vec::new();
    for (limit, c) in SHADES {
        let range = if limit.is_finite() {
            format!("{lower:.2}–{limit:.2}")
        } else {
            format!("≥ {lower:.2}")
        };
        parts.push(format!("'{c}{c}' {range}"));
        lower = limit;
    }
    println!("legend: {}, '· ' masked", parts.join(", "));
    println!("(heatmap columns are the keys' first letters; rows are the queries in order)");
}
