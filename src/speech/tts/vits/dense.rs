//! Plain-slice kernels for the convolutional parts of the network (the flow's WaveNet stacks and
//! the HiFi-GAN decoder), where candle's CPU convolutions are slow: an im2col copy per
//! convolution and one allocating pass per activation, bias and residual sum.
//!
//! A signal is channel-major rows with zero margins, so a convolution is one matrix product per
//! tap over shifted views of its input (no copy), computed tile by tile in time so the output
//! tile stays in cache across the taps; a transposed convolution is one matrix product and an
//! overlap-add; biases are added while the tile is in cache. The products run on `gemm` (the
//! kernels under candle's own matmul), the output channels split across rayon's threads.
use std::ops::Range;

use candle_core::Tensor;
use rayon::prelude::*;

use super::direct::{self, PackedWeights, BLOCK_ROWS};
use super::{bad, VitsError};
use crate::speech::kernels::{self, View};

/// Output columns per matrix product: the output tile and its input rows stay in L2 across taps.
const TILE: usize = 512;
/// Output rows per parallel task (a multiple of the matrix kernels' register block).
const ROWS_PER_TASK: usize = 16;

/// A `[channels, len]` signal, row by row, each row with `margin` zeros before and after it, so
/// a convolution that reaches `margin` samples outside reads the zeros of "same" padding.
#[derive(Debug, Clone)]
pub(crate) struct Signal {
    channels: usize,
    len: usize,
    margin: usize,
    data: Vec<f32>,
}

impl Signal {
    pub(crate) fn zeros(channels: usize, len: usize, margin: usize) -> Signal {
        Signal {
            channels,
            len,
            margin,
            data: vec![0.0; channels * (len + 2 * margin)],
        }
    }

    /// From a `[1, channels, len]` tensor.
    pub(crate) fn from_tensor(t: &Tensor, margin: usize) -> Result<Signal, VitsError> {
        let (_, channels, len) = t.dims3()?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let mut s = Signal::zeros(channels, len, margin);
        for (c, row) in values.chunks_exact(len.max(1)).take(channels).enumerate() {
            s.row_mut(c).copy_from_slice(&row[..len]);
        }
        Ok(s)
    }

    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Distance between the starts of consecutive rows.
    pub(crate) fn stride(&self) -> usize {
        self.len + 2 * self.margin
    }

    /// The values from the first interior sample of row `c` to the end (rows `c..` at
    /// `stride()` apart), as a matrix operand.
    pub(crate) fn rows_from(&self, c: usize) -> &[f32] {
        &self.data[(c * self.stride() + self.margin).min(self.data.len())..]
    }

    /// `rows_from`, mutable.
    pub(crate) fn rows_from_mut(&mut self, c: usize) -> &mut [f32] {
        let start = (c * self.stride() + self.margin).min(self.data.len());
        &mut self.data[start..]
    }

    /// Rows `channels` as a `[1, channels, len]` tensor.
    pub(crate) fn to_tensor(&self, channels: Range<usize>) -> Result<Tensor, VitsError> {
        let mut values = Vec::with_capacity(channels.len() * self.len);
        for c in channels.clone() {
            values.extend_from_slice(self.row(c));
        }
        Ok(Tensor::from_vec(
            values,
            (1, channels.len(), self.len),
            &candle_core::Device::Cpu,
        )?)
    }

    pub(crate) fn row(&self, c: usize) -> &[f32] {
        let start = c * self.stride() + self.margin;
        &self.data[start..start + self.len]
    }

    pub(crate) fn row_mut(&mut self, c: usize) -> &mut [f32] {
        let start = c * self.stride() + self.margin;
        let len = self.len;
        &mut self.data[start..start + len]
    }

    /// Columns `[from, from + len)` of channels `channels`, with `margin` zeros around each row.
    pub(crate) fn slice(
        &self,
        channels: Range<usize>,
        from: usize,
        len: usize,
        margin: usize,
    ) -> Signal {
        let mut out = Signal::zeros(channels.len(), len, margin);
        for (o, c) in channels.enumerate() {
            out.row_mut(o)
                .copy_from_slice(&self.row(c)[from..from + len]);
        }
        out
    }

