//! What every GEMV of the CPU device shares (quantized in [`crate::cpu_quant_matmul`], f16/bf16
//! in [`crate::cpu_half_matmul`]): `x` brought to the host and the result back, output rows
//! spread over the cores in rayon tasks, and the `[n_out, rows]` the tasks write turned into
//! `[rows, n_out]`.

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// Rows of `x` up to which a GEMV runs; above, the weight is widened and multiplied by burn's
/// matmul ([`crate::cpu_widened_matmul`]).
pub const CPU_GEMV_MAX_ROWS: usize = 8;

/// Output rows of the weight per rayon task.
pub(crate) const ROWS_PER_TASK: usize = 16;

/// `gemv(x, rows)` on the host values of `x [rows, k_in]`, returning `[rows, n_out]` on `x`'s
/// device.
pub(crate) fn host_gemv(
    x: Tensor<2>,
    n_out: usize,
    gemv: impl FnOnce(&[f32], usize) -> Vec<f32>,
) -> Tensor<2> {
    let [rows, _] = x.dims();
    let device = x.device();
    let values = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32 just above");
    Tensor::from_data(TensorData::new(gemv(&values, rows), [rows, n_out]), &device)
}

/// Runs `task(first, out)` over tasks of [`ROWS_PER_TASK`] output rows in parallel, `out` being
/// `[outputs of the task, rows]`, after checking that `x` holds `rows` (at most
/// [`CPU_GEMV_MAX_ROWS`]) rows of `k_in`; returns `[rows, n_out]`.
pub(crate) fn gemv_tasks(
    x: &[f32],
    rows: usize,
    n_out: usize,
    k_in: usize,
    task: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    assert!(
        rows <= CPU_GEMV_MAX_ROWS,
        "at most {CPU_GEMV_MAX_ROWS} rows, got {rows}"
    );
    assert_eq!(
        x.len(),
        rows * k_in,
        "x holds {} values, not {rows} x {k_in}",
        x.len()
    );
    let mut out_t = vec![0f32; n_out * rows];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * rows.max(1))
        .enumerate()
        .for_each(|(i, out)| task(i * ROWS_PER_TASK, out));
    let mut out = vec![0f32; out_t.len()];
    for n in 0..n_out {
        for m in 0..rows {
            out[m * n_out + n] = out_t[n * rows + m];
        }
    }
    out
}
