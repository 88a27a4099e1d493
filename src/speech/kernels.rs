//! The f32 kernels of the Whisper-style audio encoders (speech to text and Smart Turn): matrix
//! products on the `gemm` crate (the kernels candle itself uses) over strided views of plain
//! buffers, so that attention heads, convolution taps and transposes need no copies, and the
//! element-wise steps (GELU, softmax, layer norm, tanh) as loops the compiler vectorizes, with
//! `exp` and `erf` as polynomials (libm's are scalar calls). Matrix-vector products of q8_0
//! rows ([`Q8Matrix`], for one-token decoder steps) run on 8-bit integer dot products.
//!
//! Where asked ([`Products::Bf16Tiles`]) and the CPU has Intel's AMX, the products run on its tile
//! unit in bf16 instead ([`super::amx`]).
//!
//! Each f32 matrix product uses as many threads as candle's own do
//! ([`candle_core::utils::get_num_threads`], set per process by
//! [`super::scheduler::apply_candle_threads`]).

/// A read-only matrix operand: element `(r, c)` is `data[r · row_stride + c · col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix whose rows start `row_stride` apart.
    pub(crate) fn rows(data: &'a [f32], row_stride: usize) -> View<'a> {
        View {
            data,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of [`View::rows`]: element `(r, c)` is row `c`'s `r`-th value.
    pub(crate) fn transposed(data: &'a [f32], row_stride: usize) -> View<'a> {
        View {
            data,
            row_stride: 1,
            col_stride: row_stride,
        }
    }

    pub(crate) fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

fn parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst[m × n] = (dst if accumulate, else 0) + lhs[m × k] · rhs[k × n]`, `dst` row-major with
/// rows `dst_row_stride` apart, on candle's thread count.
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    matmul_strided(
        dst,
        (dst_row_stride, 1),
        lhs,
        rhs,
        (m, n, k),
        accumulate,
        parallelism(),
    );
}

/// [`matmul`] with `dst`'s strides given as `(rows, columns)` and the threads chosen by the
/// caller. The bounds of every operand are checked here, so the one unsafe call stays inside
/// them.
pub(crate) fn matmul_strided(
    dst: &mut [f32],
    (dst_row_stride, dst_col_stride): (usize, usize),
    lhs: View<'_>,
    rhs: View<'_>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let dst_view = View {
        data: dst,
        row_stride: dst_row_stride,
        col_stride: dst_col_stride,
    };
    assert!(
        dst_view.holds(m, n) && lhs.holds(m, k) && rhs.holds(k, n),
        "matrix product operands out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                for col in 0..n {
                    dst[row * dst_row_stride + col * dst_col_stride] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: every element gemm touches, `(r, c)` at `r · row_stride + c · col_stride` for the
    // rows and columns of each operand, lies inside its slice (asserted above); `dst` is a
    // unique borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_col_stride as isize,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Which unit an encoder's matrix products run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Products {
    /// f32 operands on `gemm`.
    F32,
    /// Operands rounded to bf16, sums in f32, on the CPU's AMX tile unit.
    Bf16Tiles,
}

impl Products {
    /// bf16 tiles if `wanted` and the CPU and kernel offer them, f32 otherwise.
    pub(crate) fn tiles_if_available(wanted: bool) -> Products {
        if wanted && super::amx::available() {
            Products::Bf16Tiles
        } else {
            Products::F32
        }
    }

    /// `dst[m × n] = lhs[m × k] · rhs[k × n]` ([`matmul`]) on this unit; for the tiles, `rhs`
    /// is packed on every call.
    pub(crate) fn product(
        self,
        dst: &mut [f32],
        dst_row_stride: usize,
        lhs: View<'_>,
        rhs: View<'_>,
        (m, n, k): (usize, usize, usize),
    ) {
        match self {
            Products::F32 => matmul(dst, dst_row_stride, lhs, rhs, (m, n, k), false),
            Products::Bf16Tiles => {
                let rhs = super::amx::PackedRhs::pack(rhs, k, n);
                super::amx::matmul(dst, (dst_row_stride, 1), lhs, &rhs, m, false);
            }
        }
    }
}

/// A dense layer `y = x · W + b`.
pub(crate) struct Dense {
    weight: Weight,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// A dense layer's `W`, as the unit its products run on reads it.
enum Weight {
    /// `[inputs, outputs]` (row-major), the layout `gemm` reads fastest.
    F32(Vec<f32>),
    /// Rounded to bf16 and packed for [`Products::Bf16Tiles`].
    Bf16Tiles(super::amx::PackedRhs),
}

impl Weight {
    /// The f32 values, for building a layer from others (a packed layer is built already).
    fn f32_values(&self) -> &[f32] {
        match self {
            Weight::F32(values) => values,
            Weight::Bf16Tiles(_) => panic!("a layer packed for the tiles is built already"),
        }
    }
}

impl Dense {
    /// From PyTorch's layout: `weight` `[outputs, inputs]` row-major, `bias` `[outputs]`.
    pub(crate) fn from_torch(weight: &[f32], bias: Vec<f32>, inputs: usize) -> Dense {
        let outputs = bias.len();
        assert_eq!(weight.len(), inputs * outputs, "weight of a dense layer");
        let mut transposed = vec![0.0; weight.len()];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                transposed[i * outputs + o] = w;
            }
        }
        Dense {
            weight: Weight::F32(transposed),
            bias,
            inputs,
            outputs,
        }
    }

    /// candle's `Linear` named `prefix` in `vb` (no bias: zeros).
    pub(crate) fn load(
        vb: &candle_nn::VarBuilder,
        (inputs, outputs): (usize, usize),
        with_bias: bool,
    ) -> candle_core::Result<Dense> {
        let weight = vb.get((outputs, inputs), "weight")?;
        let bias = if with_bias {
            vb.get(outputs, "bias")?.to_vec1::<f32>()?
        } else {
            vec![0.0; outputs]
        };
        Ok(Dense::from_torch(
            &weight.flatten_all()?.to_vec1::<f32>()?,
            bias,
            inputs,
        ))
    }

    /// Several layers on the same input as one: their outputs side by side.
    pub(crate) fn concat(parts: &[Dense]) -> Dense {
        let inputs = parts[0].inputs;
        assert!(parts.iter().all(|p| p.inputs == inputs));
        let outputs = parts.iter().map(|p| p.outputs).sum();
        let mut weight = Vec::with_capacity(inputs * outputs);
        for i in 0..inputs {
            for p in parts {
                weight.extend_from_slice(&p.weight.f32_values()[i * p.outputs..][..p.outputs]);
            }
        }
        Dense {
            weight: Weight::F32(weight),
            bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
            inputs,
            outputs,
        }
    }

    /// Multiplies weights and bias by `factor` (folds a scale of the output into the layer).
    pub(crate) fn scaled(mut self, factor: f32) -> Dense {
        let Weight::F32(values) = &mut self.weight else {
            panic!("scale a layer before packing it for the tiles");
        };
        values.iter_mut().for_each(|w| *w *= factor);
        self.bias.iter_mut().for_each(|b| *b *= factor);
        self
    }

    /// The layer with its products on `products` ([`Dense::put_on`]).
    pub(crate) fn on(mut self, products: Products) -> Dense {
        self.put_on(products);
        self
    }

    /// Runs the layer's products on `products`: for the tiles, the weight is packed once in
    /// place of its f32 values.
    pub(crate) fn put_on(&mut self, products: Products) {
        if let (Products::Bf16Tiles, Weight::F32(values)) = (products, &self.weight) {
            let packed = super::amx::PackedRhs::pack(
                View::rows(values, self.outputs),
                self.inputs,
                self.outputs,
            );
            self.weight = Weight::Bf16Tiles(packed);
        }
    }

    pub(crate) fn outputs(&self) -> usize {
        self.outputs
    }

    /// `dst[rows × outputs] = (dst if accumulate, else 0) + x[rows × inputs] · W + b`.
    pub(crate) fn forward_into(&self, x: &[f32], rows: usize, dst: &mut [f32], accumulate: bool) {
        self.forward_rows_into(View::rows(x, self.inputs), rows, dst, accumulate);
    }

    /// [`Dense::forward_into`] on input rows `x` (of `inputs` values, with `x`'s strides: rows
    /// may overlap, as a convolution's stacked taps do).
    pub(crate) fn forward_rows_into(
        &self,
        x: View<'_>,
        rows: usize,
        dst: &mut [f32],
        accumulate: bool,
    ) {
        let dst = &mut dst[..rows * self.outputs];
        for row in dst.chunks_exact_mut(self.outputs) {
            if accumulate {
                row.iter_mut().zip(&self.bias).for_each(|(y, b)| *y += b);
            } else {
                row.copy_from_slice(&self.bias);
            }
        }
        match &self.weight {
            Weight::Bf16Tiles(packed) => {
                super::amx::matmul(dst, (self.outputs, 1), x, packed, rows, true)
            }
            Weight::F32(values) => matmul(
                dst,
                self.outputs,
                x,
                View::rows(values, self.outputs),
                (rows, self.outputs, self.inputs),
                true,
            ),
        }
    }

    /// `x[rows × inputs] · W + b` in a new buffer.
    pub(crate) fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0.0; rows * self.outputs];
        self.forward_into(x, rows, &mut y, false);
        y
    }
}

/// Values in a q8_0 block: 32 8-bit integers sharing one f32 scale.
pub(crate) const Q8_BLOCK: usize = 32;

/// A vector rounded to q8_0 (ggml's rounding: each block's scale is its largest magnitude over
/// 127, each value the nearest multiple of it), for products with a [`Q8Matrix`].
pub(crate) struct Q8Vector {
    quants: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Vector {
    /// Rounds `values` (a multiple of 32 long).
    pub(crate) fn quantize(values: &[f32]) -> Q8Vector {
        assert!(
            values.len().is_multiple_of(Q8_BLOCK),
            "q8_0 of {} values",
            values.len()
        );
        let mut quants = vec![0i8; values.len()];
        let mut scales = Vec::with_capacity(values.len() / Q8_BLOCK);
        for (block, q) in values
            .chunks_exact(Q8_BLOCK)
            .zip(quants.chunks_exact_mut(Q8_BLOCK))
        {
            let largest = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = largest / 127.0;
            let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
            for (q, &v) in q.iter_mut().zip(block) {
                *q = (v * inverse).round().clamp(-127.0, 127.0) as i8;
            }
            scales.push(scale);
        }
        Q8Vector { quants, scales }
    }

    pub(crate) fn len(&self) -> usize {
        self.quants.len()
    }
}

/// A matrix whose rows are stored as q8_0 ([`Q8Vector`]'s rounding), for matrix-vector
/// products that read a quarter of f32's bytes: `Σ_blocks scale_row · scale_x · Σ q_row · q_x`,
/// the 32-value integer dot products exact.
pub(crate) struct Q8Matrix {
    /// `[rows, cols]`, row-major.
    quants: Vec<i8>,
    /// `[rows, cols / 32]`.
    scales: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Q8Matrix {
    /// Rounds `values` (`[rows, cols]` row-major, `cols` a multiple of 32). Values that are
    /// already q8_0 (dequantized) come back exactly.
    pub(crate) fn quantize(values: &[f32], cols: usize) -> Q8Matrix {
        assert!(
            cols > 0 && values.len().is_multiple_of(cols),
            "{} values in rows of {cols}",
            values.len()
        );
        let Q8Vector { quants, scales } = Q8Vector::quantize(values);
        Q8Matrix {
            quants,
            scales,
            rows: values.len() / cols,
            cols,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// The values again (`[rows, cols]`).
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        self.quants
            .chunks_exact(Q8_BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, &s)| q.iter().map(move |&q| f32::from(q) * s))
            .collect()
    }

    /// `out[r] = Σ_c M[r, c] · x[c]`.
    pub(crate) fn product_into(&self, x: &Q8Vector, out: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "q8_0 product of {} columns", x.len());
        let blocks = self.cols / Q8_BLOCK;
        let out = &mut out[..self.rows];
        let quads = self.rows / 4 * 4;
        let (quad_out, rest_out) = out.split_at_mut(quads);
        let rows = self.quants.chunks_exact(4 * self.cols);
        let scales = self.scales.chunks_exact(4 * blocks);
        let ahead = PREFETCH_QUADS * 4 * self.cols;
        for (i, ((out, q), s)) in quad_out
            .chunks_exact_mut(4)
            .zip(rows)
            .zip(scales)
            .enumerate()
        {
            if let Some(next) = self.quants.get(i * 4 * self.cols + ahead..) {
                prefetch(&next[..next.len().min(4 * self.cols)]);
                let next = &self.scales[(i + PREFETCH_QUADS) * 4 * blocks..];
                prefetch(&next[..next.len().min(4 * blocks)]);
            }
            out.copy_from_slice(&q8_dot4(q, s, x));
        }
        let q = self.quants[quads * self.cols..].chunks_exact(self.cols);
        let s = self.scales[quads * blocks..].chunks_exact(blocks);
        for ((out, q), s) in rest_out.iter_mut().zip(q).zip(s) {
            *out = q8_dot(q, s, x);
        }
    }
}

/// How far ahead of the rows being multiplied [`Q8Matrix::product_into`] asks for the next ones
/// (in groups of four rows): the product is bound by reading the matrix, and the hint halved
/// its time on a 51864 × 384 matrix (3.4 → 1.7 ms on this Xeon, loaded).
const PREFETCH_QUADS: usize = 4;

/// Hints the CPU to bring `values` into its caches.
fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(64 / std::mem::size_of::<T>()) {
        // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// One q8_0 row's dot product with `x`.
fn q8_dot(row: &[i8], scales: &[f32], x: &Q8Vector) -> f32 {
    row.chunks_exact(Q8_BLOCK)
        .zip(x.quants.chunks_exact(Q8_BLOCK))
        .zip(scales.iter().zip(&x.scales))
        .map(|((a, b), (&sa, &sb))| {
            let dot: i32 = a
                .iter()
                .zip(b)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            sa * sb * dot as f32
        })
        .sum()
}

/// Four consecutive q8_0 rows' dot products with `x` (`rows` `[4, cols]`, `scales`
/// `[4, cols / 32]`), reading each block of `x` once for the four.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
fn q8_dot4(rows: &[i8], scales: &[f32], x: &Q8Vector) -> [f32; 4] {
    // SAFETY: this build targets AVX2 and FMA (the cfg above), so the CPU has them.
    unsafe { q8_dot4_avx2(rows, scales, x) }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[target_feature(enable = "avx2,fma")]
fn q8_dot4_avx2(rows: &[i8], scales: &[f32], x: &Q8Vector) -> [f32; 4] {
    use std::arch::x86_64::*;
    let cols = x.quants.len();
    let blocks = x.scales.len();
    assert!(rows.len() == 4 * cols && scales.len() == 4 * blocks);
    // 32 bytes from a slice of at least 32.
    let load = |v: &[i8]| -> __m256i {
        let v: &[i8; 32] = v[..32].try_into().expect("32 bytes");
        // SAFETY: same size, no alignment requirement for the value. (Not `_mm256_loadu_si256`:
        // its copy's precondition checks, on in debug-assertion builds, cost a stack round trip.)
        unsafe { std::mem::transmute::<[i8; 32], __m256i>(*v) }
    };
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, (xq, &xs)) in x.quants.chunks_exact(Q8_BLOCK).zip(&x.scales).enumerate() {
        let xv = load(xq);
        for (r, acc) in acc.iter_mut().enumerate() {
            let w = load(&rows[r * cols + b * Q8_BLOCK..]);
            // |w| · (x with w's sign): unsigned by signed bytes, pairwise summed to 16 bits
            // (at most 2 · 127 · 127, no saturation), then to 32 bits.
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(scales[r * blocks + b] * xs), sums, *acc);
        }
    }
    acc.map(|v| {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    })
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
fn q8_dot4(rows: &[i8], scales: &[f32], x: &Q8Vector) -> [f32; 4] {
    let (cols, blocks) = (x.quants.len(), x.scales.len());
    std::array::from_fn(|r| {
        q8_dot(
            &rows[r * cols..][..cols],
            &scales[r * blocks..][..blocks],
            x,
        )
    })
}

/// A layer norm over rows of `gamma.len()` values.
pub(crate) struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    pub(crate) fn new(gamma: Vec<f32>, beta: Vec<f32>, eps: f64) -> Norm {
        assert_eq!(gamma.len(), beta.len());
        Norm {
            gamma,
            beta,
            eps: eps as f32,
        }
    }

    /// candle's `LayerNorm` named by `vb`.
    pub(crate) fn load(
        vb: &candle_nn::VarBuilder,
        width: usize,
        eps: f64,
    ) -> candle_core::Result<Norm> {
        Ok(Norm::new(
            vb.get(width, "weight")?.to_vec1::<f32>()?,
            vb.get(width, "bias")?.to_vec1::<f32>()?,
            eps,
        ))
    }

    /// Normalizes each row of `x` into the same row of `out`.
    pub(crate) fn forward_into(&self, x: &[f32], out: &mut [f32]) {
        let width = self.gamma.len();
        for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let mean = sum(row) / width as f32;
            let mut squares = [0f32; LANES];
            let mut chunks = row.chunks_exact(LANES);
            for chunk in &mut chunks {
                for (s, &v) in squares.iter_mut().zip(chunk) {
                    *s += (v - mean) * (v - mean);
                }
            }
            let tail: f32 = chunks
                .remainder()
                .iter()
                .map(|&v| (v - mean) * (v - mean))
                .sum();
            let variance = (squares.iter().sum::<f32>() + tail) / width as f32;
            let scale = 1.0 / (variance + self.eps).sqrt();
            for (((o, &v), &g), &b) in out.iter_mut().zip(row).zip(&self.gamma).zip(&self.beta) {
                *o = (v - mean) * scale * g + b;
            }
        }
    }

    pub(crate) fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        self.forward_into(x, &mut out);
        out
    }
}

/// Accumulators a reduction keeps side by side, so that it vectorizes.
const LANES: usize = 16;

fn sum(values: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        acc.iter_mut().zip(chunk).for_each(|(a, &v)| *a += v);
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// The dot product of two rows of the same length.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot product of rows of different lengths");
    let mut acc = [0f32; LANES];
    let mut pairs = a.chunks_exact(LANES).zip(b.chunks_exact(LANES));
    for (x, y) in &mut pairs {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let tail = a.len() - a.len() % LANES;
    let rest: f32 = a[tail..].iter().zip(&b[tail..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + rest
}

fn max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        acc.iter_mut()
            .zip(chunk)
            .for_each(|(a, &v)| *a = if v > *a { v } else { *a });
    }
    chunks
        .remainder()
        .iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `e^x` within 2 ulp for `x` in [−87, 88]; below, `e^−87` (about 1.6·10⁻³⁸), above, `e^88`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    // x = n·ln 2 + r, |r| ≤ ln 2 / 2, with ln 2 split so that n·LN2_HI is exact.
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series of e^r to degree 7: relative error below 6e-9 on |r| ≤ 0.35.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n built from its bits: n + 127 lands in the low mantissa bits of 2^23 + 127 + n (exact
    // for |n| < 2^22), and the shift moves it to the exponent, dropping the rest. No integer
    // conversion or checked addition, so that the loops calling this vectorize.
    p * f32::from_bits((n + 8_388_735.0).to_bits() << 23)
}

/// The error function within 5·10⁻⁷ (Abramowitz and Stegun, formula 7.1.26, in f32).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// GELU with the exact (erf) form, `x · (1 + erf(x / √2)) / 2`, in place.
pub(crate) fn gelu(values: &mut [f32]) {
    for v in values {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `tanh`, in place, within 2·10⁻⁷.
pub(crate) fn tanh(values: &mut [f32]) {
    for v in values {
        let x = *v;
        // tanh(|x|) = 1 − 2 / (e^{2|x|} + 1); for small |x| its odd Taylor series, which is
        // exact where the subtraction above would cancel.
        let a = x.abs();
        let large = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
        let a2 = a * a;
        let small = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0))));
        *v = if a < 0.125 { small } else { large }.copysign(x);
    }
}

/// Softmax of one row, in place.
pub(crate) fn softmax(row: &mut [f32]) {
    let top = max(row);
    for v in row.iter_mut() {
        *v = exp(*v - top);
    }
    let scale = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= scale;
    }
}

/// The logistic function.
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
    }

    fn values(t: Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        for i in -87_000..=87_900 {
            let x = i as f32 / 1000.0 + 0.000_37;
            let (ours, libm) = (exp(x), x.exp());
            assert!(
                ((ours - libm) / libm).abs() < 2.5e-7,
                "exp({x}) = {ours}, libm {libm}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
    }

    #[test]
    fn erf_gelu_and_tanh_match_candle() {
        let xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 / 1000.0).collect();
        let t = tensor(&xs, &[xs.len()]);
        let mut ours = xs.clone();
        gelu(&mut ours);
        let candles = values(t.gelu_erf().unwrap());
        for ((&x, &a), &b) in xs.iter().zip(&ours).zip(&candles) {
            assert!(
                (a - b).abs() <= 3e-7 * (1.0 + x.abs()),
                "gelu({x}): {a} vs {b}"
            );
        }
        let erfs = values(t.erf().unwrap());
        let ours_erf: Vec<f32> = xs.iter().map(|&x| erf(x)).collect();
        assert!(largest_difference(&ours_erf, &erfs) < 5e-7);
        let mut ours = xs.clone();
        tanh(&mut ours);
        for (&x, &a) in xs.iter().zip(&ours) {
            let b = x.tanh();
            assert!((a - b).abs() <= 2e-7, "tanh({x}): {a} vs {b}");
        }
        assert!((sigmoid(0.3) - 1.0 / (1.0 + (-0.3f32).exp())).abs() < 1e-7);
    }

    #[test]
    fn softmax_and_layer_norm_match_candle() {
        let (rows, width) = (7, 403);
        let x = random(rows * width, 8.0, 1);
        let t = tensor(&x, &[rows, width]);
        let mut ours = x.clone();
        ours.chunks_exact_mut(width).for_each(softmax);
        let candles = values(candle_nn::ops::softmax_last_dim(&t).unwrap());
        assert!(largest_difference(&ours, &candles) < 1e-7);

        let width = 384;
        let x: Vec<f32> = random(rows * width, 3.0, 2)
            .iter()
            .map(|v| v + 5.0)
            .collect();
        let (gamma, beta) = (random(width, 2.0, 3), random(width, 1.0, 4));
        let norm =
            candle_nn::LayerNorm::new(tensor(&gamma, &[width]), tensor(&beta, &[width]), 1e-5);
        let candles =
            values(candle_core::Module::forward(&norm, &tensor(&x, &[rows, width])).unwrap());
        // In f64 from the definition: candle's (from the sums of x and x², in f32) is further
        // from it than ours.
        let exact: Vec<f32> = x
            .chunks_exact(width)
            .flat_map(|row| {
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64;
                let var = row
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / width as f64;
                let scale = 1.0 / (var + 1e-5).sqrt();
                row.iter()
                    .zip(&gamma)
                    .zip(&beta)
                    .map(move |((&v, &g), &b)| {
                        ((f64::from(v) - mean) * scale * f64::from(g) + f64::from(b)) as f32
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let ours = Norm::new(gamma.clone(), beta.clone(), 1e-5).forward(&x);
        assert!(largest_difference(&ours, &exact) < 2e-6);
        assert!(largest_difference(&ours, &candles) < 5e-5);
    }

    #[test]
    fn dense_layers_and_strided_products_match_candle() {
        let (rows, inputs, outputs) = (37, 70, 45);
        let x = random(rows * inputs, 1.0, 5);
        let w = random(outputs * inputs, 1.0, 6);
        let b = random(outputs, 1.0, 7);
        let linear =
            candle_nn::Linear::new(tensor(&w, &[outputs, inputs]), Some(tensor(&b, &[outputs])));
        let expected =
            values(candle_core::Module::forward(&linear, &tensor(&x, &[rows, inputs])).unwrap());
        let dense = Dense::from_torch(&w, b.clone(), inputs);
        assert!(largest_difference(&dense.forward(&x, rows), &expected) < 1e-5);

        // Two layers side by side, then accumulated onto what `dst` holds.
        let both = Dense::concat(&[Dense::from_torch(&w, b.clone(), inputs), dense.scaled(0.5)]);
        let mut dst = vec![1.0; rows * 2 * outputs];
        both.forward_into(&x, rows, &mut dst, true);
        for (r, row) in dst.chunks_exact(2 * outputs).enumerate() {
            let want = &expected[r * outputs..][..outputs];
            assert!(
                largest_difference(
                    &row[..outputs],
                    &want.iter().map(|v| v + 1.0).collect::<Vec<_>>()
                ) < 1e-5
            );
            assert!(
                largest_difference(
                    &row[outputs..],
                    &want.iter().map(|v| v * 0.5 + 1.0).collect::<Vec<_>>()
                ) < 1e-5
            );
        }

        // A transposed operand read in place: x · xᵀ over columns 10..30 only.
        let mut gram = vec![0.0; rows * rows];
        matmul(
            &mut gram,
            rows,
            View::rows(&x[10..], inputs),
            View::transposed(&x[10..], inputs),
            (rows, rows, 20),
            false,
        );
        let part = tensor(&x, &[rows, inputs]).narrow(1, 10, 20).unwrap();
        let expected = values(part.matmul(&part.t().unwrap()).unwrap());
        assert!(largest_difference(&gram, &expected) < 1e-5);
    }

    /// A layer on bf16 tiles (the tile unit where this CPU has one, the same rounding in scalar
    /// code elsewhere): bias and accumulation as in f32, the products within bf16's precision.
    #[test]
    fn dense_layers_on_bf16_tiles_stay_within_bf16_of_f32() {
        let (rows, inputs, outputs) = (37, 70, 45);
        let x = random(rows * inputs, 1.0, 13);
        let w = random(outputs * inputs, 1.0, 14);
        let b = random(outputs, 1.0, 15);
        let f32_layer = Dense::from_torch(&w, b.clone(), inputs);
        let tiles = Dense::from_torch(&w, b, inputs).on(Products::Bf16Tiles);
        assert!(
            matches!(tiles.weight, Weight::Bf16Tiles(_)),
            "packed in place of the f32 values"
        );
        let mut expected = vec![1.0; rows * outputs];
        f32_layer.forward_into(&x, rows, &mut expected, true);
        let mut got = vec![1.0; rows * outputs];
        tiles.forward_into(&x, rows, &mut got, true);
        // 70 products of values below 1, each within 2^-8 relative after rounding.
        let worst = largest_difference(&got, &expected);
        assert!(worst < 70.0 / 256.0 / 4.0, "largest difference {worst}");
        assert!(worst > 0.0, "the operands were rounded to bf16");
    }

    #[test]
    fn dot_products_match_candle_on_rows_of_any_length() {
        for (len, seed) in [(64, 8), (384, 9), (37, 10), (5, 11), (0, 12)] {
            let (a, b) = (random(len, 2.0, seed), random(len, 2.0, seed + 100));
            let expected: f32 = if len == 0 {
                0.0
            } else {
                let product = (tensor(&a, &[len]) * tensor(&b, &[len])).unwrap();
                product.sum_all().unwrap().to_scalar().unwrap()
            };
            let got = dot(&a, &b);
            assert!(
                (got - expected).abs() < 1e-5 * (1.0 + len as f32),
                "{len}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn q8_0_products_are_exact_on_the_rounded_values_and_close_to_candles() {
        use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
        let (rows, cols) = (37, 96);
        let w = random(rows * cols, 1.0, 13);
        // Weights as the GGUF holds them (candle's q8_0), dequantized: rounded again, the same.
        let quantized = QTensor::quantize(&tensor(&w, &[rows, cols]), GgmlDType::Q8_0).unwrap();
        let stored = values(quantized.dequantize(&Device::Cpu).unwrap());
        let matrix = Q8Matrix::quantize(&stored, cols);
        assert_eq!((matrix.rows(), matrix.cols()), (rows, cols));
        assert_eq!(matrix.dequantize(), stored);

        let x = random(cols, 3.0, 14);
        let xq = Q8Vector::quantize(&x);
        let rounded: Vec<f32> = xq
            .quants
            .chunks_exact(Q8_BLOCK)
            .zip(&xq.scales)
            .flat_map(|(q, &s)| q.iter().map(move |&q| f32::from(q) * s))
            .collect();
        assert!(largest_difference(&rounded, &x) <= 3.0 / 127.0 / 2.0 * 1.0001);
        let mut got = vec![0.0; rows];
        matrix.product_into(&xq, &mut got);
        // In f64 on the rounded values: the integer sums are exact, only the scaling rounds.
        let exact: Vec<f32> = stored
            .chunks_exact(cols)
            .map(|row| {
                row.iter()
                    .zip(&rounded)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>() as f32
            })
            .collect();
        assert!(largest_difference(&got, &exact) < 1e-5);
        // candle's own product rounds the vector's scales to f16 as well.
        let candles = QMatMul::from_qtensor(quantized).unwrap();
        let expected =
            values(candle_core::Module::forward(&candles, &tensor(&x, &[1, cols])).unwrap());
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest_difference(&got, &expected) < 2e-3 * scale);
        // A zero block has a zero scale, not a division by zero.
        let zeros = Q8Vector::quantize(&[0.0; 64]);
        assert!(zeros.scales.iter().all(|&s| s == 0.0) && zeros.quants.iter().all(|&q| q == 0));
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn an_operand_too_short_for_its_strides_is_refused() {
        let x = vec![0.0; 10];
        let mut dst = vec![0.0; 4];
        matmul(
            &mut dst,
            2,
            View::rows(&x, 5),
            View::rows(&x[..9], 2),
            (2, 2, 5),
            false,
        );
    }
}
