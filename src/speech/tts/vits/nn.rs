//! The building blocks of the encoder and the duration predictor on candle: 1-D convolutions
//! with "same" padding and layer norm over the channel axis, on `[1, channels, time]` tensors.
use candle_core::{Tensor, D};

use super::{bad, VitsError, Weights};

/// A `Conv1d` whose kernel and channel counts come from its weight `[out, in/groups, k]`.
pub(crate) struct Conv1d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    dilation: usize,
    groups: usize,
}

impl Conv1d {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` if present) with "same" padding for the
    /// given dilation; `depthwise` makes one group per channel.
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        dilation: usize,
        depthwise: bool,
    ) -> Result<Conv1d, VitsError> {
        let name = format!("{prefix}.weight");
        let dims = w.dims(&name, 3)?;
        let (out, kernel) = (dims[0], dims[2]);
        if kernel % 2 == 0 {
            return Err(bad(
                &name,
                format!("even kernel {kernel} has no centred padding"),
            ));
        }
        let groups = if depthwise {
            if dims[1] != 1 {
                return Err(bad(
                    &name,
                    "a depthwise kernel has one input channel per group",
                ));
            }
            out
        } else {
            1
        };
        let bias_name = format!("{prefix}.bias");
        let bias = if w.has(&bias_name) {
            Some(w.get(&bias_name)?.reshape((1, out, 1))?)
        } else {
            None
        };
        Ok(Conv1d {
            weight: w.get(&name)?,
            bias,
            padding: (kernel - 1) / 2 * dilation,
            dilation,
            groups,
        })
    }

    pub(crate) fn in_channels(&self) -> usize {
        self.weight.dims()[1] * self.groups
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, VitsError> {
        let y = if self.groups > 1 {
            depthwise(x, &self.weight, self.padding, self.dilation)?
        } else {
            x.conv1d(&self.weight, self.padding, 1, self.dilation, 1)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// A depthwise convolution as a sum of shifted, per-channel scaled copies of the input
/// (the kernels here are 3 taps wide, so this beats one tiny convolution per channel).
fn depthwise(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    dilation: usize,
) -> Result<Tensor, VitsError> {
    let (_, channels, len) = x.dims3()?;
    let kernel = weight.dims()[2];
    let padded = x.pad_with_zeros(D::Minus1, padding, padding)?;
    let mut out: Option<Tensor> = None;
    for k in 0..kernel {
        let tap = weight.narrow(2, k, 1)?.reshape((1, channels, 1))?;
        let shifted = padded.narrow(2, k * dilation, len)?;
        let term = shifted.broadcast_mul(&tap)?;
        out = Some(match out {
            Some(o) => (o + term)?,
            None => term,
        });
    }
    out.ok_or_else(|| bad("depthwise kernel", "has no taps"))
}

/// Layer norm over the channel axis of `[1, channels, time]` (VITS's `LayerNorm`, eps 1e-5).
pub(crate) struct ChannelNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl ChannelNorm {
    pub(crate) fn load(w: &Weights, prefix: &str) -> Result<ChannelNorm, VitsError> {
        Ok(ChannelNorm {
            gamma: w.get(&format!("{prefix}.gamma"))?,
            beta: w.get(&format!("{prefix}.beta"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, VitsError> {
        let t = x.transpose(1, 2)?.contiguous()?;
        let y = candle_nn::ops::layer_norm(&t, &self.gamma, &self.beta, 1e-5)?;
        Ok(y.transpose(1, 2)?.contiguous()?)
    }
}
