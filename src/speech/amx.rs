//! Matrix products on Intel's AMX tile unit: operands rounded to bf16, sums kept in f32. The
//! speech-to-text encoder's products span hundreds of frames; where the CPU has AMX-BF16 (Xeon
//! from Sapphire Rapids on) and Linux lets the process use its tile registers, one core does
//! them several times faster than the f32 kernels (docs/stt.md has the figures and the word
//! error rates). Everywhere else [`available`] is false and callers keep the f32 products;
//! [`matmul`] then computes the same bf16 product with scalar code, so its results do not depend
//! on the CPU beyond the order of the sums.
//!
//! The right operand (a layer's weights) is packed once ([`PackedRhs`]) in the tiles' layout:
//! pairs of consecutive depth values side by side, blocks of 32 columns and 32 depth values.

use std::sync::OnceLock;

use super::kernels::View;

/// Depth of one tile product (bf16 values per row of the left tile).
const DEPTH: usize = 32;
/// Rows and columns of a block of the result: 2 × 2 tiles of 16 × 16.
const BLOCK: usize = 32;
/// bf16 values in one 16-row tile of 64 bytes a row.
const TILE_VALUES: usize = 512;

/// Whether this CPU and kernel run AMX-BF16 products (checked once per process).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            tiles::cpu_has_amx_bf16() && tiles::kernel_grants_tile_data()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits.
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    // A NaN stays a (quiet) NaN: rounding its payload could carry into the sign or wrap. A
    // select, not a branch, so the packing loops stay vectorized.
    let quiet_nan = (bits >> 16) as u16 | 0x0040;
    if x.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// The right operand `[depth × columns]` of a product, rounded to bf16 in the tiles' layout:
/// for each block of 32 columns and each step of 32 depth values, two tiles (columns 0–15 and
/// 16–31) of 16 rows, each row 16 columns × a pair of consecutive depth values. Padding is zero.
pub(crate) struct PackedRhs {
    data: Vec<u16>,
    depth: usize,
    columns: usize,
}

impl PackedRhs {
    pub(crate) fn pack(rhs: View<'_>, depth: usize, columns: usize) -> PackedRhs {
        assert!(
            rhs.holds(depth, columns),
            "right operand out of bounds for {depth} × {columns}"
        );
        let mut packed = PackedRhs {
            data: vec![0; columns.div_ceil(BLOCK) * depth.div_ceil(DEPTH) * 2 * TILE_VALUES],
            depth,
            columns,
        };
        for k in 0..depth {
            for c in 0..columns {
                let at = packed.index(k, c);
                packed.data[at] = bf16_bits(rhs.data[k * rhs.row_stride + c * rhs.col_stride]);
            }
        }
        packed
    }

    fn steps(&self) -> usize {
        self.depth.div_ceil(DEPTH)
    }

    /// Where value `(k, c)` lies in `data`.
    fn index(&self, k: usize, c: usize) -> usize {
        let (step, pair_row, half) = (k / DEPTH, (k % DEPTH) / 2, k % 2);
        let (block, tile, col) = (c / BLOCK, (c % BLOCK) / 16, c % 16);
        ((block * self.steps() + step) * 2 + tile) * TILE_VALUES + pair_row * 32 + col * 2 + half
    }

    /// Value `(k, c)` as rounded.
    fn value(&self, k: usize, c: usize) -> f32 {
        bf16_value(self.data[self.index(k, c)])
    }
}

/// The left operand `[rows × depth]` rounded to bf16, row-major, rows padded to a block and
/// depth to a step with zeros.
struct PackedLhs {
    data: Vec<u16>,
    stride: usize,
}

impl PackedLhs {
    fn pack(lhs: View<'_>, rows: usize, depth: usize) -> PackedLhs {
        let stride = depth.div_ceil(DEPTH) * DEPTH;
        let mut data = vec![0; rows.div_ceil(BLOCK) * BLOCK * stride];
        for (r, row) in data.chunks_exact_mut(stride).take(rows).enumerate() {
            let start = r * lhs.row_stride;
            if lhs.col_stride == 1 {
                let values = &lhs.data[start..start + depth];
                row.iter_mut()
                    .zip(values)
                    .for_each(|(d, &v)| *d = bf16_bits(v));
            } else {
                for (k, d) in row[..depth].iter_mut().enumerate() {
                    *d = bf16_bits(lhs.data[start + k * lhs.col_stride]);
                }
            }
        }
        PackedLhs { data, stride }
    }
}

