//! The quantized matmul of the CPU device, reading the packed codes in host memory.
//!
//! The plain-burn reference turns the whole weight back into f32 tensors at every call (a dozen
//! elementwise passes over it), which made a decode step of the 8B take minutes. Here:
//! - up to [`CPU_GEMV_MAX_ROWS`] rows (decode): each output row's codes are read once, a group at
//!   a time, turned into `q - zero` and dotted with every row of `x`, then scaled; rayon spreads
//!   blocks of output rows over the cores;
//! - more rows (prefill): the weight is dequantized into f32 a block of output rows at a time and
//!   burn's matmul (the `gemm` crate on the CPU device) multiplies each block, since the work is
//!   then compute-bound ([`crate::cpu_widened_matmul`]).
//!
//! The loops are plain Rust that the compiler vectorizes; on x86-64 they are also compiled for
//! AVX2 (8 lanes, variable shifts for the nibbles) and that copy runs where the CPU has it (the
//! baseline is SSE2). The plain-burn [`crate::quant_matmul_reference`] stays the oracle the tests
//! compare with.

use burn::backend::DispatchDevice;
use burn::tensor::{Device, Tensor};

use crate::cpu_widened_matmul::widened_matmul;
use crate::format::QuantFormat;
use crate::quantize::PackedWeight;

pub use crate::cpu_gemv::CPU_GEMV_MAX_ROWS;
use crate::cpu_gemv::{gemv_tasks, host_gemv};

/// Whether `device` is burn's CPU device (Flex), whose quantized weights live in host memory.
pub fn is_cpu_device(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Flex(_))
}

/// `x [rows, k_in] @ W^T -> [rows, n_out]` in f32 on `x`'s device (the CPU device).
pub fn cpu_quant_matmul(x: Tensor<2>, w: &PackedWeight) -> Tensor<2> {
    let [rows, k_in] = x.dims();
    assert_eq!(k_in, w.k_in, "x has {k_in} features, the weight {}", w.k_in);
    if rows > CPU_GEMV_MAX_ROWS {
        return widened_matmul(x, w.n_out, w.k_in, |first, out| {
            dequantize_rows(w, first, out)
        });
    }
    host_gemv(x, w.n_out, |x, rows| quant_gemv(x, rows, w))
}

/// `x [rows, k_in] @ W^T -> [rows, n_out]` on the host, reading the codes directly: q4 in 16-bit
/// integers where the CPU has AVX2 ([`crate::cpu_q4_i16`]), else in f32.
pub fn quant_gemv(x: &[f32], rows: usize, w: &PackedWeight) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_q4_i16::applies(w) {
        return quant_gemv_i16(x, rows, w);
    }
    quant_gemv_f32(x, rows, w)
}

/// [`quant_gemv`] through [`crate::cpu_q4_i16`] (callers check [`crate::cpu_q4_i16::applies`]).
#[cfg(target_arch = "x86_64")]
pub fn quant_gemv_i16(x: &[f32], rows: usize, w: &PackedWeight) -> Vec<f32> {
    use crate::cpu_q4_i16::{BLOCK, QuantizedRows, applies, gemv_rows};
    assert!(
        applies(w),
        "the 16-bit q4 GEMV needs q4 in blocks of {BLOCK} and AVX2"
    );
    assert!(
        rows <= CPU_GEMV_MAX_ROWS,
        "at most {CPU_GEMV_MAX_ROWS} rows, got {rows}"
    );
    let xq = QuantizedRows::new(x, rows, w);
    gemv_tasks(x, rows, w.n_out, w.k_in, |first, out| {
        // SAFETY: `applies` checked AVX2 and FMA above.
        #[allow(unsafe_code)]
        unsafe {
            gemv_rows(w, &xq, rows, first, out)
        }
    })
}

