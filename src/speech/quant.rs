//! Products of GGUF block-quantized weight matrices with f32 activations, the language model's
//! hot loop. The activation rows are quantized to 8-bit blocks of 32 (a scale and the block's
//! sum), then each weight block meets each activation block in integer arithmetic: Q4_1 weights
//! as the file stores them (unsigned nibbles, a scale and a minimum; the minimum's term is the
//! activation block's sum) and Q8_0 weights (signed bytes and a scale). With AVX2 (x86-64-v3) the
//! dot products run on `maddubs`/`madd`; elsewhere on portable integer code, tested against the
//! same reference.
//!
//! With AVX2, Q4_1 matrices are kept as an interleaved copy of eight rows at a time (vector lanes
//! are rows; see [`pack_q4_1`]), each unpacked weight group meeting up to 4 activation rows.
//! Otherwise (Q8_0, the rows left over, the portable build) tiles of up to 4 weight rows × 2
//! activation rows share each loaded block. Either way a prompt of several tokens reads the
//! weights once per few tokens, and one token streams them once.
//! [`Workers`] splits the output rows over a thread pool that lives as long as the model.

use std::ops::Range;

use rayon::prelude::*;

/// Values per block in every format here.
pub(crate) const BLOCK: usize = 32;

#[derive(Debug, thiserror::Error)]
pub(crate) enum QuantError {
    #[error("a {format:?} matrix of {rows}×{cols} needs {expected} bytes, got {got}")]
    Size {
        format: Format,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("rows of {0} values are not whole blocks of 32")]
    PartialBlock(usize),
    #[error("cannot start the model's threads: {0}")]
    Threads(String),
}

/// The block formats multiplied here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `d: f16, m: f16, 16 bytes of nibbles` (values 0..16 in low nibbles, 16..32 in high ones);
    /// value = d · q + m.
    Q4_1,
    /// `d: f16, 32 signed bytes`; value = d · q.
    Q8_0,
}

impl Format {
    pub(crate) const fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }
}

/// IEEE half precision to single (exact).
#[inline(always)]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    {
        use std::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
        // SAFETY: F16C is enabled at compile time.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
    {
        f16_bits_to_f32(bits)
    }
}

/// [`f16_to_f32`] from the bits, for builds without F16C.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "f16c"), allow(dead_code))]
fn f16_bits_to_f32(bits: u16) -> f32 {
    let sign = ((bits as u32) & 0x8000) << 16;
    let exponent = (bits >> 10) & 0x1f;
    let mantissa = (bits & 0x3ff) as u32;
    let magnitude = match exponent {
        0 => mantissa as f32 * (1.0 / (1u32 << 24) as f32),
        0x1f if mantissa == 0 => f32::INFINITY,
        0x1f => f32::NAN,
        e => f32::from_bits(((e as u32 + 112) << 23) | (mantissa << 13)),
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

#[inline(always)]
fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// A weight matrix of `rows` × `cols` in one block format, row after row.
#[derive(Debug, Clone)]
pub(crate) struct QMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    /// The rows from `packed_rows` on, as the file stores them.
    data: Vec<u8>,
    /// Q4_1: the block minimums of the rows in `data` again (f16 bits), row after row, so the
    /// kernels take eight at a time; empty for Q8_0.
    mins: Vec<u16>,
    /// Q4_1 with AVX2: the first `rows / 8 · 8` rows, eight rows interleaved (see
    /// [`pack_q4_1`]) and kept only so; empty otherwise.
    packed: Vec<u8>,
    packed_rows: usize,
}

/// Weight rows interleaved in [`QMatrix::packed`].
const PACK_ROWS: usize = 8;
/// Bytes of one packed block of [`PACK_ROWS`] rows: 8 scales and 8 minimums as f32, then the
/// nibbles as four 32-byte groups, group `h` holding bytes `4h..4h + 4` of each row's block (low
/// nibbles: values `4h..4h + 4`; high nibbles: values `16 + 4h..16 + 4h + 4`).
const PACKED_BLOCK: usize = 2 * 4 * PACK_ROWS + 16 * PACK_ROWS;

/// Whether this build multiplies Q4_1 from the interleaved copy.
const PACKS_Q4_1: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
));