    /// The same rows in the opposite channel order.
    pub(crate) fn flip_channels(&mut self) {
        let stride = self.stride();
        let mut rows: Vec<&mut [f32]> = self.data.chunks_exact_mut(stride.max(1)).collect();
        let n = rows.len();
        for i in 0..n / 2 {
            let (head, tail) = rows.split_at_mut(n - 1 - i);
            head[i].swap_with_slice(tail[0]);
        }
    }

    /// Channel-major values without margins.
    #[cfg(test)]
    fn to_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.channels * self.len);
        for c in 0..self.channels {
            out.extend_from_slice(self.row(c));
        }
        out
    }

    /// Each row's interior, mutable, with its channel index; in parallel for long signals.
    pub(crate) fn for_rows(&mut self, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
        let (stride, margin, len) = (self.stride(), self.margin, self.len);
        if stride == 0 {
            return;
        }
        let each = |(c, row): (usize, &mut [f32])| f(c, &mut row[margin..margin + len]);
        if self.data.len() >= PARALLEL_ELEMENTS {
            self.data.par_chunks_mut(stride).enumerate().for_each(each);
        } else {
            self.data.chunks_mut(stride).enumerate().for_each(each);
        }
    }
}

impl Signal {
    /// Makes this `[channels, len]` zeros with `margin` zeros around each row, reusing the
    /// allocation.
    pub(crate) fn reset(&mut self, channels: usize, len: usize, margin: usize) {
        self.channels = channels;
        self.len = len;
        self.margin = margin;
        self.data.clear();
        self.data.resize(channels * (len + 2 * margin), 0.0);
    }
}

/// `f(dst, src)` over `dst[:, dst_from..][..len]` and `src[:, from..][..len]`; same channels.
fn zip_columns(
    src: &Signal,
    from: usize,
    dst: &mut Signal,
    (dst_from, len): (usize, usize),
    f: impl Fn(&mut f32, f32),
) {
    debug_assert_eq!(src.channels, dst.channels);
    for c in 0..src.channels {
        let out = &mut dst.row_mut(c)[dst_from..dst_from + len];
        for (o, &v) in out.iter_mut().zip(&src.row(c)[from..from + len]) {
            f(o, v);
        }
    }
}

/// `dst[:, dst_from..][..len] = src[:, from..][..len]`; same channels.
pub(crate) fn copy_columns(
    src: &Signal,
    from: usize,
    dst: &mut Signal,
    dst_from: usize,
    len: usize,
) {
    zip_columns(src, from, dst, (dst_from, len), |o, v| *o = v);
}

/// `dst[:, dst_from..][..len] += src[:, from..][..len]`; same channels.
pub(crate) fn add_columns(
    src: &Signal,
    from: usize,
    dst: &mut Signal,
    dst_from: usize,
    len: usize,
) {
    zip_columns(src, from, dst, (dst_from, len), |o, v| *o += v);
}

/// `dst[:, from..][..len] = leaky_relu(src[:, from..][..len])`; same channels and length.
pub(crate) fn leaky_relu_columns(
    src: &Signal,
    dst: &mut Signal,
    from: usize,
    len: usize,
    slope: f32,
) {
    debug_assert_eq!((src.channels, src.len), (dst.channels, dst.len));
    zip_columns(src, from, dst, (from, len), |o, x| {
        *o = if x >= 0.0 { x } else { x * slope }
    });
}

/// Element-wise passes over fewer values than this stay on the calling thread.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// `dst = leaky_relu(src)` on the interiors (`dst`'s margins stay zero); same shape.
pub(crate) fn leaky_relu_into(src: &Signal, slope: f32, dst: &mut Signal) {
    debug_assert_eq!((src.channels, src.len), (dst.channels, dst.len));
    dst.for_rows(|c, out| {
        for (o, &x) in out.iter_mut().zip(src.row(c)) {
            *o = if x >= 0.0 { x } else { x * slope };
        }
    });
}

