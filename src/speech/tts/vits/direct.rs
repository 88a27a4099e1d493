//! A direct 1-D convolution kernel for the voice's convolutions, above all the decoder's narrow
//! ones (the 32- and 64-channel stages, two thirds of its multiply-adds), where one matrix
//! product per tap has too little depth (32–64) for a matrix kernel to reach speed. Here a
//! block of output channels × columns stays in registers while every tap and every input
//! channel is multiplied into it, so the depth of each block is taps × inputs and nothing is
//! packed per call.
//!
//! On the x86-64-v3 build the blocks are AVX2/FMA instructions; elsewhere (ARM) they are plain
//! array arithmetic of fixed widths, which the compiler turns into vector instructions; both
//! are tested against a plain convolution. The weights are regrouped once at load so each step
//! reads one small run of them.

/// Output channels per register block.
pub(crate) const BLOCK_ROWS: usize = 4;
/// Columns per vector.
const LANES: usize = 8;
/// Vectors per output channel in the main block: `BLOCK_ROWS × WIDE` accumulators (12 vector
/// registers on AVX2) plus the operands fit the 16 registers.
const WIDE: usize = 3;
/// Output columns per pass over the block rows: the input columns they read stay in L1 while
/// each block of output channels goes over them.
const COLUMNS_PER_PASS: usize = 16 * LANES * WIDE;

/// `a · b + c`, fused where the target has it (one instruction and one rounding), else as a
/// product and a sum.
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
    {
        a * b + c
    }
}

/// A convolution's weights regrouped for the kernel: `[outputs / BLOCK_ROWS][tap][input]
/// [BLOCK_ROWS]`, the rows past the last output zero.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeights {
    outputs: usize,
    inputs: usize,
    taps: usize,
    data: Vec<[f32; BLOCK_ROWS]>,
}

impl PackedWeights {
    /// From weights laid out `[tap][output][input]`.
    pub(crate) fn new(weight: &[f32], outputs: usize, inputs: usize, taps: usize) -> PackedWeights {
        assert_eq!(weight.len(), outputs * inputs * taps, "weight shape");
        let blocks = outputs.div_ceil(BLOCK_ROWS);
        let mut data = vec![[0.0; BLOCK_ROWS]; blocks * taps * inputs];
        for o in 0..outputs {
            for tap in 0..taps {
                for i in 0..inputs {
                    data[((o / BLOCK_ROWS) * taps + tap) * inputs + i][o % BLOCK_ROWS] =
                        weight[(tap * outputs + o) * inputs + i];
                }
            }
        }
        PackedWeights {
            outputs,
            inputs,
            taps,
            data,
        }
    }

    /// The weights of the block of outputs starting at `BLOCK_ROWS · block`.
    fn block(&self, block: usize) -> &[[f32; BLOCK_ROWS]] {
        let size = self.taps * self.inputs;
        &self.data[block * size..(block + 1) * size]
    }
}

/// The input of one call: row `i` of the input starts at `data[i · stride]`, where the first
/// tap of output column 0 reads; tap `k` of column `t` reads `data[i · stride + k · dilation + t]`.
#[derive(Clone, Copy)]
pub(crate) struct Input<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) stride: usize,
    pub(crate) dilation: usize,
}

/// Where one call's outputs go: output channel `first_row + r`, column `t` is
/// `data[r · stride + t]`.
pub(crate) struct Output<'a> {
    pub(crate) data: &'a mut [f32],
    pub(crate) stride: usize,
    pub(crate) first_row: usize,
    pub(crate) rows: usize,
}

/// `out += bias + conv(x)` over `len` columns for the output channels `out.first_row ..
/// out.first_row + out.rows` (`first_row` a multiple of `BLOCK_ROWS`).
pub(crate) fn accumulate(
    w: &PackedWeights,
    bias: &[f32],
    x: Input<'_>,
    out: Output<'_>,
    len: usize,
) {
    accumulate_with(w, bias, x, out, len, Blocks::Fastest);
}