/// The interleaved copy of a Q4_1 matrix's whole groups of eight rows: per group, per block, one
/// [`PACKED_BLOCK`] record. One 32-byte load then holds four values of eight rows, so a block
/// of eight rows meets an activation block in eight integer products whose lanes are the rows,
/// and the scales apply as vectors.
fn pack_q4_1(data: &[u8], rows: usize, blocks: usize) -> Vec<u8> {
    let size = Format::Q4_1.block_bytes();
    let groups = rows / PACK_ROWS;
    let mut packed = vec![0u8; groups * blocks * PACKED_BLOCK];
    for (g, group) in packed.chunks_exact_mut(blocks * PACKED_BLOCK).enumerate() {
        for (k, record) in group.chunks_exact_mut(PACKED_BLOCK).enumerate() {
            for r in 0..PACK_ROWS {
                let block = &data[((g * PACK_ROWS + r) * blocks + k) * size..][..size];
                let d = half_at(block, 0).to_le_bytes();
                let m = half_at(block, 2).to_le_bytes();
                record[4 * r..4 * r + 4].copy_from_slice(&d);
                record[32 + 4 * r..32 + 4 * r + 4].copy_from_slice(&m);
                for h in 0..4 {
                    let at = 64 + 32 * h + 4 * r;
                    record[at..at + 4].copy_from_slice(&block[4 + 4 * h..4 + 4 * h + 4]);
                }
            }
        }
    }
    packed
}

