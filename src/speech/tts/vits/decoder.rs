//! The HiFi-GAN generator: upsampling transposed convolutions, each followed by the average of
//! several residual blocks with different receptive fields.
use candle_core::Tensor;

use super::nn::{leaky_relu, Conv1d, ConvTranspose1d};
use super::{bad, VitsError, Weights};

const LRELU_SLOPE: f64 = 0.1;
/// PyTorch's default slope, which HiFi-GAN uses before `conv_post`.
const FINAL_LRELU_SLOPE: f64 = 0.01;
/// Dilations of the residual blocks' convolutions, by the block's index within a stage (Piper's
/// `resblock_dilation_sizes`; the weights do not record them). Type 2 blocks (`convs.N`, medium
/// voices) use the first two of each row; type 1 blocks (`convs1.N`/`convs2.N`, high voices) use
/// `RESBLOCK1_DILATIONS` on `convs1` and 1 on `convs2`.
const RESBLOCK2_DILATIONS: [[usize; 2]; 3] = [[1, 2], [2, 6], [3, 12]];
const RESBLOCK1_DILATIONS: [[usize; 3]; 3] = [[1, 3, 5], [1, 3, 5], [1, 3, 5]];

enum ResBlock {
    /// `x += conv(lrelu(x))` per dilation.
    Two(Vec<Conv1d>),
    /// `x += conv2(lrelu(conv1(lrelu(x))))` per dilation.
    One(Vec<(Conv1d, Conv1d)>),
}

