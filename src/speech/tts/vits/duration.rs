//! The stochastic duration predictor, run in reverse: noise through the flows (mirrored
//! element-wise affine and `ConvFlow`s with rational-quadratic splines) conditioned on the
//! text encoder's output gives log-durations.
use candle_core::{Device, Tensor};

use super::nn::{ChannelNorm, Conv1d};
use super::spline;
use super::{bad, Gaussian, VitsError, Weights};

/// `ConvFlow`'s spline domain `[-5, 5]` (VITS's default; not stored in the weights).
const TAIL_BOUND: f64 = 5.0;

/// Dilated depthwise-separable convolutions with GELU, residual.
struct DdsConv {
    layers: Vec<(Conv1d, ChannelNorm, Conv1d, ChannelNorm)>,
}

impl DdsConv {
    fn load(w: &Weights, prefix: &str) -> Result<DdsConv, VitsError> {
        let count = w.count(&format!("{prefix}.convs_sep."), ".weight");
        if count == 0 {
            return Err(VitsError::MissingTensor(format!(
                "{prefix}.convs_sep.0.weight"
            )));
        }
        let kernel = w.dims(&format!("{prefix}.convs_sep.0.weight"), 3)?[2];
        let mut layers = Vec::with_capacity(count);
        let mut dilation = 1;
        for i in 0..count {
            layers.push((
                Conv1d::load(w, &format!("{prefix}.convs_sep.{i}"), dilation, true)?,
                ChannelNorm::load(w, &format!("{prefix}.norms_1.{i}"))?,
                Conv1d::load(w, &format!("{prefix}.convs_1x1.{i}"), 1, false)?,
                ChannelNorm::load(w, &format!("{prefix}.norms_2.{i}"))?,
            ));
            dilation *= kernel;
        }
        Ok(DdsConv { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, VitsError> {
        let mut x = x.clone();
        for (sep, norm_1, one, norm_2) in &self.layers {
            let y = norm_1.forward(&sep.forward(&x)?)?.gelu_erf()?;
            let y = norm_2.forward(&one.forward(&y)?)?.gelu_erf()?;
            x = (x + y)?;
        }
        Ok(x)
    }
}

struct ConvFlow {
    pre: Conv1d,
    convs: DdsConv,
    proj: Conv1d,
    bins: usize,
    filter: usize,
}

impl ConvFlow {
    fn load(w: &Weights, prefix: &str) -> Result<ConvFlow, VitsError> {
        let pre = Conv1d::load(w, &format!("{prefix}.pre"), 1, false)?;
        let proj = Conv1d::load(w, &format!("{prefix}.proj"), 1, false)?;
        // proj: half_channels · (3·bins − 1) outputs; the flow splits 2 channels in halves of 1.
        let per = proj.out_channels() / pre.in_channels();
        if pre.in_channels() != 1 || (per + 1) % 3 != 0 {
            return Err(bad(
                &format!("{prefix}.proj.weight"),
                "expected 3·bins − 1 outputs for one channel",
            ));
        }
        Ok(ConvFlow {
            filter: pre.out_channels(),
            pre,
            convs: DdsConv::load(w, &format!("{prefix}.convs"))?,
            proj,
            bins: (per + 1) / 3,
        })
    }

    /// Reverse pass on `z` `[1, 2, T]` conditioned on `g` `[1, filter, T]`.
    fn reverse(&self, z: &Tensor, g: &Tensor) -> Result<Tensor, VitsError> {
        let x0 = z.narrow(1, 0, 1)?;
        let x1 = z.narrow(1, 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let h = self.pre.forward(&x0)?;
        let h = self.convs.forward(&(h + g)?)?;
        let h = self.proj.forward(&h)?.squeeze(0)?.t()?.to_vec2::<f32>()?; // [T, 3·bins − 1]
        let norm = (self.filter as f32).sqrt();
        let n = self.bins;
        let mut y1 = Vec::with_capacity(x1.len());
        for (x, params) in x1.iter().zip(&h) {
            let widths: Vec<f32> = params[..n].iter().map(|v| v / norm).collect();
            let heights: Vec<f32> = params[n..2 * n].iter().map(|v| v / norm).collect();
            y1.push(spline::inverse(
                *x,
                &widths,
                &heights,
                &params[2 * n..],
                TAIL_BOUND,
            ));
        }
        let len = y1.len();
        let y1 = Tensor::from_vec(y1, (1, 1, len), &Device::Cpu)?;
        Ok(Tensor::cat(&[&x0, &y1], 1)?)
    }
}

pub(crate) struct DurationPredictor {
    pre: Conv1d,
    convs: DdsConv,
    proj: Conv1d,
    /// The `ConvFlow`s kept in the export, in the order the reverse pass applies them.
    flows: Vec<ConvFlow>,
    /// The first flow, `ElementwiseAffine`: `m` and `exp(-logs)`, each `[1, 2, 1]`.
    affine_m: Tensor,
    affine_inv_scale: Tensor,
}

fn flip(z: &Tensor) -> Result<Tensor, VitsError> {
    let c = z.dim(1)?;
    let index: Vec<u32> = (0..c as u32).rev().collect();
    Ok(z.index_select(&Tensor::new(index.as_slice(), &Device::Cpu)?, 1)?)
}

impl DurationPredictor {
    pub(crate) fn load(w: &Weights) -> Result<DurationPredictor, VitsError> {
        // VITS builds [ElementwiseAffine, (ConvFlow, Flip) × n]; inference drops the first
        // ConvFlow, so the export keeps the ConvFlows at indices 3, 5, 7 … and the reverse pass
        // runs Flip, ConvFlow … , Flip, ElementwiseAffine.
        let mut indices: Vec<usize> = (1..64)
            .filter(|i| w.has(&format!("dp.flows.{i}.pre.weight")))
            .collect();
        if indices.is_empty() {
            return Err(VitsError::MissingTensor("dp.flows.3.pre.weight".into()));
        }
        indices.reverse();
        let flows = indices
            .iter()
            .map(|i| ConvFlow::load(w, &format!("dp.flows.{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let m = w.get("dp.flows.0.m")?;
        let logs = w.get("dp.flows.0.logs")?;
        let channels = m.elem_count();
        if channels != 2 || logs.elem_count() != 2 {
            return Err(bad("dp.flows.0.m", "the affine flow has two channels"));
        }
        let pre = Conv1d::load(w, "dp.pre", 1, false)?;
        let proj = Conv1d::load(w, "dp.proj", 1, false)?;
        if flows.iter().any(|f| f.filter != proj.out_channels()) {
            return Err(bad(
                "dp.proj.weight",
                "width differs from the flows' conditioning",
            ));
        }
        Ok(DurationPredictor {
            pre,
            convs: DdsConv::load(w, "dp.convs")?,
            proj,
            flows,
            affine_m: m.reshape((1, 2, 1))?,
            affine_inv_scale: logs.reshape((1, 2, 1))?.neg()?.exp()?,
        })
    }

    /// Frames per phoneme: `ceil(exp(logw) · length_scale)`.
    pub(crate) fn durations(
        &self,
        hidden: &Tensor,
        noise_w: f32,
        length_scale: f32,
        rng: &mut Gaussian,
    ) -> Result<Vec<usize>, VitsError> {
        let len = hidden.dim(2)?;
        let g = self.pre.forward(hidden)?;
        let g = self.proj.forward(&self.convs.forward(&g)?)?;
        let mut z = if noise_w > 0.0 {
            rng.tensor(&[1, 2, len])?.affine(noise_w as f64, 0.0)?
        } else {
            Tensor::zeros((1, 2, len), candle_core::DType::F32, &Device::Cpu)?
        };
        for flow in &self.flows {
            z = flip(&z)?;
            z = flow.reverse(&z, &g)?;
        }
        z = flip(&z)?;
        z = z
            .broadcast_sub(&self.affine_m)?
            .broadcast_mul(&self.affine_inv_scale)?;
        let logw = z.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(logw
            .iter()
            .map(|l| {
                let d = (l.exp() * length_scale).ceil();
                if d.is_finite() && d > 0.0 {
                    d as usize
                } else {
                    0
                }
            })
            .collect())
    }
}
