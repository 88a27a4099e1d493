//! The HiFi-GAN generator: upsampling transposed convolutions, each followed by the average of
//! several residual blocks with different receptive fields. It runs on the plain-slice kernels
//! of `dense` (the convolutions are most of the voice's time); the averages' `1/blocks` is folded
//! into the weights of the convolution after each stage.
use super::dense::{add_into, leaky_relu_into, DenseConv, DenseUpsample, Signal};
use super::{bad, VitsError, Weights};

const LRELU_SLOPE: f32 = 0.1;
/// PyTorch's default slope, which HiFi-GAN uses before `conv_post`.
const FINAL_LRELU_SLOPE: f32 = 0.01;
/// Dilations of the residual blocks' convolutions, by the block's index within a stage (Piper's
/// `resblock_dilation_sizes`; the weights do not record them). Type 2 blocks (`convs.N`, medium
/// voices) use the first two of each row; type 1 blocks (`convs1.N`/`convs2.N`, high voices) use
/// `RESBLOCK1_DILATIONS` on `convs1` and 1 on `convs2`.
const RESBLOCK2_DILATIONS: [[usize; 2]; 3] = [[1, 2], [2, 6], [3, 12]];
const RESBLOCK1_DILATIONS: [[usize; 3]; 3] = [[1, 3, 5], [1, 3, 5], [1, 3, 5]];

fn conv(w: &Weights, prefix: &str, dilation: usize, scale: f32) -> Result<DenseConv, VitsError> {
    let name = format!("{prefix}.weight");
    w.dims(&name, 3)?;
    let bias_name = format!("{prefix}.bias");
    let bias = if w.has(&bias_name) {
        Some(w.get(&bias_name)?)
    } else {
        None
    };
    DenseConv::new(&name, &w.get(&name)?, bias.as_ref(), dilation, scale)
}

enum ResBlock {
    /// `x += conv(lrelu(x))` per dilation.
    Two(Vec<DenseConv>),
    /// `x += conv2(lrelu(conv1(lrelu(x))))` per dilation.
    One(Vec<(DenseConv, DenseConv)>),
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
                    conv(
                        w,
                        &format!("{prefix}.convs.{j}"),
                        RESBLOCK2_DILATIONS[row][j],
                        1.0,
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
                        conv(
                            w,
                            &format!("{prefix}.convs1.{j}"),
                            RESBLOCK1_DILATIONS[row][j],
                            1.0,
                        )?,
                        conv(w, &format!("{prefix}.convs2.{j}"), 1, 1.0)?,
                    ))
                })
                .collect::<Result<Vec<_>, VitsError>>()?;
            Ok(ResBlock::One(convs))
        }
    }

    fn convs(&self) -> Vec<&DenseConv> {
        match self {
            ResBlock::Two(convs) => convs.iter().collect(),
            ResBlock::One(convs) => convs.iter().flat_map(|(a, b)| [a, b]).collect(),
        }
    }

    /// How many samples on each side (at the block's rate) one output sample depends on.
    fn reach(&self) -> usize {
        self.convs().iter().map(|c| c.reach()).sum()
    }

    /// The block applied to `x` in place; `act` (same shape, margins at least every
    /// convolution's reach) is scratch space.
    fn forward(&self, x: &mut Signal, act: &mut Signal) {
        match self {
            ResBlock::Two(convs) => {
                for c in convs {
                    leaky_relu_into(x, LRELU_SLOPE, act);
                    c.accumulate(act, 0..c.outputs(), x);
                }
            }
            ResBlock::One(convs) => {
                for (c1, c2) in convs {
                    leaky_relu_into(x, LRELU_SLOPE, act);
                    let h = c1.forward(act, 0);
                    leaky_relu_into(&h, LRELU_SLOPE, act);
                    c2.accumulate(act, 0..c2.outputs(), x);
                }
            }
        }
    }
}

/// One upsampling stage: the transposed convolution, then the sum of the residual blocks (the
/// next convolution's weights carry the `1/blocks` of their average).
fn stage(up: &DenseUpsample, blocks: &[ResBlock], x: &Signal) -> Signal {
    let mut act = Signal::zeros(x.channels(), x.len(), 0);
    leaky_relu_into(x, LRELU_SLOPE, &mut act);
    let upsampled = up.forward(&act, 0);
    let reach = blocks
        .iter()
        .flat_map(|b| b.convs().into_iter().map(DenseConv::reach))
        .max()
        .unwrap_or(0);
    let mut act = Signal::zeros(upsampled.channels(), upsampled.len(), reach);
    let Some((last, rest)) = blocks.split_last() else {
        return upsampled;
    };
    let mut sum: Option<Signal> = None;
    for block in rest {
        let mut y = upsampled.clone();
        block.forward(&mut y, &mut act);
        sum = Some(match sum {
            Some(mut s) => {
                add_into(&mut s, &y);
                s
            }
            None => y,
        });
    }
    let mut y = upsampled;
    last.forward(&mut y, &mut act);
    match sum {
        Some(mut s) => {
            add_into(&mut s, &y);
            s
        }
        None => y,
    }
}

pub(crate) struct Decoder {
    conv_pre: DenseConv,
    stages: Vec<(DenseUpsample, Vec<ResBlock>)>,
    conv_post: DenseConv,
    hop: usize,
}