/// `e^x` to within a few ulp (Cody–Waite reduction and Cephes' polynomial), without branches so
/// that loops over it vectorize; `x` is clamped to `[-87, 88]`, where `e^x` is a normal `f32`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `tanh(x)` through `exp`, to about 1e-7 absolute.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `1 / (1 + e^-x)` through `exp`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// A read-only matrix inside a slice: element `(r, c)` at `r · rows + c · cols`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl<'a> MatRef<'a> {
    fn view(self) -> View<'a> {
        View {
            data: self.data,
            row_stride: self.rows,
            col_stride: self.cols,
        }
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, each row-major with the given row strides (columns are
/// contiguous).
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    lhs_rs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    matmul_strided(
        dst,
        (dst_rs, 1),
        MatRef {
            data: lhs,
            rows: lhs_rs,
            cols: 1,
        },
        MatRef {
            data: rhs,
            rows: rhs_rs,
            cols: 1,
        },
        (m, n, k),
        accumulate,
    );
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with any strides (`dst`'s as `(rows, cols)`), on the
/// calling thread: the voice parallelizes over windows and chunks itself.
pub(crate) fn matmul_strided(
    dst: &mut [f32],
    dst_strides: (usize, usize),
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    mnk: (usize, usize, usize),
    accumulate: bool,
) {
    kernels::matmul_strided(
        dst,
        dst_strides,
        lhs.view(),
        rhs.view(),
        mnk,
        accumulate,
        gemm::Parallelism::None,
    );
}

/// The values of a rank-3 weight times `scale`, each moved to `index(d0, d1, d2)`.
fn laid_out(
    weight: &Tensor,
    scale: f32,
    index: impl Fn(usize, usize, usize) -> usize,
) -> Result<Vec<f32>, VitsError> {
    let (n0, n1, n2) = weight.dims3()?;
    let values = weight.flatten_all()?.to_vec1::<f32>()?;
    let mut laid = vec![0.0; values.len()];
    for a in 0..n0 {
        for b in 0..n1 {
            for c in 0..n2 {
                laid[index(a, b, c)] = values[(a * n1 + b) * n2 + c] * scale;
            }
        }
    }
    Ok(laid)
}

/// A `[outputs]` bias times `scale`.
fn biases(name: &str, bias: &Tensor, outputs: usize, scale: f32) -> Result<Vec<f32>, VitsError> {
    let values = bias.flatten_all()?.to_vec1::<f32>()?;
    if values.len() != outputs {
        return Err(bad(
            name,
            format!("{} biases for {outputs} outputs", values.len()),
        ));
    }
    Ok(values.iter().map(|v| v * scale).collect())
}

/// A 1-D convolution with "same" padding (odd kernel), weights laid out once as `[tap][out][in]`.
pub(crate) struct DenseConv {
    outputs: usize,
    inputs: usize,
    taps: usize,
    dilation: usize,
    weight: Vec<f32>,
    /// The weights for the direct kernel, for convolutions narrow enough to use it.
    packed: Option<PackedWeights>,
    bias: Vec<f32>,
}

/// Convolutions with at most this many input channels run on the direct kernel (`direct`):
/// all of the decoder's and the flow's (up to 192 inputs; it took 12 % less CPU time over the
/// bench than leaving the 128- and 192-channel ones on matrix products); wider ones (the
/// encoder's 768-channel feed-forward output) on matrix products per tap.
const DIRECT_MAX_INPUTS: usize = 256;

impl DenseConv {
    /// From a `[out, in, k]` weight and optional `[out]` bias, both multiplied by `scale`.
    pub(crate) fn new(
        name: &str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        dilation: usize,
        scale: f32,
    ) -> Result<DenseConv, VitsError> {
        let (outputs, inputs, taps) = weight.dims3()?;
        if taps % 2 == 0 {
            return Err(bad(
                name,
                format!("even kernel {taps} has no centred padding"),
            ));
        }
        let laid = laid_out(weight, scale, |o, i, t| (t * outputs + o) * inputs + i)?;
        let bias = match bias {
            Some(b) => biases(name, b, outputs, scale)?,
            None => vec![0.0; outputs],
        };
        let packed =
            (inputs <= DIRECT_MAX_INPUTS).then(|| PackedWeights::new(&laid, outputs, inputs, taps));
        Ok(DenseConv {
            outputs,
            inputs,
            taps,
            dilation,
            weight: laid,
            packed,
            bias,
        })
    }

    /// How many input samples on each side one output sample depends on.
    pub(crate) fn reach(&self) -> usize {
        (self.taps - 1) / 2 * self.dilation
    }

    pub(crate) fn inputs(&self) -> usize {
        self.inputs
    }

    pub(crate) fn outputs(&self) -> usize {
        self.outputs
    }

    /// The convolution of `x` (whose margin must be at least `reach`), in a new signal with
    /// `margin` zeros around each row.
    pub(crate) fn forward(&self, x: &Signal, margin: usize) -> Signal {
        let mut out = Signal::zeros(self.outputs, x.len, margin);
        self.accumulate(x, 0..self.outputs, &mut out);
        out
    }

    /// `dst += bias + conv(x)` for the output channels `rows` (`dst` has that many channels).
    pub(crate) fn accumulate(&self, x: &Signal, rows: Range<usize>, dst: &mut Signal) {
        self.check_shapes(
            x.margin >= self.reach()
                && dst.channels == rows.len()
                && dst.len == x.len
                && rows.end <= self.outputs,
            x,
            dst,
        );
        let parallel = rows.len() * x.len * self.inputs * self.taps >= PARALLEL_MACS;
        self.accumulate_columns(x, 0, rows, dst, 0, x.len, parallel);
    }

    /// `dst[:, dst_from..][..len] += bias + conv(x)[:, from..][..len]` over all output channels:
    /// the convolution at `len` positions of `x` from `from`, which may read `reach` samples
    /// either side (into `x`'s margins); the output channels are split over rayon's threads when
    /// `parallel`.
    pub(crate) fn accumulate_window(
        &self,
        x: &Signal,
        from: usize,
        len: usize,
        dst: &mut Signal,
        dst_from: usize,
        parallel: bool,
    ) {
        self.check_shapes(
            from + x.margin >= self.reach()
                && from + len + self.reach() <= x.len + x.margin
                && dst.channels == self.outputs
                && dst_from + len <= dst.len,
            x,
            dst,
        );
        self.accumulate_columns(x, from, 0..self.outputs, dst, dst_from, len, parallel);
    }

    /// Panics, naming the shapes, unless `x` has this convolution's inputs and `fits`.
    fn check_shapes(&self, fits: bool, x: &Signal, dst: &Signal) {
        assert!(
            fits && x.channels == self.inputs,
            "convolution shapes: {}→{} (reach {}) over {}×{} (margin {}) into {}×{}",
            self.inputs,
            self.outputs,
            self.reach(),
            x.channels,
            x.len,
            x.margin,
            dst.channels,
            dst.len
        );
    }

    /// The products of `accumulate`/`accumulate_window`, whose bounds they check.
    #[allow(clippy::too_many_arguments)]
    fn accumulate_columns(
        &self,
        x: &Signal,
        from: usize,
        rows: Range<usize>,
        dst: &mut Signal,
        dst_from: usize,
        len: usize,
        parallel: bool,
    ) {
        if len == 0 || rows.is_empty() {
            return;
        }
        let (dst_stride, dst_margin) = (dst.stride(), dst.margin);
        let first_row = rows.start;
        let x_first = x.margin + from - self.reach();
        let task = |(group, chunk): (usize, &mut [f32]), rows_per_task: usize| {
            let row0 = first_row + group * rows_per_task;
            let m = chunk.len() / dst_stride;
            let out = &mut chunk[dst_margin + dst_from..];
            if let Some(packed) = self
                .packed
                .as_ref()
                .filter(|_| row0.is_multiple_of(BLOCK_ROWS))
            {
                let input = direct::Input {
                    data: &x.data[x_first..],
                    stride: x.stride(),
                    dilation: self.dilation,
                };
                let output = direct::Output {
                    data: out,
                    stride: dst_stride,
                    first_row: row0,
                    rows: m,
                };
                direct::accumulate(packed, &self.bias, input, output, len);
                return;
            }
            for t0 in (0..len).step_by(TILE) {
                let n = TILE.min(len - t0);
                for tap in 0..self.taps {
                    let w = &self.weight[(tap * self.outputs + row0) * self.inputs..];
                    matmul(
                        &mut out[t0..],
                        dst_stride,
                        w,
                        self.inputs,
                        &x.data[x_first + tap * self.dilation + t0..],
                        x.stride(),
                        (m, n, self.inputs),
                        true,
                    );
                }
                for r in 0..m {
                    let b = self.bias[row0 + r];
                    for v in &mut out[r * dst_stride + t0..r * dst_stride + t0 + n] {
                        *v += b;
                    }
                }
            }
        };
        if parallel {
            dst.data
                .par_chunks_mut(ROWS_PER_TASK * dst_stride)
                .enumerate()
                .for_each(|item| task(item, ROWS_PER_TASK));
        } else {
            let all = dst.data.len();
            task((0, &mut dst.data[..all]), rows.len());
        }
    }
}

/// Products smaller than this many multiply-adds stay on the calling thread.
const PARALLEL_MACS: usize = 1 << 20;

/// A transposed 1-D convolution (weight `[in, out, k]`) upsampling by `stride` and cropping
/// `padding` samples on both sides as PyTorch does; weights laid out once as `[out·k][in]`.
pub(crate) struct DenseUpsample {
    inputs: usize,
    outputs: usize,
    taps: usize,
    stride: usize,
    padding: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// Input frames per product of the transposed convolution.
const UPSAMPLE_TILE: usize = 128;

impl DenseUpsample {
    /// `scale` multiplies the weights (not the bias).
    pub(crate) fn new(
        name: &str,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
        scale: f32,
    ) -> Result<DenseUpsample, VitsError> {
        let (inputs, outputs, taps) = weight.dims3()?;
        if stride == 0 || 2 * padding > taps + stride {
            return Err(bad(
                name,
                format!("stride {stride}, padding {padding}, kernel {taps}"),
            ));
        }
        let laid = laid_out(weight, scale, |i, o, t| (o * taps + t) * inputs + i)?;
        let bias = biases(name, bias, outputs, 1.0)?;
        Ok(DenseUpsample {
            inputs,
            outputs,
            taps,
            stride,
            padding,
            weight: laid,
            bias,
        })
    }

    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    /// How many input samples on each side (at the input's rate) one output sample depends on.
    pub(crate) fn reach(&self) -> usize {
        self.taps.div_ceil(self.stride)
    }

    /// Output length for `len` input samples.
    fn out_len(&self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        ((len - 1) * self.stride + self.taps).saturating_sub(2 * self.padding)
    }

    /// The transposed convolution of `x`, in a new signal with `margin` zeros around each row.
    /// Each task owns output channels; within it, input tiles are multiplied into columns
    /// `[channel·k + tap][frame]` which are added, shifted by `frame·stride + tap − padding`,
    /// into the output range the tile owns.
    pub(crate) fn forward(&self, x: &Signal, margin: usize) -> Signal {
        assert_eq!(x.channels, self.inputs, "upsampling input channels");
        let len = x.len;
        let out_len = self.out_len(len);
        let mut out = Signal::zeros(self.outputs, out_len, margin);
        if out_len == 0 {
            return out;
        }
        let (stride, taps, pad) = (self.stride, self.taps, self.padding);
        let out_stride = out.stride();
        let tiles = len.div_ceil(UPSAMPLE_TILE);
        let task = |(group, chunk): (usize, &mut [f32]), cols: &mut Vec<f32>| {
            let row0 = group * ROWS_PER_TASK;
            let m = chunk.len() / out_stride;
            for (r, row) in chunk.chunks_mut(out_stride).enumerate() {
                row[margin..margin + out_len].fill(self.bias[row0 + r]);
            }
            for tile in 0..tiles {
                // Outputs [o0, o1) belong to this tile; inputs [a, b) reach them.
                let o0 = tile * UPSAMPLE_TILE * stride;
                let o1 = if tile + 1 == tiles {
                    out_len
                } else {
                    (tile + 1) * UPSAMPLE_TILE * stride
                };
                if o0 >= o1 {
                    continue;
                }
                let a = (o0 + pad + 1).saturating_sub(taps).div_ceil(stride);
                let b = len.min((o1 - 1 + pad) / stride + 1);
                if a >= b {
                    continue;
                }
                let n = b - a;
                cols.resize(m * taps * n, 0.0);
                matmul(
                    cols,
                    n,
                    &self.weight[row0 * taps * self.inputs..],
                    self.inputs,
                    &x.data[x.margin + a..],
                    x.stride(),
                    (m * taps, n, self.inputs),
                    false,
                );
                for r in 0..m {
                    let row =
                        &mut chunk[r * out_stride + margin..r * out_stride + margin + out_len];
                    for tap in 0..taps {
                        let col = &cols[(r * taps + tap) * n..(r * taps + tap + 1) * n];
                        // Frame t lands on t·stride + tap − pad, kept when inside [o0, o1).
                        let lo = (o0 + pad).saturating_sub(tap).div_ceil(stride).max(a);
                        let hi = (o1 + pad).saturating_sub(tap).div_ceil(stride).min(b);
                        for t in lo..hi {
                            row[t * stride + tap - pad] += col[t - a];
                        }
                    }
                }
            }
        };
        let chunk = ROWS_PER_TASK * out_stride;
        if self.outputs * taps * len * self.inputs >= PARALLEL_MACS {
            out.data
                .par_chunks_mut(chunk)
                .enumerate()
                .for_each_init(Vec::new, |cols, item| task(item, cols));
        } else {
            let mut cols = Vec::new();
            out.data
                .chunks_mut(chunk)
                .enumerate()
                .for_each(|item| task(item, &mut cols));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic values in `[-1, 1]`.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn tensor(v: Vec<f32>, dims: &[usize]) -> Tensor {
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "at {i}: {x} vs {y}"
            );
        }
    }

    /// `[1, C, T]` plus a `[C]` bias, flattened.
    fn plus_bias(x: &Tensor, b: &Tensor) -> Vec<f32> {
        let b = b.reshape((1, b.dim(0).unwrap(), 1)).unwrap();
        let y = x.broadcast_add(&b).unwrap();
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn convolution_matches_candle() {
        for &(cin, cout, k, dil, len) in &[
            (3, 5, 3, 1, 7),
            (8, 20, 5, 2, 700),
            (17, 33, 7, 12, 1100),
            (4, 4, 1, 1, 0),
            (6, 2, 3, 3, 2),
        ] {
            let x = tensor(values(cin * len, 1), &[1, cin, len]);
            let w = tensor(values(cout * cin * k, 2), &[cout, cin, k]);
            let b = tensor(values(cout, 3), &[cout]);
            let pad = (k - 1) / 2 * dil;
            let want = if len == 0 {
                Vec::new()
            } else {
                plus_bias(&x.conv1d(&w, pad, 1, dil, 1).unwrap(), &b)
            };
            let conv = DenseConv::new("w", &w, Some(&b), dil, 1.0).unwrap();
            let got = conv.forward(&Signal::from_tensor(&x, pad + 1).unwrap(), 2);
            close(&got.to_vec(), &want);
            // A part of the outputs accumulated onto what is there.
            let mut part = Signal::zeros(cout - 1, len, 0);
            part.for_rows(|_, r| r.fill(1.0));
            conv.accumulate(&Signal::from_tensor(&x, pad).unwrap(), 1..cout, &mut part);
            let shifted: Vec<f32> = want[len.min(want.len())..]
                .iter()
                .map(|v| v + 1.0)
                .collect();
            close(&part.to_vec(), &shifted);
        }
    }

    #[test]
    fn the_direct_kernel_equals_the_matrix_products() {
        for &(cin, cout, k, dil, len) in &[
            (32, 32, 7, 12, 1_300),
            (64, 64, 3, 2, 517),
            (32, 1, 7, 1, 2_000),
            (20, 36, 5, 1, 45),
            (192, 40, 5, 1, 301),
        ] {
            let w = tensor(values(cout * cin * k, 21), &[cout, cin, k]);
            let b = tensor(values(cout, 22), &[cout]);
            let direct = DenseConv::new("w", &w, Some(&b), dil, 1.0).unwrap();
            let mut products = DenseConv::new("w", &w, Some(&b), dil, 1.0).unwrap();
            assert!(direct.packed.is_some());
            products.packed = None;
            let reach = direct.reach();
            let x =
                Signal::from_tensor(&tensor(values(cin * len, 23), &[1, cin, len]), reach).unwrap();
            // A window cut at odd places, into the middle of a longer output, on one thread
            // and with the channels spread over threads.
            let (from, n) = (len / 3 + 1, len / 2 - 3);
            for parallel in [false, true] {
                let mut want = Signal::zeros(cout, len + 10, 1);
                want.for_rows(|c, r| r.fill(c as f32));
                let mut got = want.clone();
                products.accumulate_window(&x, from, n, &mut want, 7, parallel);
                direct.accumulate_window(&x, from, n, &mut got, 7, parallel);
                close(&got.to_vec(), &want.to_vec());
            }
            // The output channels from the second register block on.
            if cout > BLOCK_ROWS {
                let mut want = Signal::zeros(cout - BLOCK_ROWS, len, 0);
                let mut got = want.clone();
                products.accumulate(&x, BLOCK_ROWS..cout, &mut want);
                direct.accumulate(&x, BLOCK_ROWS..cout, &mut got);
                close(&got.to_vec(), &want.to_vec());
            }
        }
    }

    #[test]
    fn transposed_convolution_matches_candle() {
        for &(cin, cout, stride, k, len) in &[
            (4, 3, 2, 4, 5),
            (16, 24, 8, 16, 300),
            (9, 5, 4, 8, 129),
            (3, 2, 3, 5, 1),
        ] {
            let pad = (k - stride) / 2;
            let x = tensor(values(cin * len, 4), &[1, cin, len]);
            let w = tensor(values(cin * cout * k, 5), &[cin, cout, k]);
            let b = tensor(values(cout, 6), &[cout]);
            let full = x.conv_transpose1d(&w, 0, 0, stride, 1, 1).unwrap();
            let out = full.dim(2).unwrap() - 2 * pad;
            let want = plus_bias(&full.narrow(2, pad, out).unwrap(), &b);
            let up = DenseUpsample::new("w", &w, &b, stride, pad, 1.0).unwrap();
            let got = up.forward(&Signal::from_tensor(&x, 1).unwrap(), 3);
            assert_eq!(got.len(), out);
            close(&got.to_vec(), &want);
        }
    }

    #[test]
    fn exp_tanh_and_sigmoid_match_the_standard_library() {
        for i in -20_000..=20_000 {
            let x = i as f32 / 200.0;
            let e = f64::from(x).exp();
            if e > 1e-30 && e < 1e30 {
                let rel = (f64::from(exp(x)) - e).abs() / e;
                assert!(rel < 1e-6, "exp({x}): {} vs {e}", exp(x));
            }
            assert!((tanh(x) - x.tanh()).abs() < 1e-6, "tanh({x})");
            assert!(
                (sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-6,
                "sigmoid({x})"
            );
        }
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite() && tanh(1000.0) == 1.0 && tanh(-1000.0) == -1.0);
    }

    #[test]
    fn flipping_reverses_the_channels() {
        let mut s = Signal::from_tensor(&tensor(values(15, 7), &[1, 5, 3]), 1).unwrap();
        let rows: Vec<Vec<f32>> = (0..5).map(|c| s.row(c).to_vec()).collect();
        s.flip_channels();
        for c in 0..5 {
            assert_eq!(s.row(c), rows[4 - c].as_slice());
        }
    }
}