/// [`quant_gemv`] in f32: every code turned into a float and multiplied.
pub fn quant_gemv_f32(x: &[f32], rows: usize, w: &PackedWeight) -> Vec<f32> {
    let (k_in, group, groups) = (w.k_in, w.format.group(), w.groups_per_row());
    assert_eq!(
        x.len(),
        rows * k_in,
        "x holds {} values, not {rows} x {k_in}",
        x.len()
    );
    // x padded to whole groups: the padding codes of the last group meet zeros.
    let k_pad = groups * group;
    let mut xp = vec![0f32; rows * k_pad];
    for m in 0..rows {
        xp[m * k_pad..m * k_pad + k_in].copy_from_slice(&x[m * k_in..(m + 1) * k_in]);
    }
    // The q4 path (groups a multiple of 16) reads two words (16 codes) at a time as bytes: their low
    // nibbles are the even inputs, the high ones the odd inputs, so x is reordered to match
    // (evens, then odds, in every block of 16), and each group's sum of x gives the zero point's
    // share: sum((q - z) x) = sum(q x) - z sum(x).
    let pairs = matches!(w.format, QuantFormat::Q4 { .. }) && group.is_multiple_of(16);
    let mut xsum = Vec::new();
    if pairs {
        xsum = xp.chunks(group).map(|g| g.iter().sum()).collect();
        for block in xp.chunks_exact_mut(16) {
            let original: [f32; 16] = std::array::from_fn(|j| block[j]);
            for j in 0..8 {
                block[j] = original[2 * j];
                block[8 + j] = original[2 * j + 1];
            }
        }
    }
    gemv_tasks(x, rows, w.n_out, k_in, |first, out| {
        gemv_task(GemvTask {
            w,
            xp: &xp,
            xsum: pairs.then_some(&xsum[..]),
            rows,
            first,
            out,
        })
    })
}

/// Rows `first..first + out.len() / k_in` of the weight in f32, into `out`.
pub fn dequantize_rows(w: &PackedWeight, first: usize, out: &mut [f32]) {
    let (k_in, group, groups) = (w.k_in, w.format.group(), w.groups_per_row());
    let words_per_group = group / w.format.values_per_word();
    let mut values = vec![0f32; group];
    for (i, row_out) in out.chunks_mut(k_in).enumerate() {
        let n = first + i;
        let words = &w.words[n * w.words_per_row()..(n + 1) * w.words_per_row()];
        for g in 0..groups {
            let zero = w.zeros.get(n * groups + g).map_or(0.0, |&z| f32::from(z));
            let group_words = &words[g * words_per_group..(g + 1) * words_per_group];
            decode_group(w.format, group_words, zero, &mut values);
            let scale = w.scales[n * groups + g];
            let start = g * group;
            let end = (start + group).min(k_in);
            for (o, v) in row_out[start..end].iter_mut().zip(&values) {
                *o = v * scale;
            }
        }
    }
}

/// Runs `task` compiled for AVX2 where the CPU has it, else for the baseline.
fn gemv_task(task: GemvTask<'_>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above; the function needs nothing else.
        #[allow(unsafe_code)]
        unsafe {
            gemv_task_avx2(task)
        };
        return;
    }
    gemv_task_body(task);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gemv_task_avx2(task: GemvTask<'_>) {
    gemv_task_body(task);
}

/// One rayon task of [`quant_gemv`]: output rows `first..` of the weight, for every row of `x`.
struct GemvTask<'a> {
    w: &'a PackedWeight,
    xp: &'a [f32],
    /// The q4 path by pairs of words: x reordered, and its sum per row and group.
    xsum: Option<&'a [f32]>,
    rows: usize,
    first: usize,
    /// `[outputs of this task, rows]`.
    out: &'a mut [f32],
}