impl QMatrix {
    pub(crate) fn new(
        format: Format,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<QMatrix, QuantError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::PartialBlock(cols));
        }
        let expected = rows * cols / BLOCK * format.block_bytes();
        if data.len() != expected {
            return Err(QuantError::Size {
                format,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        let (packed, packed_rows) = if format == Format::Q4_1 && PACKS_Q4_1 {
            let packed_rows = rows / PACK_ROWS * PACK_ROWS;
            (pack_q4_1(&data, rows, cols / BLOCK), packed_rows)
        } else {
            (Vec::new(), 0)
        };
        let data = if packed_rows > 0 {
            data[packed_rows * cols / BLOCK * format.block_bytes()..].to_vec()
        } else {
            data
        };
        let mins = match format {
            Format::Q4_1 => data
                .chunks_exact(format.block_bytes())
                .map(|block| u16::from_le_bytes([block[2], block[3]]))
                .collect(),
            Format::Q8_0 => Vec::new(),
        };
        Ok(QMatrix {
            format,
            rows,
            cols,
            data,
            mins,
            packed,
            packed_rows,
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// Row `r` as the file stores it; only rows that are not packed are kept so.
    fn row(&self, r: usize) -> &[u8] {
        assert!(r >= self.packed_rows, "row {r} is only kept packed");
        let n = self.row_bytes();
        let r = r - self.packed_rows;
        &self.data[r * n..(r + 1) * n]
    }

    /// The packed records of the group of eight rows from `r` (a multiple of eight), if packed.
    fn packed_group(&self, r: usize) -> Option<&[u8]> {
        let n = self.cols / BLOCK * PACKED_BLOCK;
        self.packed.get(r / PACK_ROWS * n..(r / PACK_ROWS + 1) * n)
    }

    /// Row `r`'s block minimums (Q4_1).
    fn row_mins(&self, r: usize) -> &[u16] {
        let n = self.cols / BLOCK;
        let r = r - self.packed_rows;
        &self.mins[r * n..(r + 1) * n]
    }

    /// Row `r` as f32 values (the embedding lookup).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let Some(group) = (r < self.packed_rows)
            .then(|| self.packed_group(r / PACK_ROWS * PACK_ROWS))
            .flatten()
        else {
            return dequantize_blocks(self.format, self.row(r), out);
        };
        let lane = r % PACK_ROWS;
        let f32_at = |record: &[u8], at: usize| {
            f32::from_le_bytes(record[at..at + 4].try_into().expect("4 bytes"))
        };
        for (record, values) in group
            .chunks_exact(PACKED_BLOCK)
            .zip(out.chunks_exact_mut(BLOCK))
        {
            let (d, m) = (f32_at(record, 4 * lane), f32_at(record, 32 + 4 * lane));
            for h in 0..4 {
                let bytes = &record[64 + 32 * h + 4 * lane..][..4];
                for (t, &byte) in bytes.iter().enumerate() {
                    values[4 * h + t] = d * (byte & 0x0f) as f32 + m;
                    values[16 + 4 * h + t] = d * (byte >> 4) as f32 + m;
                }
            }
        }
    }
}

/// A row of blocks as the file stores them, as f32 values.
fn dequantize_blocks(format: Format, row: &[u8], out: &mut [f32]) {
    let size = format.block_bytes();
    for (block, values) in row.chunks_exact(size).zip(out.chunks_exact_mut(BLOCK)) {
        let d = half_at(block, 0);
        match format {
            Format::Q4_1 => {
                let m = half_at(block, 2);
                for (i, &byte) in block[4..].iter().enumerate() {
                    values[i] = d * (byte & 0x0f) as f32 + m;
                    values[i + 16] = d * (byte >> 4) as f32 + m;
                }
            }
            Format::Q8_0 => {
                for (v, &q) in values.iter_mut().zip(&block[2..]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
    }
}

/// One block of a quantized activation row: `x ≈ d · q`, `s = d · Σq`.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct ActBlock {
    d: f32,
    s: f32,
    q: [i8; BLOCK],
}

/// Activation rows quantized to [`ActBlock`]s; the buffer is kept and reused.
#[derive(Debug, Default)]
pub(crate) struct QuantizedRows {
    blocks: Vec<ActBlock>,
    /// Every block's `s` again, row after row (the Q4_1 minimums' term takes eight at a time).
    sums: Vec<f32>,
    rows: usize,
    blocks_per_row: usize,
}

impl QuantizedRows {
    /// Quantizes `rows` rows of `cols` values (`cols` a multiple of 32) from `x`.
    pub(crate) fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        debug_assert!(cols.is_multiple_of(BLOCK) && x.len() >= rows * cols);
        self.rows = rows;
        self.blocks_per_row = cols / BLOCK;
        let n = rows * self.blocks_per_row;
        self.blocks.resize(
            n,
            ActBlock {
                d: 0.0,
                s: 0.0,
                q: [0; BLOCK],
            },
        );
        self.sums.resize(n, 0.0);
        for ((block, sum_out), values) in self
            .blocks
            .iter_mut()
            .zip(self.sums.iter_mut())
            .zip(x[..rows * cols].chunks_exact(BLOCK))
        {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in block.q.iter_mut().zip(values) {
                let r = (v * inverse).round() as i32;
                sum += r;
                *q = r as i8;
            }
            block.d = d;
            block.s = d * sum as f32;
            *sum_out = block.s;
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    fn row(&self, a: usize) -> &[ActBlock] {
        &self.blocks[a * self.blocks_per_row..(a + 1) * self.blocks_per_row]
    }

    fn row_sums(&self, a: usize) -> &[f32] {
        &self.sums[a * self.blocks_per_row..(a + 1) * self.blocks_per_row]
    }
}

/// Weight rows per tile.
const TILE_ROWS: usize = 4;
/// Activation rows per tile.
const TILE_ACTS: usize = 2;

/// `store(a, r, w_r · x_a)` for every activation row `a` and every weight row `r` in `rows`.
pub(crate) fn product_rows(
    w: &QMatrix,
    x: &QuantizedRows,
    rows: Range<usize>,
    mut store: impl FnMut(usize, usize, f32),
) {
    assert_eq!(w.cols / BLOCK, x.blocks_per_row, "inner dimensions differ");
    let mut r = rows.start;
    while r.is_multiple_of(PACK_ROWS) && r + PACK_ROWS <= rows.end {
        let Some(group) = w.packed_group(r) else {
            break;
        };
        let mut a = 0;
        while a < x.rows {
            let store = &mut store;
            match x.rows - a {
                1 => packed_tile::<1>(group, x, r, a, store),
                2 => packed_tile::<2>(group, x, r, a, store),
                3 => packed_tile::<3>(group, x, r, a, store),
                _ => packed_tile::<PACKED_ACTS>(group, x, r, a, store),
            }
            a += PACKED_ACTS;
        }
        r += PACK_ROWS;
    }
    while r < rows.end {
        let tall = rows.end - r >= TILE_ROWS;
        let mut a = 0;
        while a < x.rows {
            let wide = x.rows - a >= TILE_ACTS;
            match (tall, wide) {
                (true, true) => tile::<TILE_ROWS, TILE_ACTS>(w, x, r, a, &mut store),
                (true, false) => tile::<TILE_ROWS, 1>(w, x, r, a, &mut store),
                (false, true) => tile::<1, TILE_ACTS>(w, x, r, a, &mut store),
                (false, false) => tile::<1, 1>(w, x, r, a, &mut store),
            }
            a += if wide { TILE_ACTS } else { 1 };
        }
        r += if tall { TILE_ROWS } else { 1 };
    }
}

/// Activation rows per packed tile.
const PACKED_ACTS: usize = 4;

/// Eight packed Q4_1 rows from `r` times up to `C` activation rows from `a`.
#[inline(always)]
fn packed_tile<const C: usize>(
    group: &[u8],
    x: &QuantizedRows,
    r: usize,
    a: usize,
    store: &mut impl FnMut(usize, usize, f32),
) {
    let xa: [&[ActBlock]; C] = std::array::from_fn(|j| x.row(a + j));
    let dots = simd::packed_q4_1::<C>(group, xa);
    for (j, lanes) in dots.iter().enumerate() {
        for (i, &v) in lanes.iter().enumerate() {
            store(a + j, r + i, v);
        }
    }
}

#[inline(always)]
fn tile<const R: usize, const C: usize>(
    w: &QMatrix,
    x: &QuantizedRows,
    r: usize,
    a: usize,
    store: &mut impl FnMut(usize, usize, f32),
) {
    let wr: [&[u8]; R] = std::array::from_fn(|i| w.row(r + i));
    let xa: [&[ActBlock]; C] = std::array::from_fn(|j| x.row(a + j));
    let dots = match w.format {
        Format::Q4_1 => simd::q4_1::<R, C>(
            wr,
            std::array::from_fn(|i| w.row_mins(r + i)),
            xa,
            std::array::from_fn(|j| x.row_sums(a + j)),
        ),
        Format::Q8_0 => simd::q8_0::<R, C>(wr, xa),
    };
    for (i, row) in dots.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            store(a + j, r + i, v);
        }
    }
}

/// Portable integer dot products (the ARM build's kernels, and the reference the SIMD ones are
/// tested against).
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ),
    allow(dead_code)
)]
mod portable {
    use super::{half_at, ActBlock, Format, BLOCK, PACK_ROWS};

    /// (The minimums and sums are read from the blocks here.)
    pub(super) fn q4_1<const R: usize, const C: usize>(
        w: [&[u8]; R],
        _mins: [&[u16]; R],
        x: [&[ActBlock]; C],
        _sums: [&[f32]; C],
    ) -> [[f32; C]; R] {
        tile(Format::Q4_1, w, x)
    }

    pub(super) fn q8_0<const R: usize, const C: usize>(
        w: [&[u8]; R],
        x: [&[ActBlock]; C],
    ) -> [[f32; C]; R] {
        tile(Format::Q8_0, w, x)
    }

    /// Never called: nothing is packed without AVX2 ([`super::PACKS_Q4_1`]).
    pub(super) fn packed_q4_1<const C: usize>(
        _group: &[u8],
        _x: [&[ActBlock]; C],
    ) -> [[f32; PACK_ROWS]; C] {
        unreachable!("Q4_1 is packed only for AVX2")
    }

    fn tile<const R: usize, const C: usize>(
        format: Format,
        w: [&[u8]; R],
        x: [&[ActBlock]; C],
    ) -> [[f32; C]; R] {
        let size = format.block_bytes();
        let mut out = [[0f32; C]; R];
        for (i, row) in w.iter().enumerate() {
            for (j, acts) in x.iter().enumerate() {
                let mut acc = 0f32;
                for (block, act) in row.chunks_exact(size).zip(acts.iter()) {
                    let d = half_at(block, 0);
                    match format {
                        Format::Q4_1 => {
                            let mut dot = 0i32;
                            for (k, &byte) in block[4..].iter().enumerate() {
                                dot += (byte & 0x0f) as i32 * act.q[k] as i32;
                                dot += (byte >> 4) as i32 * act.q[k + BLOCK / 2] as i32;
                            }
                            acc += d * act.d * dot as f32 + half_at(block, 2) * act.s;
                        }
                        Format::Q8_0 => {
                            let dot: i32 = block[2..]
                                .iter()
                                .zip(&act.q)
                                .map(|(&q, &v)| (q as i8) as i32 * v as i32)
                                .sum();
                            acc += d * act.d * dot as f32;
                        }
                    }
                }
                out[i][j] = acc;
            }
        }
        out
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{f16_to_f32, ActBlock, BLOCK, PACKED_BLOCK, PACK_ROWS};

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    // The reads below dereference byte arrays instead of calling `_mm_loadu_si128` and
    // `ptr::read_unaligned`: those copy through `copy_nonoverlapping`, whose precondition checks
    // (on in builds with debug assertions: the tests' and the benchmarks') kept each load in a
    // stack temporary and cost the prompt pass a quarter of its time.

    /// The f16 at `at` as f32 (unaligned; the caller keeps `at` inside a checked block).
    #[inline(always)]
    unsafe fn half_read(at: *const u8) -> f32 {
        f16_to_f32(u16::from_le_bytes(*(at as *const [u8; 2])))
    }

    /// 16 bytes at `at` (unaligned).
    #[inline(always)]
    unsafe fn load128(at: *const u8) -> __m128i {
        std::mem::transmute::<[u8; 16], __m128i>(*(at as *const [u8; 16]))
    }

    /// 32 bytes at `at` (unaligned).
    #[inline(always)]
    unsafe fn load256(at: *const u8) -> __m256i {
        std::mem::transmute::<[u8; 32], __m256i>(*(at as *const [u8; 32]))
    }

    /// The blocks per row, after checking that every row holds them (what the pointer reads of
    /// the kernels rely on).
    fn checked_blocks(w: &[&[u8]], x: &[&[ActBlock]], size: usize) -> usize {
        let blocks = x[0].len();
        assert!(w.iter().all(|row| row.len() >= blocks * size));
        assert!(x.iter().all(|acts| acts.len() >= blocks));
        blocks
    }

    /// The 32 nibbles of a Q4_1 block as bytes, in value order.
    #[inline(always)]
    unsafe fn nibbles(qs: *const u8) -> __m256i {
        let bytes = load128(qs);
        let mask = _mm_set1_epi8(0x0f);
        let low = _mm_and_si128(bytes, mask);
        let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        _mm256_set_m128i(high, low)
    }

    /// `mins[i]` and `sums[j]`: weight row `i`'s block minimums and activation row `j`'s block
    /// sums, the same values as in the blocks, laid out to be read eight at a time.
    pub(super) fn q4_1<const R: usize, const C: usize>(
        w: [&[u8]; R],
        mins: [&[u16]; R],
        x: [&[ActBlock]; C],
        sums: [&[f32]; C],
    ) -> [[f32; C]; R] {
        const SIZE: usize = 20;
        let blocks = checked_blocks(&w, &x, SIZE);
        assert!(mins.iter().all(|m| m.len() >= blocks) && sums.iter().all(|s| s.len() >= blocks));
        // SAFETY: AVX2/FMA/F16C are enabled at compile time; every pointer read is inside the
        // slices checked above (a block of `SIZE` bytes at `k · SIZE`, activation block `k`, and
        // eight minimums or sums from `k` where `k + 8 ≤ blocks`).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            // The scaled nibbles' term: the accumulators, the activation blocks and one unpacked
            // weight block fill the 16 vector registers.
            for k in 0..blocks {
                let acts: [&ActBlock; C] = std::array::from_fn(|j| x[j].get_unchecked(k));
                let v: [__m256i; C] = std::array::from_fn(|j| load256(acts[j].q.as_ptr().cast()));
                for i in 0..R {
                    let block = w[i].as_ptr().add(k * SIZE);
                    let q = nibbles(block.add(4));
                    let d = half_read(block);
                    for j in 0..C {
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, v[j]), ones);
                        acc[i][j] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(dot),
                            _mm256_set1_ps(d * acts[j].d),
                            acc[i][j],
                        );
                    }
                }
            }
            // The minimums' term Σ_k m_k · s_k, eight blocks per product into the same lanes.
            let whole = blocks - blocks % 8;
            for k in (0..whole).step_by(8) {
                let s: [__m256; C] = std::array::from_fn(|j| {
                    std::mem::transmute::<[f32; 8], __m256>(
                        *(sums[j].as_ptr().add(k) as *const [f32; 8]),
                    )
                });
                for i in 0..R {
                    let m = _mm256_cvtph_ps(load128(mins[i].as_ptr().add(k).cast()));
                    for j in 0..C {
                        acc[i][j] = _mm256_fmadd_ps(m, s[j], acc[i][j]);
                    }
                }
            }
            let mut out = [[0f32; C]; R];
            for i in 0..R {
                for j in 0..C {
                    let mut rest = 0f32;
                    for k in whole..blocks {
                        rest += f16_to_f32(*mins[i].get_unchecked(k)) * *sums[j].get_unchecked(k);
                    }
                    out[i][j] = hsum(acc[i][j]) + rest;
                }
            }
            out
        }
    }

    /// Eight interleaved Q4_1 rows (`group`: one [`PACKED_BLOCK`] record per block) times `C`
    /// activation rows; lane `r` of every vector is row `r`. Per block the eight nibble groups'
    /// products are summed in 16 bits (each `maddubs` lane is at most 2 · 15 · 127 = 3810, eight
    /// of them 30480 < 2¹⁵), then widened once, scaled by the rows' scales and given the rows'
    /// minimums times the activation block's sum.
    pub(super) fn packed_q4_1<const C: usize>(
        group: &[u8],
        x: [&[ActBlock]; C],
    ) -> [[f32; PACK_ROWS]; C] {
        let blocks = x[0].len();
        assert!(group.len() >= blocks * PACKED_BLOCK && x.iter().all(|a| a.len() >= blocks));
        // SAFETY: AVX2/FMA are enabled at compile time; every read is inside `group` (record `k`
        // of `PACKED_BLOCK` bytes, `k < blocks`) or inside activation block `k` (checked above).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let low = _mm256_set1_epi8(0x0f);
            let mut acc = [_mm256_setzero_ps(); C];
            for k in 0..blocks {
                let record = group.as_ptr().add(k * PACKED_BLOCK);
                let acts: [&ActBlock; C] = std::array::from_fn(|j| x[j].get_unchecked(k));
                let mut sums = [_mm256_setzero_si256(); C];
                for h in 0..4 {
                    let p = load256(record.add(64 + 32 * h));
                    let values_low = _mm256_and_si256(p, low);
                    let values_high = _mm256_and_si256(_mm256_srli_epi16(p, 4), low);
                    for j in 0..C {
                        let q = acts[j].q.as_ptr() as *const u8;
                        let a_low = _mm256_set1_epi32(i32::from_le_bytes(
                            *(q.add(4 * h) as *const [u8; 4]),
                        ));
                        let a_high = _mm256_set1_epi32(i32::from_le_bytes(
                            *(q.add(16 + 4 * h) as *const [u8; 4]),
                        ));
                        sums[j] = _mm256_add_epi16(
                            sums[j],
                            _mm256_add_epi16(
                                _mm256_maddubs_epi16(values_low, a_low),
                                _mm256_maddubs_epi16(values_high, a_high),
                            ),
                        );
                    }
                }
                let d = std::mem::transmute::<[f32; 8], __m256>(*(record as *const [f32; 8]));
                let m =
                    std::mem::transmute::<[f32; 8], __m256>(*(record.add(32) as *const [f32; 8]));
                for j in 0..C {
                    let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(sums[j], ones));
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(acts[j].d));
                    acc[j] = _mm256_fmadd_ps(dot, scale, acc[j]);
                    acc[j] = _mm256_fmadd_ps(m, _mm256_set1_ps(acts[j].s), acc[j]);
                }
            }
            acc.map(|v| std::mem::transmute::<__m256, [f32; 8]>(v))
        }
    }

    pub(super) fn q8_0<const R: usize, const C: usize>(
        w: [&[u8]; R],
        x: [&[ActBlock]; C],
    ) -> [[f32; C]; R] {
        const SIZE: usize = 2 + BLOCK;
        let blocks = checked_blocks(&w, &x, SIZE);
        // SAFETY: as in `q4_1`.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            for k in 0..blocks {
                for (i, row) in w.iter().enumerate() {
                    let block = row.as_ptr().add(k * SIZE);
                    let q = load256(block.add(2));
                    // maddubs multiplies unsigned by signed bytes: |q| times v with q's sign.
                    let magnitude = _mm256_sign_epi8(q, q);
                    let d = half_read(block);
                    for (j, acts) in x.iter().enumerate() {
                        let act = acts.get_unchecked(k);
                        let v = load256(act.q.as_ptr().cast());
                        let signed = _mm256_sign_epi8(v, q);
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), ones);
                        acc[i][j] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(dot),
                            _mm256_set1_ps(d * act.d),
                            acc[i][j],
                        );
                    }
                }
            }
            let mut out = [[0f32; C]; R];
            for (i, row) in acc.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    out[i][j] = hsum(v);
                }
            }
            out
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
use avx2 as simd;
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
use portable as simd;