impl Decoder {
    pub(crate) fn load(w: &Weights) -> Result<Decoder, VitsError> {
        let conv_pre = conv(w, "dec.conv_pre", 1, 1.0)?;
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
        let average = 1.0 / per_stage as f32;
        let mut stages = Vec::with_capacity(ups);
        let mut hop = 1;
        let mut channels = conv_pre.outputs();
        for i in 0..ups {
            let name = format!("dec.ups.{i}.weight");
            let dims = w.dims(&name, 3)?;
            let kernel = dims[2];
            // HiFi-GAN pairs each upsampling rate u with a kernel of 2u, padding (k − u) / 2.
            if kernel % 2 != 0 {
                return Err(bad(&name, format!("odd kernel {kernel}")));
            }
            if dims[0] != channels {
                return Err(bad(
                    &name,
                    format!("{} inputs after {channels} channels", dims[0]),
                ));
            }
            let stride = kernel / 2;
            hop *= stride;
            let up = DenseUpsample::new(
                &name,
                &w.get(&name)?,
                &w.get(&format!("dec.ups.{i}.bias"))?,
                stride,
                (kernel - stride) / 2,
                if i == 0 { 1.0 } else { average },
            )?;
            channels = dims[1];
            let resblocks = (0..per_stage)
                .map(|j| ResBlock::load(w, &format!("dec.resblocks.{}", i * per_stage + j), j))
                .collect::<Result<Vec<_>, _>>()?;
            for block in &resblocks {
                if block
                    .convs()
                    .iter()
                    .any(|c| c.inputs() != channels || c.outputs() != channels)
                {
                    return Err(bad(
                        &format!("dec.resblocks.{}", i * per_stage),
                        format!("convolutions not {channels} → {channels}"),
                    ));
                }
            }
            stages.push((up, resblocks));
        }
        let conv_post = conv(w, "dec.conv_post", 1, average)?;
        if conv_post.inputs() != channels || conv_post.outputs() != 1 {
            return Err(bad("dec.conv_post.weight", format!("not {channels} → 1")));
        }
        Ok(Decoder {
            conv_pre,
            stages,
            conv_post,
            hop,
        })
    }

    pub(crate) fn hop_length(&self) -> usize {
        self.hop
    }

    pub(crate) fn channels(&self) -> usize {
        self.conv_pre.inputs()
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
    fn forward_range(&self, z: &Signal, from: usize, to: usize) -> Result<Vec<f32>, VitsError> {
        if z.channels() != self.channels() {
            return Err(bad(
                "dec.conv_pre.weight",
                format!("{} latent channels for {}", z.channels(), self.channels()),
            ));
        }
        let frames = z.len();
        if from >= to || to > frames {
            return Ok(Vec::new());
        }
        let margins = self.margins();
        // `x` holds the samples [start, start + len) of the whole signal at `rate` per frame;
        // the kept part gets `pad` zeros around each row for the convolution that reads it.
        let keep = |x: &Signal, start: usize, rate: usize, margin: f64, pad: usize| {
            let context = (margin * rate as f64).ceil() as usize;
            let lo = (from * rate).saturating_sub(context).max(start);
            let hi = (to * rate + context)
                .min(frames * rate)
                .min(start + x.len());
            (x.slice(0..x.channels(), lo - start, hi - lo, pad), lo)
        };
        let (x, start) = keep(z, 0, 1, margins[0], self.conv_pre.reach());
        let x = self.conv_pre.forward(&x, 0);
        let (mut x, mut start) = keep(&x, start, 1, margins[1], 0);
        let mut rate = 1;
        for (i, (up, blocks)) in self.stages.iter().enumerate() {
            let y = stage(up, blocks, &x);
            rate *= up.stride();
            start *= up.stride();
            (x, start) = keep(&y, start, rate, margins[i + 2], 0);
        }
        let mut act = Signal::zeros(x.channels(), x.len(), self.conv_post.reach());
        leaky_relu_into(&x, FINAL_LRELU_SLOPE, &mut act);
        let out = self.conv_post.forward(&act, 0);
        let begin = from * rate - start;
        Ok(out.row(0)[begin..begin + (to - from) * rate]
            .iter()
            .map(|v| v.tanh())
            .collect())
    }

    /// Decodes `z` (`[C, frames]`) window by window, calling `emit` with each window's samples
    /// in order: the first window has `first_frames` frames and each next one twice the one
    /// before, so the start of the audio is ready early while each window is ready before the
    /// ones before it have been played. The samples are those of `forward` on the whole of `z`.
    /// `stop` is asked before each window; when it says so, decoding ends with `Ok(false)`.
    pub(crate) fn forward_windows(
        &self,
        z: &Signal,
        first_frames: usize,
        stop: &dyn Fn() -> bool,
        emit: &mut dyn FnMut(Vec<f32>),
    ) -> Result<bool, VitsError> {
        let frames = z.len();
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
            emit(self.forward_range(z, start, end)?);
            start = end;
            window = window.saturating_mul(2);
        }
        Ok(true)
    }

    /// `[C, frames]` → `frames · hop` samples.
    pub(crate) fn forward(&self, z: &Signal) -> Result<Vec<f32>, VitsError> {
        self.forward_range(z, 0, z.len())
    }
}