/// Which code computes the register blocks.
#[derive(Clone, Copy, PartialEq)]
enum Blocks {
    /// The target's own vector instructions where written for it, else `Portable`.
    Fastest,
    /// Fixed-width array arithmetic for any target.
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

fn accumulate_with(
    w: &PackedWeights,
    bias: &[f32],
    x: Input<'_>,
    out: Output<'_>,
    len: usize,
    blocks: Blocks,
) {
    let Output {
        data: dst,
        stride: dst_stride,
        first_row,
        rows,
    } = out;
    if len == 0 || rows == 0 {
        return;
    }
    assert!(
        first_row.is_multiple_of(BLOCK_ROWS)
            && first_row + rows <= w.outputs
            && bias.len() >= w.outputs,
        "direct convolution rows {first_row}+{rows} of {}",
        w.outputs
    );
    let reach = (w.taps - 1) * x.dilation;
    assert!(
        w.inputs == 0 || (w.inputs - 1) * x.stride + reach + len <= x.data.len(),
        "direct convolution input out of bounds"
    );
    assert!(
        (rows - 1) * dst_stride + len <= dst.len(),
        "direct convolution output out of bounds"
    );
    let wide = |weights: &[[f32; BLOCK_ROWS]], c: usize| match blocks {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        Blocks::Fastest => avx2::block::<WIDE>(weights, x, w.inputs, c),
        _ => block::<WIDE>(weights, x, w.inputs, c),
    };
    let narrow = |weights: &[[f32; BLOCK_ROWS]], c: usize| match blocks {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        Blocks::Fastest => avx2::block::<1>(weights, x, w.inputs, c),
        _ => block::<1>(weights, x, w.inputs, c),
    };
    for c0 in (0..len).step_by(COLUMNS_PER_PASS) {
        let c1 = len.min(c0 + COLUMNS_PER_PASS);
        for r0 in (0..rows).step_by(BLOCK_ROWS) {
            let block_rows = BLOCK_ROWS.min(rows - r0);
            let weights = w.block((first_row + r0) / BLOCK_ROWS);
            let bias = &bias[first_row + r0..first_row + r0 + block_rows];
            let mut c = c0;
            while c + LANES * WIDE <= c1 {
                store(
                    &wide(weights, c),
                    bias,
                    &mut dst[r0 * dst_stride + c..],
                    dst_stride,
                );
                c += LANES * WIDE;
            }
            while c + LANES <= c1 {
                store(
                    &narrow(weights, c),
                    bias,
                    &mut dst[r0 * dst_stride + c..],
                    dst_stride,
                );
                c += LANES;
            }
            for t in c..c1 {
                let sums = column(weights, x, w.inputs, t);
                for (r, (sum, b)) in sums.iter().zip(bias).enumerate() {
                    dst[(r0 + r) * dst_stride + t] += sum + b;
                }
            }
        }
    }
}

/// The sums of one block of output channels over `V` vectors of columns from `column` (the
/// input's bounds checked by the caller for `column + V · LANES` columns).
#[inline(always)]
fn block<const V: usize>(
    weights: &[[f32; BLOCK_ROWS]],
    x: Input<'_>,
    inputs: usize,
    column: usize,
) -> [[[f32; LANES]; V]; BLOCK_ROWS] {
    let mut acc = [[[0.0f32; LANES]; V]; BLOCK_ROWS];
    if inputs == 0 {
        return acc;
    }
    for (tap, tap_weights) in weights.chunks_exact(inputs).enumerate() {
        let rows = &x.data[column + tap * x.dilation..];
        for (i, w) in tap_weights.iter().enumerate() {
            let row = &rows[i * x.stride..i * x.stride + LANES * V];
            // The columns first, then one weight at a time: the accumulators, the columns and
            // one broadcast weight fit the registers.
            let xv: [[f32; LANES]; V] =
                std::array::from_fn(|v| std::array::from_fn(|l| row[v * LANES + l]));
            for (acc_row, &wr) in acc.iter_mut().zip(w) {
                for (acc_v, lanes) in acc_row.iter_mut().zip(&xv) {
                    for (a, &xl) in acc_v.iter_mut().zip(lanes) {
                        *a = madd(wr, xl, *a);
                    }
                }
            }
        }
    }
    acc
}

/// `block` in AVX2 and FMA instructions, for the x86-64-v3 build.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    use super::{Input, BLOCK_ROWS, LANES};

    /// `super::block`, with the same bounds: the caller has checked that the input holds
    /// `(inputs − 1) · stride + (taps − 1) · dilation + column + V · LANES` values, and
    /// `weights` has `taps · inputs` rows.
    #[inline(always)]
    pub(super) fn block<const V: usize>(
        weights: &[[f32; BLOCK_ROWS]],
        x: Input<'_>,
        inputs: usize,
        column: usize,
    ) -> [[[f32; LANES]; V]; BLOCK_ROWS] {
        let mut out = [[[0.0f32; LANES]; V]; BLOCK_ROWS];
        if inputs == 0 {
            return out;
        }
        let taps = weights.len() / inputs;
        let last = (inputs - 1) * x.stride + (taps - 1) * x.dilation + column + V * LANES;
        assert!(
            last <= x.data.len(),
            "direct convolution block out of bounds"
        );
        // SAFETY: the instructions are those of the build's target (this module is compiled
        // only when it has AVX2 and FMA); the reads stay within `x.data` (asserted above: row
        // `i` of tap `k` starts at `column + k · dilation + i · stride` and `V · LANES` values
        // are read from it) and within `weights` (`taps · inputs` rows, one per step); each
        // store writes one array of `LANES` (8) values.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); V]; BLOCK_ROWS];
            let mut w = weights.as_ptr();
            for tap in 0..taps {
                let mut row = x.data.as_ptr().wrapping_add(column + tap * x.dilation);
                for _ in 0..inputs {
                    let mut xv = [_mm256_setzero_ps(); V];
                    for (v, lanes) in xv.iter_mut().enumerate() {
                        // A plain read of 8 values (align 4), not `_mm256_loadu_ps`, whose
                        // debug build checks its copy on every call.
                        let values = *(row.wrapping_add(v * LANES) as *const [f32; LANES]);
                        *lanes = std::mem::transmute::<[f32; LANES], __m256>(values);
                    }
                    for (acc_row, wv) in acc.iter_mut().zip(&*w) {
                        let b = _mm256_broadcast_ss(wv);
                        for (a, &xl) in acc_row.iter_mut().zip(&xv) {
                            *a = _mm256_fmadd_ps(b, xl, *a);
                        }
                    }
                    w = w.wrapping_add(1);
                    row = row.wrapping_add(x.stride);
                }
            }
            for (out_row, acc_row) in out.iter_mut().zip(&acc) {
                for (o, &a) in out_row.iter_mut().zip(acc_row) {
                    _mm256_storeu_ps(o.as_mut_ptr(), a);
                }
            }
        }
        out
    }
}

