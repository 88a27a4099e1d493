//! The HiFi-GAN generator: upsampling transposed convolutions, each followed by the average of
//! several residual blocks with different receptive fields. It runs on the plain-slice kernels
//! of `dense` (the convolutions are most of the voice's time); the averages' `1/blocks` is folded
//! into the weights of the convolution after each stage.
use rayon::prelude::*;

use super::dense::{
    add_columns, copy_columns, leaky_relu_columns, leaky_relu_into, DenseConv, DenseUpsample,
    Signal,
};
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

    /// The block's convolutions in order, each with whether its output is added to the
    /// block's running signal (`true`) or is an intermediate the next convolution reads.
    fn steps(&self) -> Vec<(&DenseConv, bool)> {
        match self {
            ResBlock::Two(convs) => convs.iter().map(|c| (c, true)).collect(),
            ResBlock::One(convs) => convs
                .iter()
                .flat_map(|(a, b)| [(a, false), (b, true)])
                .collect(),
        }
    }
}

/// Channels × samples of one tile of a stage's residual blocks: its few buffers stay in L2.
const STAGE_TILE_VALUES: usize = 32 * 1024;

/// A tile's buffers, reused from tile to tile on one thread.
#[derive(Default)]
struct TileScratch {
    /// The block's running signal.
    y: Option<Signal>,
    /// A type 1 block's intermediate.
    h: Option<Signal>,
    /// The leaky ReLU of what the next convolution reads, with zero margins.
    act: Option<Signal>,
}

/// The sum of the blocks applied to `u`, at its columns `[t0, t1)`: each block runs over the
/// tile plus the context its convolutions still need (shrinking convolution by convolution),
/// with the zeros of "same" padding only at the ends of `u`, so the tile's samples are those of
/// the blocks over the whole of `u`. `parallel` splits each convolution's channels over threads.
fn blocks_tile(
    blocks: &[ResBlock],
    u: &Signal,
    (t0, t1): (usize, usize),
    scratch: &mut TileScratch,
    parallel: bool,
) -> Signal {
    let (channels, whole) = (u.channels(), u.len());
    let margin = blocks
        .iter()
        .flat_map(|b| b.convs().into_iter().map(DenseConv::reach))
        .max()
        .unwrap_or(0);
    let y = scratch.y.get_or_insert_with(|| Signal::zeros(0, 0, 0));
    let h = scratch.h.get_or_insert_with(|| Signal::zeros(0, 0, 0));
    let act = scratch.act.get_or_insert_with(|| Signal::zeros(0, 0, 0));
    let mut sum = Signal::zeros(channels, t1 - t0, 0);
    for block in blocks {
        let steps = block.steps();
        let mut remaining = block.reach();
        let (lo, hi) = (t0.saturating_sub(remaining), (t1 + remaining).min(whole));
        y.reset(channels, hi - lo, 0);
        copy_columns(u, lo, y, 0, hi - lo);
        act.reset(channels, hi - lo, margin);
        // `[valid_lo, valid_hi)`: where what the next convolution reads is computed.
        let (mut valid_lo, mut valid_hi) = (lo, hi);
        let mut read_h = false;
        for (conv, residual) in steps {
            remaining -= conv.reach();
            let (out_lo, out_hi) = (t0.saturating_sub(remaining), (t1 + remaining).min(whole));
            let src = if read_h { &*h } else { &*y };
            leaky_relu_columns(src, act, valid_lo - lo, valid_hi - valid_lo, LRELU_SLOPE);
            let dst = if residual {
                &mut *y
            } else {
                h.reset(channels, hi - lo, 0);
                &mut *h
            };
            conv.accumulate_window(
                act,
                out_lo - lo,
                out_hi - out_lo,
                dst,
                out_lo - lo,
                parallel,
            );
            read_h = !residual;
            (valid_lo, valid_hi) = (out_lo, out_hi);
        }
        add_columns(y, t0 - lo, &mut sum, 0, t1 - t0);
    }
    sum
}

