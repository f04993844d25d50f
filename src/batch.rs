//! Many sequences per call (PyTorch's batch dimension), heap-free, and with the `rayon`
//! feature, the same spread over threads.

use core::fmt;

use nalgebra::SMatrix;

use crate::mask::Additive;
use crate::{Float, Mask, MultiHead, Scratch, SelfAttention, Weight};

/// Why a batched call did not run: the lengths of its slices do not fit together. A batch of
/// `n` inputs needs `n` outputs and either one mask (shared) or `n` (one per sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// Inputs given.
    pub inputs: usize,
    /// Outputs given.
    pub outputs: usize,
    /// Masks given.
    pub masks: usize,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a batch of {} inputs needs {} outputs and 1 or {} masks, got {} outputs and {} masks",
            self.inputs, self.inputs, self.inputs, self.outputs, self.masks
        )
    }
}

impl core::error::Error for BatchError {}

/// Checks the lengths of a batch; nothing runs when they do not fit.
pub(crate) fn check(inputs: usize, outputs: usize, masks: usize) -> Result<(), BatchError> {
    let masks_fit = masks == 1 || masks == inputs;
    if outputs == inputs && masks_fit {
        Ok(())
    } else {
        Err(BatchError {
            inputs,
            outputs,
            masks,
        })
    }
}

/// The mask of sequence `b`: the only one, or the `b`-th.
pub(crate) fn mask_of<T>(masks: &[T], b: usize) -> &T {
    if masks.len() == 1 {
        &masks[0]
    } else {
        &masks[b]
    }
}

impl<const SEQ: usize, const DIM: usize, const HEADS: usize, T: Float, W: Weight<T>>
    MultiHead<SEQ, DIM, HEADS, T, W>
{
    /// Self-attention over a batch of sequences, `xs[b] → outs[b]`, one after the other
    /// through one caller-owned [`Scratch`]: nothing is allocated. `masks` holds one mask for
    /// the whole batch or one per sequence (per-sequence key padding, say).
    ///
    /// # Errors
    ///
    /// [`BatchError`] if `outs` is not as long as `xs`, or `masks` is neither 1 nor as long;
    /// nothing is written then.
    ///
    /// ```
    /// use static_attention::{Mask, MultiHead, SMatrix, Scratch};
    ///
    /// let layer = MultiHead::<4, 8, 2>::from_seed(1);
    /// let xs = [SMatrix::<f32, 4, 8>::repeat(0.5), SMatrix::repeat(-0.5)];
    /// let mut outs = [SMatrix::zeros(); 2];
    /// let mut scratch = Scratch::new();
    /// layer.forward_batch_into(&xs, &[Mask::none()], &mut scratch, &mut outs)?;
    /// assert_eq!(outs[1], layer.forward(&xs[1], &Mask::none()));
    /// # Ok::<(), static_attention::BatchError>(())
    /// ```
    pub fn forward_batch_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        xs: &[SMatrix<T, SEQ, DIM>],
        masks: &[Mask<'_, SEQ, SEQ, A>],
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        outs: &mut [SMatrix<T, SEQ, DIM>],
    ) -> Result<(), BatchError> {
        check(xs.len(), outs.len(), masks.len())?;
        for (b, (x, out)) in xs.iter().zip(outs.iter_mut()).enumerate() {
            self.forward_into(x, mask_of(masks, b), scratch, out);
        }
        Ok(())
    }
}

impl<const SEQ: usize, const DIM: usize, T: Float, W: Weight<T>> SelfAttention<SEQ, DIM, T, W> {
    /// Self-attention over a batch of sequences through one caller-owned [`Scratch`] (see
    /// [`MultiHead::forward_batch_into`]).
    ///
    /// # Errors
    ///
    /// [`BatchError`] if the lengths do not fit; nothing is written then.
    pub fn forward_batch_into<A: Additive<T, SEQ, SEQ>>(
        &self,
        xs: &[SMatrix<T, SEQ, DIM>],
        masks: &[Mask<'_, SEQ, SEQ, A>],
        scratch: &mut Scratch<SEQ, SEQ, DIM, T>,
        outs: &mut [SMatrix<T, SEQ, DIM>],
    ) -> Result<(), BatchError> {
        check(xs.len(), outs.len(), masks.len())?;
        for (b, (x, out)) in xs.iter().zip(outs.iter_mut()).enumerate() {
            self.forward_into(x, mask_of(masks, b), scratch, out);
        }
        Ok(())
    }
}
