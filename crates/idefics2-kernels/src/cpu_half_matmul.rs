//! Linear layers of the CPU device whose weights stay in f16 or bf16 in host memory, as a
//! half-precision checkpoint stores them: the 8B in bf16 needs 15 GiB, not the 30 of f32.
//!
//! - Up to [`CPU_GEMV_MAX_ROWS`] rows of `x` (decode): each output row's weights are turned into
//!   f32 a chunk at a time, small enough to stay in the L1 cache, and dotted with every row of `x`;
//!   rayon spreads blocks of output rows over the cores. Decoding is bound by memory bandwidth, and
//!   half the bytes of f32 is the point.
//! - More rows (prefill): the weight is turned into f32 a block of output rows at a time and
//!   burn's matmul multiplies each block, as the quantized path does
//!   ([`crate::cpu_widened_matmul`]).
//!
//! [`half_matmul_reference`], the same product in plain burn (a tensor of the half dtype cast to
//! f32), is the oracle the tests compare with.

use burn::tensor::{DType, Device, Tensor, TensorData};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use rayon::prelude::*;

use crate::cpu_gemv::{CPU_GEMV_MAX_ROWS, gemv_tasks, host_gemv};
use crate::cpu_widened_matmul::widened_matmul;

/// Weights turned into f32 at a time: 1 KiB, well inside the L1 cache with `x`'s matching parts.
const CHUNK: usize = 256;

/// The 16-bit float formats a weight can be held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfDtype {
    F16,
    Bf16,
}

impl HalfDtype {
    /// burn's name for it.
    pub fn dtype(self) -> DType {
        match self {
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The half dtype `dtype` names, if it is one.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F16 => Some(Self::F16),
            DType::BF16 => Some(Self::Bf16),
            _ => None,
        }
    }

    /// `bits` as f32 into `out` (same length); exact, every half value is an f32.
    #[inline(always)]
    fn widen(self, bits: &[u16], out: &mut [f32]) {
        match self {
            // bf16 is the upper half of an f32.
            Self::Bf16 => {
                for (o, &b) in out.iter_mut().zip(bits) {
                    *o = f32::from_bits(u32::from(b) << 16);
                }
            }
            // `half` uses F16C where the CPU has it (checked at run time).
            Self::F16 => bits
                .reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(out),
        }
    }

    /// `value` rounded to this format (to nearest, ties to even), as bits.
    fn narrow(self, value: f32) -> u16 {
        match self {
            Self::F16 => half::f16::from_f32(value).to_bits(),
            Self::Bf16 => half::bf16::from_f32(value).to_bits(),
        }
    }
}

/// A linear weight `[n_out, k_in]` in f16 or bf16, row-major, in host memory.
#[derive(Debug, Clone)]
pub struct HalfWeight {
    pub dtype: HalfDtype,
    pub n_out: usize,
    pub k_in: usize,
    pub bits: Vec<u16>,
}

impl HalfWeight {
    /// `values` (`[n_out, k_in]`, row-major) rounded to `dtype`.
    pub fn from_f32(values: &[f32], n_out: usize, k_in: usize, dtype: HalfDtype) -> Self {
        assert_eq!(
            values.len(),
            n_out * k_in,
            "{} values are not a [{n_out}, {k_in}] weight",
            values.len()
        );
        let bits = values.par_iter().map(|&v| dtype.narrow(v)).collect();
        Self {
            dtype,
            n_out,
            k_in,
            bits,
        }
    }

    /// The weight in f32 (exactly its values), `[n_out, k_in]` row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.bits.len()];
        out.par_chunks_mut(CHUNK * 64)
            .zip(self.bits.par_chunks(CHUNK * 64))
            .for_each(|(out, bits)| self.dtype.widen(bits, out));
        out
    }

    /// Host memory the weight holds.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 2
    }
}

/// `x [rows, k_in] @ W^T -> [rows, n_out]` in f32 on `x`'s device (the CPU device).
pub fn cpu_half_matmul(x: Tensor<2>, w: &HalfWeight) -> Tensor<2> {
    let [rows, k_in] = x.dims();
    assert_eq!(k_in, w.k_in, "x has {k_in} features, the weight {}", w.k_in);
    if rows > CPU_GEMV_MAX_ROWS {
        return widened_matmul(x, w.n_out, w.k_in, |first, out| {
            w.dtype.widen(&w.bits[first * w.k_in..][..out.len()], out)
        });
    }
    host_gemv(x, w.n_out, |x, rows| half_gemv(x, rows, w))
}