/// One upsampling stage: the transposed convolution, then the sum of the residual blocks (the
/// next convolution's weights carry the `1/blocks` of their average), tile by tile in time,
/// the tiles spread over rayon's threads.
fn stage(up: &DenseUpsample, blocks: &[ResBlock], x: &Signal) -> Signal {
    let mut act = Signal::zeros(x.channels(), x.len(), 0);
    leaky_relu_into(x, LRELU_SLOPE, &mut act);
    let upsampled = up.forward(&act, 0);
    if blocks.is_empty() {
        return upsampled;
    }
    let (channels, len) = (upsampled.channels(), upsampled.len());
    let threads = rayon::current_num_threads().max(1);
    let mut tiles = len.div_ceil((STAGE_TILE_VALUES / channels.max(1)).max(64));
    if tiles > 1 && tiles < 4 * threads {
        tiles = tiles.next_multiple_of(threads);
    }
    let tiles = tiles.clamp(1, len.max(1));
    let width = len.div_ceil(tiles);
    let bounds = |i: usize| (i * width, ((i + 1) * width).min(len));
    if tiles == 1 {
        return blocks_tile(
            blocks,
            &upsampled,
            (0, len),
            &mut TileScratch::default(),
            true,
        );
    }
    let parts: Vec<Signal> = (0..tiles)
        .into_par_iter()
        .map_init(TileScratch::default, |scratch, i| {
            blocks_tile(blocks, &upsampled, bounds(i), scratch, false)
        })
        .collect();
    let mut out = Signal::zeros(channels, len, 0);
    for (i, part) in parts.iter().enumerate() {
        let (t0, t1) = bounds(i);
        copy_columns(part, 0, &mut out, t0, t1 - t0);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Deterministic values in `[-0.25, 0.25]`.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        super::super::dense::tests::values(n, seed)
            .into_iter()
            .map(|v| v / 4.0)
            .collect()
    }

    /// A random `channels → channels` convolution: the dense kernel and its candle tensors.
    fn random_conv(
        channels: usize,
        taps: usize,
        dilation: usize,
        seed: u32,
    ) -> (DenseConv, Tensor, Tensor) {
        let w = Tensor::from_vec(
            values(channels * channels * taps, seed),
            (channels, channels, taps),
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::from_vec(values(channels, seed + 1), channels, &Device::Cpu).unwrap();
        (
            DenseConv::new("w", &w, Some(&b), dilation, 1.0).unwrap(),
            w,
            b,
        )
    }

    fn lrelu(x: &Tensor) -> Tensor {
        x.maximum(&x.affine(f64::from(LRELU_SLOPE), 0.0).unwrap())
            .unwrap()
    }

    /// candle's convolution of `x` with "same" padding, plus the bias.
    fn reference_conv(x: &Tensor, (w, b, dilation): &(Tensor, Tensor, usize)) -> Tensor {
        let pad = (w.dim(2).unwrap() - 1) / 2 * dilation;
        let y = x.conv1d(w, pad, 1, *dilation, 1).unwrap();
        y.broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1)).unwrap())
            .unwrap()
    }

    /// Blocks of both types, with their weights as tensors for the reference.
    #[allow(clippy::type_complexity)]
    fn blocks(channels: usize) -> (Vec<ResBlock>, Vec<Vec<(Tensor, Tensor, usize)>>, Vec<bool>) {
        let mut dense = Vec::new();
        let mut tensors = Vec::new();
        let mut type_two = Vec::new();
        for (i, &taps) in [3usize, 5, 7].iter().enumerate() {
            let mut convs = Vec::new();
            let mut refs = Vec::new();
            for (j, &d) in RESBLOCK2_DILATIONS[i].iter().enumerate() {
                let (c, w, b) = random_conv(channels, taps, d, (10 * i + j) as u32);
                convs.push(c);
                refs.push((w, b, d));
            }
            dense.push(ResBlock::Two(convs));
            tensors.push(refs);
            type_two.push(true);
        }
        let mut pairs = Vec::new();
        let mut refs = Vec::new();
        for (j, &d) in RESBLOCK1_DILATIONS[0].iter().enumerate() {
            let (c1, w1, b1) = random_conv(channels, 3, d, 100 + j as u32);
            let (c2, w2, b2) = random_conv(channels, 3, 1, 200 + j as u32);
            pairs.push((c1, c2));
            refs.push((w1, b1, d));
            refs.push((w2, b2, 1));
        }
        dense.push(ResBlock::One(pairs));
        tensors.push(refs);
        type_two.push(false);
        (dense, tensors, type_two)
    }

    #[test]
    fn tiles_of_the_blocks_equal_the_blocks_over_the_whole_signal() {
        let (channels, len) = (5, 300);
        let (dense, tensors, type_two) = blocks(channels);
        let x =
            Tensor::from_vec(values(channels * len, 7), (1, channels, len), &Device::Cpu).unwrap();
        let mut want = x.zeros_like().unwrap();
        for (convs, two) in tensors.iter().zip(&type_two) {
            let mut y = x.clone();
            if *two {
                for c in convs {
                    y = (&y + reference_conv(&lrelu(&y), c)).unwrap();
                }
            } else {
                for pair in convs.chunks(2) {
                    let h = reference_conv(&lrelu(&y), &pair[0]);
                    y = (&y + reference_conv(&lrelu(&h), &pair[1])).unwrap();
                }
            }
            want = (want + y).unwrap();
        }
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let u = Signal::from_tensor(&x, 0).unwrap();
        for cuts in [
            vec![0, len],
            vec![0, 1, 40, 41, 150, 299, len],
            vec![0, 100, 200, len],
        ] {
            for parallel in [false, true] {
                let mut scratch = TileScratch::default();
                for span in cuts.windows(2) {
                    let got = blocks_tile(&dense, &u, (span[0], span[1]), &mut scratch, parallel);
                    for c in 0..channels {
                        for (t, g) in got.row(c).iter().enumerate() {
                            let w = want[c * len + span[0] + t];
                            assert!(
                                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                                "cuts {cuts:?}, channel {c}, sample {}: {g} vs {w}",
                                span[0] + t
                            );
                        }
                    }
                }
            }
        }
    }
}
