//! The CPU device's products over more rows than a GEMV takes (prefill), for weights held in
//! fewer bits (q4, q8, f16, bf16): the weight is widened to f32 a block of output rows at a
//! time, and burn's matmul (`gemm` on the CPU device) multiplies each block.
//!
//! Blocks, not the whole weight: a whole `[14336, 4096]` weight in f32 is 235 MB, which the
//! allocator maps fresh from the kernel at every call (above glibc's 32 MiB ceiling for reusing
//! freed memory), so each prefill paid a page fault per 4 KiB of every weight: 145 of the 356 CPU
//! seconds of the 8B's bf16 bench were the kernel's. Blocks of at most [`BLOCK_BYTES`] are reused
//! from the heap after the first.

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::cpu_gemv::ROWS_PER_TASK;

/// The most bytes of widened weight at a time.
pub const BLOCK_BYTES: usize = 16 << 20;

/// `x [rows, k_in] @ W^T -> [rows, n_out]` on `x`'s device, where `widen(first, out)` writes
/// output rows `first..first + out.len() / k_in` of `W` in f32 into `out`.
pub fn widened_matmul(
    x: Tensor<2>,
    n_out: usize,
    k_in: usize,
    widen: impl Fn(usize, &mut [f32]) + Sync,
) -> Tensor<2> {
    let device = x.device();
    let rows_per_block = (BLOCK_BYTES / (4 * k_in.max(1))).clamp(1, n_out.max(1));
    let mut outs = Vec::with_capacity(n_out.div_ceil(rows_per_block));
    for first in (0..n_out).step_by(rows_per_block) {
        let rows = rows_per_block.min(n_out - first);
        let mut block = vec![0f32; rows * k_in];
        block
            .par_chunks_mut(ROWS_PER_TASK * k_in)
            .enumerate()
            .for_each(|(task, out)| widen(first + task * ROWS_PER_TASK, out));
        let weight = Tensor::<2>::from_data(TensorData::new(block, [rows, k_in]), &device);
        outs.push(x.clone().matmul(weight.transpose()));
    }
    match outs.len() {
        1 => outs.pop().expect("one block"),
        _ => Tensor::cat(outs, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// A weight value that no block boundary could line up by chance.
    fn weight(n: usize, k: usize) -> f32 {
        (((n * 7919 + k * 104_729) % 1000) as f32 - 500.0) / 500.0
    }

    #[test]
    fn blocks_together_give_the_whole_product() {
        // Rows of 4 MiB: blocks of 4 output rows, so 10 rows are 4 + 4 + 2.
        let (rows, n_out, k_in) = (9, 10, 1 << 20);
        assert_eq!(BLOCK_BYTES / (4 * k_in), 4);
        let x: Vec<f32> = (0..rows * k_in)
            .map(|i| ((i * 31) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let device = Device::flex();
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, k_in]), &device);
        let got = widened_matmul(xt, n_out, k_in, |first, out| {
            for (i, row) in out.chunks_mut(k_in).enumerate() {
                for (k, v) in row.iter_mut().enumerate() {
                    *v = weight(first + i, k);
                }
            }
        });
        assert_eq!(got.dims(), [rows, n_out]);
        let got = got.into_data().try_to_vec::<f32>().expect("f32");
        for m in 0..rows {
            for n in 0..n_out {
                let (exact, magnitude) = (0..k_in).fold((0f64, 0f64), |(s, a), k| {
                    let p = f64::from(x[m * k_in + k]) * f64::from(weight(n, k));
                    (s + p, a + p.abs())
                });
                let error = (f64::from(got[m * n_out + n]) - exact).abs();
                assert!(
                    error <= 1e-5 * magnitude,
                    "[{m}, {n}]: {} vs {exact} (sum of |products| {magnitude})",
                    got[m * n_out + n]
                );
            }
        }
    }
}