/// The same product in plain burn: the weight as a tensor of its half dtype on `device`, cast to
/// f32, multiplied by burn's matmul.
pub fn half_matmul_reference(x: Tensor<2>, w: &HalfWeight, device: &Device) -> Tensor<2> {
    let data = match w.dtype {
        HalfDtype::F16 => TensorData::new(
            w.bits.reinterpret_cast::<half::f16>().to_vec(),
            [w.n_out, w.k_in],
        ),
        HalfDtype::Bf16 => TensorData::new(
            w.bits.reinterpret_cast::<half::bf16>().to_vec(),
            [w.n_out, w.k_in],
        ),
    };
    let weight = Tensor::<2>::from_data(data, (device, w.dtype.dtype())).cast(DType::F32);
    x.cast(DType::F32).matmul(weight.transpose())
}

/// `x [rows, k_in] @ W^T -> [rows, n_out]` on the host, `rows` up to [`CPU_GEMV_MAX_ROWS`].
pub fn half_gemv(x: &[f32], rows: usize, w: &HalfWeight) -> Vec<f32> {
    gemv_tasks(x, rows, w.n_out, w.k_in, |first, out| {
        gemv_task(w, x, rows, first, out)
    })
}

/// Runs one task compiled for AVX2 where the CPU has it, else for the baseline.
fn gemv_task(w: &HalfWeight, x: &[f32], rows: usize, first: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above; the function needs nothing else.
        #[allow(unsafe_code)]
        unsafe {
            gemv_task_avx2(w, x, rows, first, out)
        };
        return;
    }
    gemv_task_body(w, x, rows, first, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gemv_task_avx2(w: &HalfWeight, x: &[f32], rows: usize, first: usize, out: &mut [f32]) {
    gemv_task_body(w, x, rows, first, out);
}

/// Output rows `first..` of the weight (`out`: `[outputs of this task, rows]`) for every row of
/// `x`, inlined into each instruction-set copy.
#[inline(always)]
fn gemv_task_body(w: &HalfWeight, x: &[f32], rows: usize, first: usize, out: &mut [f32]) {
    let k_in = w.k_in;
    let mut widened = [0f32; CHUNK];
    let mut lanes = [[0f32; 8]; CPU_GEMV_MAX_ROWS];
    for (i, out) in out.chunks_mut(rows).enumerate() {
        let n = first + i;
        let row = &w.bits[n * k_in..(n + 1) * k_in];
        lanes[..rows].iter_mut().for_each(|l| *l = [0.0; 8]);
        for (c, bits) in row.chunks(CHUNK).enumerate() {
            let weights = &mut widened[..bits.len()];
            w.dtype.widen(bits, weights);
            for (m, lanes) in lanes[..rows].iter_mut().enumerate() {
                let start = m * k_in + c * CHUNK;
                accumulate(weights, &x[start..start + bits.len()], lanes);
            }
        }
        for (o, lanes) in out.iter_mut().zip(&lanes[..rows]) {
            *o = lanes.iter().sum();
        }
    }
}

/// `lanes += a * b` over 8 independent lanes (a float sum in one chain would not vectorize); the
/// tail past a multiple of 8 goes to lane 0.
#[inline(always)]
fn accumulate(a: &[f32], b: &[f32], lanes: &mut [f32; 8]) {
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a8.remainder(), b8.remainder());
    for (a, b) in a8.zip(b8) {
        for j in 0..8 {
            lanes[j] += a[j] * b[j];
        }
    }
    for (a, b) in a_rest.iter().zip(b_rest) {
        lanes[0] += a * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact_and_narrowing_rounds_to_nearest() {
        for dtype in [HalfDtype::F16, HalfDtype::Bf16] {
            let values = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 1.0e-7, 3.140625, -1.0e-3];
            let w = HalfWeight::from_f32(&values, 2, 4, dtype);
            let back = w.to_f32();
            for (v, b) in values.iter().zip(&back) {
                let expected = match dtype {
                    HalfDtype::F16 => half::f16::from_f32(*v).to_f32(),
                    HalfDtype::Bf16 => half::bf16::from_f32(*v).to_f32(),
                };
                assert_eq!(b.to_bits(), expected.to_bits(), "{dtype:?} {v}");
            }
        }
    }
}