/// The model's own threads: a pool made with the model and kept while it lives. Products split
/// their output rows into chunks the pool's threads take (stealing from each other, so a thread
/// slowed by other work on the machine takes fewer).
pub(crate) struct Workers {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads)
            .finish()
    }
}

/// A destination the pool's threads write disjoint elements of.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: every user writes elements no other thread writes (disjoint output rows), and the
// buffer outlives the parallel call that borrows it.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(out: &mut [f32]) -> SharedOut {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// # Safety
    /// No other thread reads or writes element `i` during the parallel call.
    #[inline(always)]
    unsafe fn write(self, i: usize, v: f32) {
        assert!(i < self.len);
        *self.ptr.add(i) = v;
    }
}

impl Workers {
    pub(crate) fn new(threads: usize) -> Result<Workers, QuantError> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("llm-{i}"))
            .build()
            .map_err(|e| QuantError::Threads(e.to_string()))?;
        Ok(Workers { pool, threads })
    }

    /// Runs `f` on the pool (a whole forward pass: its products then need no hand-over).
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.pool.install(f)
    }

    /// `f(i)` for every `i` in `0..n`, over the pool's threads.
    pub(crate) fn for_each(&self, n: usize, f: impl Fn(usize) + Sync + Send) {
        if self.threads == 1 || n <= 1 {
            (0..n).for_each(f);
        } else {
            self.pool.install(|| (0..n).into_par_iter().for_each(f));
        }
    }

    /// For each `(w, out)`: `out[a · w.rows() + r] = w_r · x_a`, every matrix's rows split over the
    /// threads in one parallel call (the query, key and value projections together, or the gate
    /// and up ones).
    pub(crate) fn products(&self, x: &QuantizedRows, jobs: &mut [(&QMatrix, &mut [f32])]) {
        let chunk_rows = |rows: usize| -> usize {
            // About four chunks per thread, whole tiles.
            let chunk = rows.div_ceil(self.threads * 4).max(PACK_ROWS * 2);
            chunk.div_ceil(PACK_ROWS) * PACK_ROWS
        };
        let mut chunks: Vec<(usize, Range<usize>)> = Vec::new();
        for (j, (w, out)) in jobs.iter().enumerate() {
            assert!(out.len() >= x.rows() * w.rows(), "output too small");
            let step = chunk_rows(w.rows());
            let mut r = 0;
            while r < w.rows() {
                chunks.push((j, r..(r + step).min(w.rows())));
                r += step;
            }
        }
        let targets: Vec<(&QMatrix, SharedOut)> = jobs
            .iter_mut()
            .map(|(w, out)| (&**w, SharedOut::new(out)))
            .collect();
        self.for_each(chunks.len(), |c| {
            let (j, rows) = chunks[c].clone();
            let (w, out) = targets[j];
            let stride = w.rows();
            product_rows(w, x, rows, |a, r, v| {
                // SAFETY: chunks cover disjoint rows `r`, so element (a, r) is this chunk's.
                unsafe { out.write(a * stride + r, v) }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), for reproducible random blocks.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform in [−1, 1).
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    fn f32_to_f16(v: f32) -> u16 {
        // Enough for the normal scales used here: round the mantissa to 10 bits.
        let bits = v.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        assert!((1..31).contains(&exponent), "{v} out of the test's range");
        let mantissa = bits & 0x7f_ffff;
        let rounded = (mantissa + 0x1000) >> 13;
        let (exponent, rounded) = if rounded == 0x400 {
            (exponent + 1, 0)
        } else {
            (exponent, rounded)
        };
        sign | ((exponent as u16) << 10) | rounded as u16
    }

    fn random_matrix(format: Format, rows: usize, cols: usize, rng: &mut Random) -> QMatrix {
        QMatrix::new(format, rows, cols, random_blocks(format, rows, cols, rng)).unwrap()
    }

    /// Rows of random blocks as a file stores them.
    fn random_blocks(format: Format, rows: usize, cols: usize, rng: &mut Random) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let d = 0.001 + 0.02 * (rng.unit() + 1.0);
            data.extend(f32_to_f16(d).to_le_bytes());
            match format {
                Format::Q4_1 => {
                    let m = -8.0 * d * (1.0 + 0.3 * rng.unit());
                    data.extend(f32_to_f16(m).to_le_bytes());
                    data.extend((0..16).map(|_| (rng.next() >> 56) as u8));
                }
                Format::Q8_0 => {
                    // The full signed range, −128 included.
                    data.extend((0..BLOCK).map(|_| (rng.next() >> 56) as u8));
                }
            }
        }
        data
    }

    /// The rows of `blocks` as f32 values, read from the file's layout (not the matrix's).
    fn dequantized_blocks(format: Format, blocks: &[u8], cols: usize) -> Vec<f32> {
        let row_bytes = cols / BLOCK * format.block_bytes();
        let mut out = vec![0f32; blocks.len() / row_bytes * cols];
        for (row, values) in blocks
            .chunks_exact(row_bytes)
            .zip(out.chunks_exact_mut(cols))
        {
            dequantize_blocks(format, row, values);
        }
        out
    }

    fn random_rows(rows: usize, cols: usize, rng: &mut Random) -> Vec<f32> {
        // Varied magnitudes per block, and an outlier now and then, as in real activations.
        (0..rows * cols)
            .map(|i| {
                let scale = 0.1 + (i / BLOCK % 7) as f32;
                let spike = if rng.next().is_multiple_of(97) {
                    20.0
                } else {
                    1.0
                };
                scale * spike * rng.unit()
            })
            .collect()
    }

    fn dequantized(w: &QMatrix) -> Vec<f32> {
        let mut out = vec![0f32; w.rows() * w.cols()];
        for (r, row) in out.chunks_exact_mut(w.cols()).enumerate() {
            w.dequantize_row(r, row);
        }
        out
    }

    fn dequantized_acts(x: &QuantizedRows, cols: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.rows() * cols];
        for (v, block) in out.chunks_exact_mut(BLOCK).zip(&x.blocks) {
            for (o, &q) in v.iter_mut().zip(&block.q) {
                *o = block.d * q as f32;
            }
        }
        out
    }

    fn product(w: &QMatrix, x: &QuantizedRows) -> Vec<f32> {
        let mut out = vec![f32::NAN; x.rows() * w.rows()];
        product_rows(w, x, 0..w.rows(), |a, r, v| out[a * w.rows() + r] = v);
        out
    }

    /// Checks `got` (rows × out) against f64 dot products of the dequantized weights with
    /// `reference` activations, within `tolerance(a, r)`.
    fn check(
        got: &[f32],
        w: &[f32],
        acts: &[f32],
        (rows, outs, cols): (usize, usize, usize),
        tolerance: impl Fn(usize, usize) -> f64,
    ) {
        for a in 0..rows {
            for r in 0..outs {
                let exact: f64 = (0..cols)
                    .map(|c| w[r * cols + c] as f64 * acts[a * cols + c] as f64)
                    .sum();
                let g = got[a * outs + r] as f64;
                let tol = tolerance(a, r);
                assert!(
                    (g - exact).abs() <= tol,
                    "({a}, {r}): {g} against {exact}, tolerance {tol}"
                );
            }
        }
    }

    /// Both kernels (the SIMD one of this build and the portable one) against f64 dot products:
    /// (1) with the quantized activations as the operand, they agree to float rounding (relative
    /// 1e-5 of Σ|w·x|): the integer arithmetic is exact; (2) with the original f32 activations,
    /// within the quantization bound Σ_blocks Σ|w| · d_a / 2 (each value is rounded by at most
    /// half a step).
    fn kernels_match_reference(format: Format) {
        let mut rng = Random(0x9E37_79B9_7F4A_7C15);
        // 11 weight rows and 5 activation rows: full tiles and both remainders.
        let (outs, rows, cols) = (11, 5, 576);
        let blocks = random_blocks(format, outs, cols, &mut rng);
        let w = QMatrix::new(format, outs, cols, blocks.clone()).unwrap();
        let wf = dequantized_blocks(format, &blocks, cols);
        let x = random_rows(rows, cols, &mut rng);
        let mut q = QuantizedRows::default();
        q.quantize(&x, rows, cols);
        let xq = dequantized_acts(&q, cols);
        let simd = product(&w, &q);
        let mut portable = vec![f32::NAN; rows * outs];
        let wr: Vec<&[u8]> = blocks.chunks_exact(blocks.len() / outs).collect();
        for r in 0..outs {
            for a in 0..rows {
                let dot = match format {
                    Format::Q4_1 => portable::q4_1::<1, 1>([wr[r]], [&[]], [q.row(a)], [&[]]),
                    Format::Q8_0 => portable::q8_0::<1, 1>([wr[r]], [q.row(a)]),
                };
                portable[a * outs + r] = dot[0][0];
            }
        }
        let magnitude = |a: usize, r: usize| -> f64 {
            (0..cols)
                .map(|c| (wf[r * cols + c] * xq[a * cols + c]).abs() as f64)
                .sum()
        };
        let bound = |a: usize, r: usize| -> f64 {
            (0..cols / BLOCK)
                .map(|k| {
                    let w_abs: f64 = (0..BLOCK)
                        .map(|i| wf[r * cols + k * BLOCK + i].abs() as f64)
                        .sum();
                    w_abs * q.row(a)[k].d as f64 / 2.0
                })
                .sum::<f64>()
                + 1e-5 * magnitude(a, r)
        };
        for got in [&simd, &portable] {
            check(got, &wf, &xq, (rows, outs, cols), |a, r| {
                1e-5 * magnitude(a, r)
            });
            check(got, &wf, &x, (rows, outs, cols), bound);
        }
    }

    #[test]
    fn q4_1_products_match_the_dequantized_reference() {
        kernels_match_reference(Format::Q4_1);
    }

    #[test]
    fn q8_0_products_match_the_dequantized_reference() {
        kernels_match_reference(Format::Q8_0);
    }

    #[test]
    fn every_row_dequantizes_as_the_file_stores_it() {
        let mut rng = Random(11);
        for format in [Format::Q4_1, Format::Q8_0] {
            // Two packed groups of eight (with AVX2) and three rows kept as stored.
            let (rows, cols) = (19, 96);
            let blocks = random_blocks(format, rows, cols, &mut rng);
            let w = QMatrix::new(format, rows, cols, blocks.clone()).unwrap();
            assert_eq!(dequantized(&w), dequantized_blocks(format, &blocks, cols));
        }
    }

    #[test]
    fn threaded_products_equal_the_single_call() {
        let mut rng = Random(7);
        let w = random_matrix(Format::Q4_1, 203, 96, &mut rng);
        let v = random_matrix(Format::Q8_0, 37, 96, &mut rng);
        let x = random_rows(3, 96, &mut rng);
        let mut q = QuantizedRows::default();
        q.quantize(&x, 3, 96);
        let workers = Workers::new(2).unwrap();
        let mut out_w = vec![f32::NAN; 3 * 203];
        let mut out_v = vec![f32::NAN; 3 * 37];
        workers.products(&q, &mut [(&w, &mut out_w), (&v, &mut out_v)]);
        assert_eq!(out_w, product(&w, &q));
        assert_eq!(out_v, product(&v, &q));
    }

    #[test]
    fn half_precision_converts_exactly() {
        for convert in [f16_to_f32, f16_bits_to_f32] {
            assert_eq!(convert(0x3c00), 1.0);
            assert_eq!(convert(0xc000), -2.0);
            assert_eq!(convert(0x0001), 2f32.powi(-24));
            assert_eq!(convert(0x83ff), -1023.0 * 2f32.powi(-24));
            assert_eq!(convert(0x7bff), 65504.0);
            assert_eq!(convert(0x3555), 0.333_251_95);
            assert!(convert(0x7c00).is_infinite());
            assert!(convert(0x7e00).is_nan());
        }
        // Every finite half converts to the same value both ways.
        for bits in (0..=u16::MAX).filter(|b| b & 0x7c00 != 0x7c00) {
            assert_eq!(f16_to_f32(bits).to_bits(), f16_bits_to_f32(bits).to_bits());
        }
    }

    #[test]
    fn a_zero_block_quantizes_to_zero() {
        let mut q = QuantizedRows::default();
        q.quantize(&[0.0; 64], 2, 32);
        assert!(q
            .blocks
            .iter()
            .all(|b| b.d == 0.0 && b.s == 0.0 && b.q == [0; 32]));
    }
}