/// The work of [`gemv_task`], inlined into each instruction-set copy.
#[inline(always)]
fn gemv_task_body(task: GemvTask<'_>) {
    {
        let GemvTask {
            w,
            xp,
            xsum,
            rows,
            first,
            out,
        } = task;
        let (group, groups) = (w.format.group(), w.groups_per_row());
        let k_pad = groups * group;
        let words_per_row = w.words_per_row();
        let words_per_group = group / w.format.values_per_word();
        if let Some(xsum) = xsum {
            // Per row of x: 8 lanes of scaled sums over the groups, and the zero points' share.
            let mut lanes = [[0f32; 8]; CPU_GEMV_MAX_ROWS];
            let mut offsets = [0f32; CPU_GEMV_MAX_ROWS];
            for (i, out) in out.chunks_mut(rows).enumerate() {
                let n = first + i;
                let words = &w.words[n * words_per_row..(n + 1) * words_per_row];
                lanes[..rows].iter_mut().for_each(|l| *l = [0.0; 8]);
                offsets[..rows].fill(0.0);
                for g in 0..groups {
                    let scale = w.scales[n * groups + g];
                    let zero = f32::from(w.zeros[n * groups + g]);
                    let group_words = &words[g * words_per_group..(g + 1) * words_per_group];
                    for m in 0..rows {
                        let x = &xp[m * k_pad + g * group..m * k_pad + (g + 1) * group];
                        let part = dot_q4_pairs(group_words, x);
                        for (lane, p) in lanes[m].iter_mut().zip(part) {
                            *lane += scale * p;
                        }
                        offsets[m] += scale * zero * xsum[m * groups + g];
                    }
                }
                for (m, out) in out.iter_mut().enumerate() {
                    *out = lanes[m].iter().sum::<f32>() - offsets[m];
                }
            }
            return;
        }
        let mut values = vec![0f32; group];
        let mut acc = [0f32; CPU_GEMV_MAX_ROWS];
        for (i, out) in out.chunks_mut(rows).enumerate() {
            let n = first + i;
            let words = &w.words[n * words_per_row..(n + 1) * words_per_row];
            acc[..rows].fill(0.0);
            for g in 0..groups {
                let zero = w.zeros.get(n * groups + g).map_or(0.0, |&z| f32::from(z));
                let group_words = &words[g * words_per_group..(g + 1) * words_per_group];
                decode_group(w.format, group_words, zero, &mut values);
                let scale = w.scales[n * groups + g];
                for (m, acc) in acc[..rows].iter_mut().enumerate() {
                    let x = &xp[m * k_pad + g * group..m * k_pad + (g + 1) * group];
                    *acc += scale * dot(&values, x);
                }
            }
            out.copy_from_slice(&acc[..rows]);
        }
    }
}

/// `q x` of one q4 group in 8 lanes: two words (16 codes) at a time as the bytes of a u64, low
/// nibbles against the even inputs and high nibbles against the odd ones (`x` reordered so, see
/// [`quant_gemv`]); the bytes widen to f32 lanes without shifting every nibble on its own.
#[inline(always)]
fn dot_q4_pairs(words: &[u32], x: &[f32]) -> [f32; 8] {
    const NIBBLES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    let mut even = [0f32; 8];
    let mut odd = [0f32; 8];
    for (pair, x) in words.chunks_exact(2).zip(x.chunks_exact(16)) {
        let both = u64::from(pair[0]) | (u64::from(pair[1]) << 32);
        let low = (both & NIBBLES).to_le_bytes();
        let high = ((both >> 4) & NIBBLES).to_le_bytes();
        for k in 0..8 {
            even[k] += f32::from(low[k]) * x[k];
            odd[k] += f32::from(high[k]) * x[8 + k];
        }
    }
    std::array::from_fn(|k| even[k] + odd[k])
}

/// The codes of one group as `q - zero` (Q4) or `q` (Q8), exact small integers in f32.
#[inline(always)]
fn decode_group(format: QuantFormat, words: &[u32], zero: f32, values: &mut [f32]) {
    match format {
        QuantFormat::Q4 { .. } => {
            for (word, values) in words.iter().zip(values.chunks_exact_mut(8)) {
                for (j, v) in values.iter_mut().enumerate() {
                    *v = ((word >> (4 * j)) & 0xF) as f32 - zero;
                }
            }
        }
        QuantFormat::Q8 { .. } => {
            for (word, values) in words.iter().zip(values.chunks_exact_mut(4)) {
                for (j, v) in values.iter_mut().enumerate() {
                    *v = f32::from((word >> (8 * j)) as u8 as i8);
                }
            }
        }
    }
}

