//! The residual coupling flow (mean-only affine couplings over WaveNet-style stacks), reversed:
//! it maps a prior sample to the decoder's latent.
use candle_core::{Device, Tensor};

use super::nn::Conv1d;
use super::{bad, VitsError, Weights};

/// Dilation growth of the WaveNet layers across depth (Piper's `dilation_rate` = 1).
const DILATION_RATE: usize = 1;

struct WaveNet {
    in_layers: Vec<Conv1d>,
    res_skip: Vec<Conv1d>,
    hidden: usize,
}

impl WaveNet {
    fn load(w: &Weights, prefix: &str) -> Result<WaveNet, VitsError> {
        let count = w.count(&format!("{prefix}.in_layers."), ".weight");
        if count == 0 {
            return Err(VitsError::MissingTensor(format!(
                "{prefix}.in_layers.0.weight"
            )));
        }
        let mut in_layers = Vec::with_capacity(count);
        let mut res_skip = Vec::with_capacity(count);
        let mut dilation = 1;
        for i in 0..count {
            in_layers.push(Conv1d::load(
                w,
                &format!("{prefix}.in_layers.{i}"),
                dilation,
                false,
            )?);
            res_skip.push(Conv1d::load(
                w,
                &format!("{prefix}.res_skip_layers.{i}"),
                1,
                false,
            )?);
            dilation *= DILATION_RATE;
        }
        let hidden = in_layers[0].in_channels();
        if in_layers.iter().any(|c| c.out_channels() != 2 * hidden) {
            return Err(bad(
                &format!("{prefix}.in_layers.0.weight"),
                "expected 2·hidden outputs",
            ));
        }
        Ok(WaveNet {
            in_layers,
            res_skip,
            hidden,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, VitsError> {
        let mut x = x.clone();
        let mut output: Option<Tensor> = None;
        let last = self.in_layers.len() - 1;
        for (i, (in_layer, res_skip)) in self.in_layers.iter().zip(&self.res_skip).enumerate() {
            let a = in_layer.forward(&x)?;
            let acts = (a.narrow(1, 0, self.hidden)?.tanh()?
                * candle_nn::ops::sigmoid(&a.narrow(1, self.hidden, self.hidden)?)?)?;
            let rs = res_skip.forward(&acts)?;
            let skip = if i < last {
                x = (x + rs.narrow(1, 0, self.hidden)?)?;
                rs.narrow(1, self.hidden, self.hidden)?
            } else {
                rs
            };
            output = Some(match output {
                Some(o) => (o + skip)?,
                None => skip,
            });
        }
        output.ok_or_else(|| bad("WaveNet", "has no layers"))
    }
}

struct Coupling {
    pre: Conv1d,
    enc: WaveNet,
    post: Conv1d,
    half: usize,
}

impl Coupling {
    fn reverse(&self, x: &Tensor) -> Result<Tensor, VitsError> {
        let x0 = x.narrow(1, 0, self.half)?;
        let x1 = x.narrow(1, self.half, self.half)?;
        let h = self.enc.forward(&self.pre.forward(&x0)?)?;
        let m = self.post.forward(&h)?;
        Ok(Tensor::cat(&[&x0, &(x1 - m)?], 1)?)
    }
}

pub(crate) struct CouplingFlow {
    /// In forward order; `Flip` follows each.
    layers: Vec<Coupling>,
}

impl CouplingFlow {
    pub(crate) fn load(w: &Weights) -> Result<CouplingFlow, VitsError> {
        // [Coupling, Flip] × n: the couplings sit at the even indices.
        let mut layers = Vec::new();
        let mut i = 0;
        while w.has(&format!("flow.flows.{i}.pre.weight")) {
            let p = format!("flow.flows.{i}");
            let pre = Conv1d::load(w, &format!("{p}.pre"), 1, false)?;
            let post = Conv1d::load(w, &format!("{p}.post"), 1, false)?;
            let half = pre.in_channels();
            if post.out_channels() != half {
                return Err(bad(
                    &format!("{p}.post.weight"),
                    "only mean-only couplings (post: half the channels) are supported",
                ));
            }
            layers.push(Coupling {
                enc: WaveNet::load(w, &format!("{p}.enc"))?,
                pre,
                post,
                half,
            });
            i += 2;
        }
        if layers.is_empty() {
            return Err(VitsError::MissingTensor("flow.flows.0.pre.weight".into()));
        }
        Ok(CouplingFlow { layers })
    }

    pub(crate) fn reverse(&self, z: &Tensor) -> Result<Tensor, VitsError> {
        let channels = z.dim(1)?;
        let flip: Vec<u32> = (0..channels as u32).rev().collect();
        let flip = Tensor::new(flip.as_slice(), &Device::Cpu)?;
        let mut x = z.clone();
        for layer in self.layers.iter().rev() {
            x = x.index_select(&flip, 1)?;
            x = layer.reverse(&x)?;
        }
        Ok(x)
    }
}