/// `dst[m × n] = (dst if accumulate, else 0) + lhs[m × k] · rhs` with both operands rounded to
/// bf16 and the sums in f32; `dst`'s strides are `(rows, columns)`. On AMX where
/// [`available`], in scalar code otherwise.
pub(crate) fn matmul(
    dst: &mut [f32],
    (row_stride, col_stride): (usize, usize),
    lhs: View<'_>,
    rhs: &PackedRhs,
    rows: usize,
    accumulate: bool,
) {
    let (depth, columns) = (rhs.depth, rhs.columns);
    let dst_view = View {
        data: dst,
        row_stride,
        col_stride,
    };
    assert!(
        dst_view.holds(rows, columns) && lhs.holds(rows, depth),
        "bf16 matrix product operands out of bounds"
    );
    if rows == 0 || columns == 0 {
        return;
    }
    let lhs = PackedLhs::pack(lhs, rows, depth);
    let mut write = |r: usize, c: usize, value: f32| {
        let at = &mut dst[r * row_stride + c * col_stride];
        *at = if accumulate { *at + value } else { value };
    };
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the tile unit is usable ([`available`]); `lhs` holds whole blocks of rows and
        // steps of depth, `rhs` whole blocks of columns and steps (their `pack`s), which is all
        // the kernel reads.
        unsafe { tiles::product(&lhs, rhs, rows, &mut write) };
        return;
    }
    for r in 0..rows {
        let row = &lhs.data[r * lhs.stride..][..depth];
        for c in 0..columns {
            let sum = row
                .iter()
                .enumerate()
                .map(|(k, &a)| bf16_value(a) * rhs.value(k, c))
                .sum();
            write(r, c, sum);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::asm;

    use super::{PackedLhs, PackedRhs, BLOCK, DEPTH, TILE_VALUES};

    pub(super) fn cpu_has_amx_bf16() -> bool {
        const AMX_BF16: u32 = 1 << 22;
        const AMX_TILE: u32 = 1 << 24;
        #[allow(unused_unsafe)]
        // SAFETY: every x86-64 CPU has CPUID with leaf 7 (returns zeros where it is absent).
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        leaf.edx & AMX_BF16 != 0 && leaf.edx & AMX_TILE != 0
    }

    /// Asks Linux for the tile registers' state (off by default for each process); refused by
    /// kernels before 5.16 and where the hypervisor hides it.
    pub(super) fn kernel_grants_tile_data() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes the process's permissions.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    /// Palette 1 with all eight tiles at 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// Runs the product block by block: tiles 0–3 hold a 32 × 32 block of sums, 4–5 the left
    /// operand's two 16-row tiles, 6–7 the right operand's two 16-column tiles; each finished
    /// block goes through `write(row, column, sum)` for its rows and columns inside the result.
    ///
    /// # Safety
    /// The tile unit must be usable ([`super::available`]) and the operands as their `pack`s
    /// make them.
    pub(super) unsafe fn product(
        lhs: &PackedLhs,
        rhs: &PackedRhs,
        rows: usize,
        write: &mut impl FnMut(usize, usize, f32),
    ) {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for tile in 0..8 {
            config.bytes_per_row[tile] = 64;
            config.rows[tile] = 16;
        }
        let steps = rhs.steps();
        let lhs_stride_bytes = lhs.stride * 2;
        let mut sums = [0f32; 4 * 256];
        let sums_stride_bytes = 64usize;
        asm!("ldtilecfg [{}]", in(reg) &config, options(nostack));
        for row_block in 0..rows.div_ceil(BLOCK) {
            let lhs_block = &lhs.data[row_block * BLOCK * lhs.stride..];
            for col_block in 0..rhs.columns.div_ceil(BLOCK) {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack)
                );
                let rhs_block = &rhs.data[col_block * steps * 2 * TILE_VALUES..];
                for step in 0..steps {
                    let upper = lhs_block[step * DEPTH..].as_ptr();
                    let lower = lhs_block[16 * lhs.stride + step * DEPTH..].as_ptr();
                    let left = rhs_block[step * 2 * TILE_VALUES..].as_ptr();
                    let right = rhs_block[(step * 2 + 1) * TILE_VALUES..].as_ptr();
                    asm!(
                        "tileloadd tmm4, [{upper} + {lhs_stride}*1]",
                        "tileloadd tmm5, [{lower} + {lhs_stride}*1]",
                        "tileloadd tmm6, [{left} + {rhs_stride}*1]",
                        "tileloadd tmm7, [{right} + {rhs_stride}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        upper = in(reg) upper,
                        lower = in(reg) lower,
                        left = in(reg) left,
                        right = in(reg) right,
                        lhs_stride = in(reg) lhs_stride_bytes,
                        rhs_stride = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                }
                let out = sums.as_mut_ptr();
                asm!(
                    "tilestored [{out} + {stride}*1], tmm0",
                    "tilestored [{out1} + {stride}*1], tmm1",
                    "tilestored [{out2} + {stride}*1], tmm2",
                    "tilestored [{out3} + {stride}*1], tmm3",
                    out = in(reg) out,
                    out1 = in(reg) out.add(256),
                    out2 = in(reg) out.add(512),
                    out3 = in(reg) out.add(768),
                    stride = in(reg) sums_stride_bytes,
                    options(nostack)
                );
                for (tile, tile_sums) in sums.chunks_exact(256).enumerate() {
                    let first_row = row_block * BLOCK + (tile / 2) * 16;
                    let first_col = col_block * BLOCK + (tile % 2) * 16;
                    for (r, row) in tile_sums.chunks_exact(16).enumerate() {
                        let r = first_row + r;
                        if r >= rows {
                            break;
                        }
                        for (c, &sum) in row.iter().enumerate() {
                            let c = first_col + c;
                            if c >= rhs.columns {
                                break;
                            }
                            write(r, c, sum);
                        }
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_value(bf16_bits(1.0)), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(bf16_value(bf16_bits(-0.75)), -0.75);
        assert!(bf16_value(bf16_bits(f32::from_bits(0xffff_ffff))).is_nan());
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    }

    /// Ragged shapes (neither rows, columns nor depth whole blocks), strided operands and an
    /// accumulating result against sums of the same rounded values in f64.
    #[test]
    fn products_of_ragged_strided_operands_sum_the_rounded_values() {
        for &(m, n, k) in &[(1, 1, 1), (37, 50, 45), (70, 33, 97), (16, 64, 384)] {
            let a = random(m * k, 1);
            let b = random(k * n, 2);
            let start = random(m * n * 2, 3);
            let packed = PackedRhs::pack(View::transposed(&b, k), k, n);
            let mut dst = start.clone();
            // `dst` column-major with a spare column between rows' neighbours; `b` read as the
            // transpose of an `[n × k]` matrix.
            matmul(&mut dst, (1, 2 * m), View::rows(&a, k), &packed, m, true);
            for r in 0..m {
                for c in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| {
                            f64::from(bf16_value(bf16_bits(a[r * k + i])))
                                * f64::from(bf16_value(bf16_bits(b[c * k + i])))
                        })
                        .sum();
                    let expected = f64::from(start[r + c * 2 * m]) + exact;
                    let got = f64::from(dst[r + c * 2 * m]);
                    assert!(
                        (got - expected).abs() < 1e-5 * (k as f64).sqrt().max(1.0),
                        "({m}, {n}, {k}) at ({r}, {c}): {got} against {expected}"
                    );
                }
            }
            // What the product leaves alone stays as it was.
            for r in 0..m {
                for c in 0..n {
                    assert_eq!(dst[m + r + c * 2 * m], start[m + r + c * 2 * m]);
                }
            }
        }
    }

    #[test]
    fn rounding_to_bf16_stays_within_its_precision_of_the_f32_product() {
        let (m, n, k) = (40, 48, 384);
        let a = random(m * k, 4);
        let b = random(k * n, 5);
        let packed = PackedRhs::pack(View::rows(&b, n), k, n);
        let mut dst = vec![0.0; m * n];
        matmul(&mut dst, (n, 1), View::rows(&a, k), &packed, m, false);
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| a[r * k + i] * b[i * n + c]).sum();
                // Each rounded product is within 2^-8 of its value; their errors add up like a
                // random walk over the depth, with margin.
                let magnitude: f32 = (0..k).map(|i| (a[r * k + i] * b[i * n + c]).abs()).sum();
                assert!(
                    (dst[r * n + c] - exact).abs() < magnitude / 256.0,
                    "at ({r}, {c}): {} against {exact}",
                    dst[r * n + c]
                );
            }
        }
    }
}