impl ResBlock {
    fn load(w: &Weights, prefix: &str, position: usize) -> Result<ResBlock, VitsError> {
        let row = position % 3;
        if w.has(&format!("{prefix}.convs.0.weight")) {
            let count = w.count(&format!("{prefix}.convs."), ".weight");
            if count > 2 {
                return Err(bad(
                    &format!("{prefix}.convs.2.weight"),
                    "type 2 blocks have two convs",
                ));
            }
            let convs = (0..count)
                .map(|j| {
                    Conv1d::load(
                        w,
                        &format!("{prefix}.convs.{j}"),
                        RESBLOCK2_DILATIONS[row][j],
                        false,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ResBlock::Two(convs))
        } else {
            let count = w.count(&format!("{prefix}.convs1."), ".weight");
            if count == 0 || count > 3 {
                return Err(VitsError::MissingTensor(format!("{prefix}.convs.0.weight")));
            }
            let convs = (0..count)
                .map(|j| {
                    Ok((
                        Conv1d::load(
                            w,
                            &format!("{prefix}.convs1.{j}"),
                            RESBLOCK1_DILATIONS[row][j],
                            false,
                        )?,
                        Conv1d::load(w, &format!("{prefix}.convs2.{j}"), 1, false)?,
                    ))
                })
                .collect::<Result<Vec<_>, VitsError>>()?;
            Ok(ResBlock::One(convs))
        }
    }

    /// How many samples on each side (at the block's rate) one output sample depends on.
    fn reach(&self) -> usize {
        match self {
            ResBlock::Two(convs) => convs.iter().map(Conv1d::reach).sum(),
            ResBlock::One(convs) => convs.iter().map(|(a, b)| a.reach() + b.reach()).sum(),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, VitsError> {
        let mut x = x.clone();
        match self {
            ResBlock::Two(convs) => {
                for c in convs {
                    x = (c.forward(&leaky_relu(&x, LRELU_SLOPE)?)? + x)?;
                }
            }
            ResBlock::One(convs) => {
                for (c1, c2) in convs {
                    let y = c1.forward(&leaky_relu(&x, LRELU_SLOPE)?)?;
                    x = (c2.forward(&leaky_relu(&y, LRELU_SLOPE)?)? + x)?;
                }
            }
        }
        Ok(x)
    }
}

/// One upsampling stage: the transposed convolution, then the average of the residual blocks.
fn stage(up: &ConvTranspose1d, blocks: &[ResBlock], x: &Tensor) -> Result<Tensor, VitsError> {
    let x = up.forward(&leaky_relu(x, LRELU_SLOPE)?)?;
    let mut sum: Option<Tensor> = None;
    for b in blocks {
        let y = b.forward(&x)?;
        sum = Some(match sum {
            Some(s) => (s + y)?,
            None => y,
        });
    }
    let sum = sum.ok_or_else(|| bad("dec.resblocks", "a stage has no blocks"))?;
    Ok(sum.affine(1.0 / blocks.len() as f64, 0.0)?)
}

pub(crate) struct Decoder {
    conv_pre: Conv1d,
    stages: Vec<(ConvTranspose1d, Vec<ResBlock>)>,
    conv_post: Conv1d,
    hop: usize,
}

impl Decoder {
    pub(crate) fn load(w: &Weights) -> Result<Decoder, VitsError> {
        let conv_pre = Conv1d::load(w, "dec.conv_pre", 1, false)?;
        let ups = w.count("dec.ups.", ".weight");
        let blocks = w.count("dec.resblocks.", ".convs.0.weight")
            + w.count("dec.resblocks.", ".convs1.0.weight");
        if ups == 0 || blocks == 0 || !blocks.is_multiple_of(ups) {
            return Err(bad(
                "dec.resblocks",
                format!("{blocks} blocks for {ups} upsamplings"),
            ));
        }
        let per_stage = blocks / ups;
        if per_stage > RESBLOCK2_DILATIONS.len() {
            return Err(bad(
                "dec.resblocks",
                format!("{per_stage} blocks per stage"),
            ));
        }
        let mut stages = Vec::with_capacity(ups);
        let mut hop = 1;
        for i in 0..ups {
            let name = format!("dec.ups.{i}.weight");
            let kernel = w.dims(&name, 3)?[2];
            // HiFi-GAN pairs each upsampling rate u with a kernel of 2u, padding (k − u) / 2.
            if kernel % 2 != 0 {
                return Err(bad(&name, format!("odd kernel {kernel}")));
            }
            let stride = kernel / 2;
            hop *= stride;
            let up = ConvTranspose1d::new(
                w.get(&name)?,
                w.get(&format!("dec.ups.{i}.bias"))?,
                stride,
                (kernel - stride) / 2,
            )?;
            let resblocks = (0..per_stage)
                .map(|j| ResBlock::load(w, &format!("dec.resblocks.{}", i * per_stage + j), j))
                .collect::<Result<Vec<_>, _>>()?;
            stages.push((up, resblocks));
        }
        Ok(Decoder {
            conv_pre,
            stages,
            conv_post: Conv1d::load(w, "dec.conv_post", 1, false)?,
            hop,
        })
    }

    pub(crate) fn hop_length(&self) -> usize {
        self.hop
    }

    /// The context, in latent frames on each side, that what follows each point of the network
    /// still needs: `[z, after conv_pre, after stage 0, …, after the last stage]`.
    fn margins(&self) -> Vec<f64> {
        let rates: Vec<f64> = self
            .stages
            .iter()
            .scan(1.0, |rate, (up, _)| {
                *rate *= up.stride() as f64;
                Some(*rate)
            })
            .collect();
        let mut margin = self.conv_post.reach() as f64 / rates.last().copied().unwrap_or(1.0);
        let mut after_stage = vec![margin];
        for (i, (up, blocks)) in self.stages.iter().enumerate().rev() {
            let rate = rates[i];
            let before = rate / up.stride() as f64;
            margin += blocks.iter().map(ResBlock::reach).max().unwrap_or(0) as f64 / rate;
            margin += up.reach() as f64 / before;
            after_stage.push(margin);
        }
        after_stage.push(margin + self.conv_pre.reach() as f64);
        after_stage.reverse();
        after_stage
    }

    /// The samples of latent frames `[from, to)` of `z`, exactly as `forward` on the whole of
    /// `z` gives them, computing each stage only where what follows needs it: the window plus
    /// the context left to the rest of the network, which shrinks stage by stage.
    fn forward_range(&self, z: &Tensor, from: usize, to: usize) -> Result<Tensor, VitsError> {
        let frames = z.dim(2)?;
        let margins = self.margins();
        // `x` holds the samples [start, start + len) of the whole signal at `rate` per frame.
        let keep = |x: Tensor, start: usize, rate: usize, margin: f64| {
            let pad = (margin * rate as f64).ceil() as usize;
            let lo = (from * rate).saturating_sub(pad).max(start);
            let hi = (to * rate + pad).min(frames * rate).min(start + x.dim(2)?);
            Ok::<_, VitsError>((x.narrow(2, lo - start, hi - lo)?, lo))
        };
        let (x, start) = keep(z.clone(), 0, 1, margins[0])?;
        let x = self.conv_pre.forward(&x)?;
        let (mut x, mut start) = keep(x, start, 1, margins[1])?;
        let mut rate = 1;
        for (i, (up, blocks)) in self.stages.iter().enumerate() {
            x = stage(up, blocks, &x)?;
            rate *= up.stride();
            start *= up.stride();
            (x, start) = keep(x, start, rate, margins[i + 2])?;
        }
        let x = self
            .conv_post
            .forward(&leaky_relu(&x, FINAL_LRELU_SLOPE)?)?
            .tanh()?;
        Ok(x.narrow(2, from * rate - start, (to - from) * rate)?)
    }

    /// Decodes `z` (`[1, C, frames]`) window by window, calling `emit` with each window's samples
    /// in order: the first window has `first_frames` frames and each next one twice the one
    /// before, so the start of the audio is ready early while each window is ready before the
    /// ones before it have been played. The samples are those of `forward` on the whole of `z`.
    /// `stop` is asked before each window; when it says so, decoding ends with `Ok(false)`.
    pub(crate) fn forward_windows(
        &self,
        z: &Tensor,
        first_frames: usize,
        stop: &dyn Fn() -> bool,
        emit: &mut dyn FnMut(Vec<f32>),
    ) -> Result<bool, VitsError> {
        let frames = z.dim(2)?;
        let mut start = 0;
        let mut window = first_frames.max(1);
        while start < frames {
            if stop() {
                return Ok(false);
            }
            // A last window shorter than half this one is merged into it.
            let end = if frames - start <= window + window / 2 {
                frames
            } else {
                start + window
            };
            let audio = self.forward_range(z, start, end)?;
            emit(audio.flatten_all()?.to_vec1::<f32>()?);
            start = end;
            window = window.saturating_mul(2);
        }
        Ok(true)
    }

    /// `[1, C, frames]` → `[1, 1, frames · hop]`.
    pub(crate) fn forward(&self, z: &Tensor) -> Result<Tensor, VitsError> {
        let mut x = self.conv_pre.forward(z)?;
        for (up, blocks) in &self.stages {
            x = stage(up, blocks, &x)?;
        }
        let x = self
            .conv_post
            .forward(&leaky_relu(&x, FINAL_LRELU_SLOPE)?)?;
        Ok(x.tanh()?)
    }
}
