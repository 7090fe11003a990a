//! The CPU device's q4 GEMV in integers: `x` rounded to 16 bits per block of 32 values, the 4-bit
//! codes widened to 16 bits, and AVX2's `vpmaddwd` multiplying and pairing them in one
//! instruction.
//!
//! Why: the float GEMV of [`crate::cpu_quant_matmul`] turns every code into an f32 before its
//! multiply (about 14 instructions per 16 weights), which bound a decoder layer of the 8B to 34 ms
//! (issue 28 asks for about 15). Here a block of 32 weights takes about a dozen, and each load
//! of a block of `x` serves four output rows: 11 ms a layer.
//!
//! What it computes: each block of 32 values of a row of `x` is scaled by `max|x| / 32767` and
//! rounded, so every value is kept within half a step of 32767ths of its block's largest: 15 bits,
//! more than the 11 of the f16 arithmetic AWQ's own kernels (and transformers' f16 runs) use. The
//! integer dot of a block is exact; its scale (`weight scale x block scale`) is applied in f32.
//! Not 8-bit activations as llama.cpp and candle use: those move the logits visibly.

use std::arch::x86_64::{
    __m256, __m256i, _mm_add_ps, _mm_cvtss_f32, _mm_hadd_ps, _mm_loadu_si128, _mm256_add_epi32,
    _mm256_and_si256, _mm256_castps256_ps128, _mm256_cvtepi32_ps, _mm256_cvtepu8_epi16,
    _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_mul_ps,
    _mm256_set1_epi16, _mm256_set1_ps, _mm256_setzero_ps, _mm256_setzero_si256, _mm256_srli_epi16,
    _mm256_sub_epi16,
};

use crate::cpu_quant_matmul::CPU_GEMV_MAX_ROWS;
use crate::format::QuantFormat;
use crate::quantize::PackedWeight;

/// Output rows a pass over a block of `x` serves, for one or two rows of `x`.
const UNROLL: usize = 4;

/// Values of `x` sharing one 16-bit scale (one `vpmaddwd` pair of the codes of 4 words).
pub const BLOCK: usize = 32;