/// The sums of one block of output channels at one column (the tail of a call).
fn column(
    weights: &[[f32; BLOCK_ROWS]],
    x: Input<'_>,
    inputs: usize,
    t: usize,
) -> [f32; BLOCK_ROWS] {
    let mut acc = [0.0f32; BLOCK_ROWS];
    if inputs == 0 {
        return acc;
    }
    for (tap, tap_weights) in weights.chunks_exact(inputs).enumerate() {
        let rows = &x.data[t + tap * x.dilation..];
        for (i, w) in tap_weights.iter().enumerate() {
            let value = rows[i * x.stride];
            for (a, &wr) in acc.iter_mut().zip(w) {
                *a = madd(wr, value, *a);
            }
        }
    }
    acc
}

/// `dst[r · stride + c] += acc[r][c] + bias[r]` for the rows `bias` has.
#[inline(always)]
fn store<const V: usize>(
    acc: &[[[f32; LANES]; V]; BLOCK_ROWS],
    bias: &[f32],
    dst: &mut [f32],
    stride: usize,
) {
    for (r, (acc_row, &b)) in acc.iter().zip(bias).enumerate() {
        let out = &mut dst[r * stride..r * stride + LANES * V];
        for (o, &a) in out.iter_mut().zip(acc_row.iter().flatten()) {
            *o += a + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dense::tests::values;
    use super::*;

    /// `out[o][t] += bias[o] + Σ w[tap][o][i] · x[i][t + tap · dilation]`, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        weight: &[f32],
        bias: &[f32],
        (outputs, inputs, taps, dilation): (usize, usize, usize, usize),
        x: &[f32],
        x_stride: usize,
        out: &mut [f32],
        out_stride: usize,
        len: usize,
    ) {
        for o in 0..outputs {
            for t in 0..len {
                let mut sum = f64::from(bias[o]);
                for tap in 0..taps {
                    for i in 0..inputs {
                        sum += f64::from(weight[(tap * outputs + o) * inputs + i])
                            * f64::from(x[i * x_stride + t + tap * dilation]);
                    }
                }
                out[o * out_stride + t] += sum as f32;
            }
        }
    }

    #[test]
    fn the_kernel_equals_a_plain_convolution() {
        // Widths that end on every kind of tail: whole blocks, 8-column vectors, single columns.
        for &(outputs, inputs, taps, dilation, len) in &[
            (4, 4, 3, 1, 24),
            (32, 32, 7, 12, 1_100),
            (64, 64, 5, 6, 397),
            (5, 3, 1, 1, 31),
            (1, 32, 7, 1, 130),
            (9, 17, 3, 2, 7),
            (6, 2, 3, 3, 1),
            (8, 8, 3, 1, 0),
        ] {
            let weight = values(outputs * inputs * taps, 11);
            let bias = values(outputs, 12);
            let reach = (taps - 1) * dilation;
            // Rows with a few spare columns, so reads past a row would show as wrong sums.
            let x_stride = len + reach + 5;
            let x = values(inputs * x_stride, 13);
            let out_stride = len + 3;
            let before = values(outputs * out_stride, 14);
            let mut want = before.clone();
            reference(
                &weight,
                &bias,
                (outputs, inputs, taps, dilation),
                &x,
                x_stride,
                &mut want,
                out_stride,
                len,
            );
            let packed = PackedWeights::new(&weight, outputs, inputs, taps);
            // All the rows at once, and the rows from the second block on, with the target's
            // instructions and with the portable arithmetic.
            for (first_row, blocks) in [0, BLOCK_ROWS]
                .into_iter()
                .flat_map(|r| [(r, Blocks::Fastest), (r, Blocks::Portable)])
            {
                if first_row >= outputs {
                    continue;
                }
                let mut got = before.clone();
                accumulate_with(
                    &packed,
                    &bias,
                    Input {
                        data: &x,
                        stride: x_stride,
                        dilation,
                    },
                    Output {
                        data: &mut got[first_row * out_stride..],
                        stride: out_stride,
                        first_row,
                        rows: outputs - first_row,
                    },
                    len,
                    blocks,
                );
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let w = if i < first_row * out_stride {
                        &before[i]
                    } else {
                        w
                    };
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()) * (taps * inputs) as f32,
                        "{outputs}×{inputs}×{taps} dilation {dilation}, len {len}, \
                         rows from {first_row}: at {i}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
