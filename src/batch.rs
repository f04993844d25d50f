//! Many sequences per call (PyTorch's batch dimension): the lengths' check shared by every
//! layer type's `forward_batch_into`, and its error.

use core::fmt;

/// Why a batched call did not run: the lengths of its slices do not fit together. A batch of
/// `n` inputs needs `n` outputs, either one mask (shared) or `n` (one per sequence), and, when
/// weights are asked for, `n` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// Inputs given.
    pub inputs: usize,
    /// Outputs given.
    pub outputs: usize,
    /// Masks given.
    pub masks: usize,
    /// Attention weights given (`None` when not asked for).
    pub weights: Option<usize>,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.inputs;
        write!(
            f,
            "a batch of {n} inputs needs {n} outputs and 1 or {n} masks, got {} outputs and {} \
             masks",
            self.outputs, self.masks
        )?;
        match self.weights {
            Some(w) if w != n => write!(f, ", and {w} attention weights for {n} inputs"),
            _ => Ok(()),
        }
    }
}

impl core::error::Error for BatchError {}

/// Checks the lengths of a batch; nothing runs when they do not fit.
pub(crate) fn check(
    inputs: usize,
    outputs: usize,
    masks: usize,
    weights: Option<usize>,
) -> Result<(), BatchError> {
    let masks_fit = masks == 1 || masks == inputs;
    if outputs == inputs && masks_fit && weights.is_none_or(|w| w == inputs) {
        Ok(())
    } else {
        Err(BatchError {
            inputs,
            outputs,
            masks,
            weights,
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