/// Whether this path can run `w` here: q4 in groups of whole blocks, on a CPU with AVX2 and FMA.
pub fn applies(w: &PackedWeight) -> bool {
    matches!(w.format, QuantFormat::Q4 { group } if group.is_multiple_of(BLOCK))
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Rows of `x` in 16 bits: per row and block, the even values then the odd ones (the order of the
/// codes' low and high nibbles), and the block's scale.
pub struct QuantizedRows {
    values: Vec<i16>,
    scales: Vec<f32>,
    blocks: usize,
}

impl QuantizedRows {
    /// `x [rows, k_in]` for multiplying by `w`, zero-padded to its whole groups.
    pub fn new(x: &[f32], rows: usize, w: &PackedWeight) -> Self {
        let k_in = w.k_in;
        let blocks = w.groups_per_row() * w.format.group() / BLOCK;
        let mut values = vec![0i16; rows * blocks * BLOCK];
        let mut scales = vec![0f32; rows * blocks];
        for m in 0..rows {
            let row = &x[m * k_in..(m + 1) * k_in];
            for b in 0..blocks {
                let start = (b * BLOCK).min(k_in);
                let block = &row[start..(start + BLOCK).min(k_in)];
                let largest = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                if largest == 0.0 || !largest.is_finite() {
                    // Zeros stay zeros; a non-finite value makes the block's results NaN, as
                    // float arithmetic would.
                    scales[m * blocks + b] = if largest == 0.0 { 0.0 } else { f32::NAN };
                    continue;
                }
                let scale = largest / 32767.0;
                let out = &mut values[(m * blocks + b) * BLOCK..][..BLOCK];
                for (j, v) in block.iter().enumerate() {
                    let slot = if j % 2 == 0 { j / 2 } else { BLOCK / 2 + j / 2 };
                    out[slot] = (v / scale).round() as i16;
                }
                scales[m * blocks + b] = scale;
            }
        }
        Self {
            values,
            scales,
            blocks,
        }
    }

    /// The largest error rounding put into `x`'s row `m`, block `b`: half a step.
    pub fn half_step(&self, m: usize, b: usize) -> f32 {
        self.scales[m * self.blocks + b] / 2.0
    }
}

/// Output rows `first..first + out.len() / rows` of `x @ W^T`, as `[outputs, rows]` in `out`.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`applies`]).
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemv_rows(
    w: &PackedWeight,
    x: &QuantizedRows,
    rows: usize,
    first: usize,
    out: &mut [f32],
) {
    match rows {
        1 => gemv_rows_of::<1, UNROLL>(w, x, first, out),
        2 => gemv_rows_of::<2, UNROLL>(w, x, first, out),
        3 => gemv_rows_of::<3, 1>(w, x, first, out),
        4 => gemv_rows_of::<4, 1>(w, x, first, out),
        5 => gemv_rows_of::<5, 1>(w, x, first, out),
        6 => gemv_rows_of::<6, 1>(w, x, first, out),
        7 => gemv_rows_of::<7, 1>(w, x, first, out),
        _ => gemv_rows_of::<CPU_GEMV_MAX_ROWS, 1>(w, x, first, out),
    }
}

/// [`gemv_rows`] for `R` rows of `x`, `U` output rows at a time: the codes of a block are
/// widened once and serve every row of `x`, and each block of `x` is loaded once for `U` output
/// rows (independent sums, so the multiply-adds of different outputs overlap).
#[allow(unsafe_code, clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn gemv_rows_of<const R: usize, const U: usize>(
    w: &PackedWeight,
    x: &QuantizedRows,
    first: usize,
    out: &mut [f32],
) {
    let group = w.format.group();
    let groups = w.groups_per_row();
    let words_per_row = w.words_per_row();
    let blocks_per_group = group / BLOCK;
    let blocks = x.blocks;
    debug_assert_eq!(blocks, groups * blocks_per_group);
    let low_nibble = _mm256_set1_epi16(0x0F);
    let outputs = out.len() / R;
    let mut n0 = 0;
    while n0 < outputs {
        // The last outputs of a task may not fill U: they repeat the last row, written once.
        let rows: [usize; U] = std::array::from_fn(|u| first + (n0 + u).min(outputs - 1));
        let words: [&[u32]; U] = std::array::from_fn(|u| {
            &w.words[rows[u] * words_per_row..(rows[u] + 1) * words_per_row]
        });
        let mut acc: [[__m256; R]; U] = [[_mm256_setzero_ps(); R]; U];
        for g in 0..groups {
            let scales: [__m256; U] =
                std::array::from_fn(|u| _mm256_set1_ps(w.scales[rows[u] * groups + g]));
            let zeros: [__m256i; U] = std::array::from_fn(|u| {
                _mm256_set1_epi16(i16::from(w.zeros[rows[u] * groups + g]))
            });
            for bg in 0..blocks_per_group {
                let b = g * blocks_per_group + bg;
                let mut even = [_mm256_setzero_si256(); U];
                let mut odd = [_mm256_setzero_si256(); U];
                for u in 0..U {
                    let codes = &words[u][b * 4..b * 4 + 4];
                    // SAFETY: `codes` holds 4 words, the 16 bytes loaded.
                    let codes = unsafe { _mm_loadu_si128(codes.as_ptr().cast()) };
                    // Each byte widened to 16 bits holds two codes: the low nibble (an even
                    // position) and the high one (odd).
                    let pairs = _mm256_cvtepu8_epi16(codes);
                    even[u] = _mm256_sub_epi16(_mm256_and_si256(pairs, low_nibble), zeros[u]);
                    odd[u] = _mm256_sub_epi16(_mm256_srli_epi16::<4>(pairs), zeros[u]);
                }
                for m in 0..R {
                    let xs = &x.values[(m * blocks + b) * BLOCK..][..BLOCK];
                    // SAFETY: `xs` holds 32 i16, the two 32-byte loads.
                    let (xe, xo): (__m256i, __m256i) = unsafe {
                        (
                            _mm256_loadu_si256(xs.as_ptr().cast()),
                            _mm256_loadu_si256(xs[16..].as_ptr().cast()),
                        )
                    };
                    let x_scale = _mm256_set1_ps(x.scales[m * blocks + b]);
                    for u in 0..U {
                        let dot = _mm256_add_epi32(
                            _mm256_madd_epi16(even[u], xe),
                            _mm256_madd_epi16(odd[u], xo),
                        );
                        let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), x_scale);
                        acc[u][m] = _mm256_fmadd_ps(scaled, scales[u], acc[u][m]);
                    }
                }
            }
        }
        for (u, acc) in acc.iter().enumerate().take(outputs - n0) {
            for (m, acc) in acc.iter().enumerate() {
                out[(n0 + u) * R + m] = sum_lanes(*acc);
            }
        }
        n0 += U;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn sum_lanes(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_hadd_ps(quad, quad);
    _mm_cvtss_f32(_mm_hadd_ps(pair, pair))
}