/// `sum(a * b)` in 8 independent lanes (a float sum in one chain would not vectorize).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a8.remainder(), b8.remainder());
    for (a, b) in a8.zip(b8) {
        for j in 0..8 {
            lanes[j] += a[j] * b[j];
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (a, b) in a_rest.iter().zip(b_rest) {
        sum += a * b;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::quantize;

    /// `x @ W^T` in f64 from the dequantized weight.
    fn naive(x: &[f32], rows: usize, w: &PackedWeight) -> Vec<f64> {
        let weight = w.dequantize();
        let mut out = vec![0f64; rows * w.n_out];
        for m in 0..rows {
            for n in 0..w.n_out {
                out[m * w.n_out + n] = (0..w.k_in)
                    .map(|k| f64::from(x[m * w.k_in + k]) * f64::from(weight[n * w.k_in + k]))
                    .sum();
            }
        }
        out
    }

    /// What rounding `x` to 16 bits may move each output of the 16-bit GEMV by: per block, half
    /// its step times the block's sum of |w|.
    #[cfg(target_arch = "x86_64")]
    fn i16_error_bounds(x: &[f32], rows: usize, w: &PackedWeight) -> Vec<f64> {
        use crate::cpu_q4_i16::{BLOCK, QuantizedRows};
        let xq = QuantizedRows::new(x, rows, w);
        let weight = w.dequantize();
        let mut bounds = vec![0f64; rows * w.n_out];
        for m in 0..rows {
            for n in 0..w.n_out {
                bounds[m * w.n_out + n] = (0..w.k_in)
                    .map(|k| {
                        f64::from(xq.half_step(m, k / BLOCK))
                            * f64::from(weight[n * w.k_in + k].abs())
                    })
                    .sum();
            }
        }
        bounds
    }

    #[test]
    fn gemv_and_dequantize_match_the_dequantized_weight_on_odd_shapes() {
        #[cfg(target_arch = "x86_64")]
        let mut tested_i16 = false;
        let mut state = 0x1234_5678u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as f32 / u32::MAX as f32 - 0.5
        };
        for format in [
            QuantFormat::Q4_32,
            QuantFormat::Q8_32,
            QuantFormat::Q4 { group: 128 },
            QuantFormat::Q4 { group: 16 },
            QuantFormat::Q4 { group: 8 },
            QuantFormat::Q8 { group: 12 },
        ] {
            for (n_out, k_in) in [(1, 1), (17, 45), (40, 300), (33, 128)] {
                let weight: Vec<f32> = (0..n_out * k_in).map(|_| next()).collect();
                let w = quantize(&weight, n_out, k_in, format).expect("valid");
                // Whole, and from a row on (as the prefill's blocks ask for it).
                let whole = w.dequantize();
                let mut rows_out = vec![0f32; n_out * k_in];
                dequantize_rows(&w, 0, &mut rows_out);
                assert_eq!(rows_out, whole, "{format:?}");
                let first = n_out / 2;
                dequantize_rows(&w, first, &mut rows_out[first * k_in..]);
                assert_eq!(rows_out, whole, "{format:?} from row {first}");
                for rows in [1, 3, CPU_GEMV_MAX_ROWS] {
                    let x: Vec<f32> = (0..rows * k_in).map(|_| next()).collect();
                    let expected = naive(&x, rows, &w);
                    let got = quant_gemv_f32(&x, rows, &w);
                    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                        assert!(
                            (f64::from(*g) - e).abs() <= 1e-5 * (1.0 + e.abs()),
                            "{format:?} {n_out}x{k_in} rows {rows} at {i}: {g} vs {e}"
                        );
                    }
                    #[cfg(target_arch = "x86_64")]
                    if crate::cpu_q4_i16::applies(&w) {
                        let got = quant_gemv_i16(&x, rows, &w);
                        let bounds = i16_error_bounds(&x, rows, &w);
                        for (i, ((g, e), bound)) in
                            got.iter().zip(&expected).zip(bounds).enumerate()
                        {
                            assert!(
                                (f64::from(*g) - e).abs() <= bound + 1e-5 * (1.0 + e.abs()),
                                "{format:?} i16 {n_out}x{k_in} rows {rows} at {i}: {g} vs {e}"
                            );
                        }
                        tested_i16 = true;
                    }
                }
            }
        }
        // This machine (and CI's) has AVX2: the 16-bit path must not go untested silently.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            tested_i16,
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        );
    }
}
