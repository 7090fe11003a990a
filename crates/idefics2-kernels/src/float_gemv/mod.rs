//! `x @ W^T` with an f32 `W` on CPU adapters (lavapipe): the float GEMV over blocks of up to 64
//! rows, `W` kept transposed in column blocks (see `shaders/float_gemv.wgsl`). GPUs keep burn's
//! matmul, which suits them.

mod backend;
pub(crate) mod source;

pub use backend::{FloatGemvBackend, force_float_gemv_shape};

use burn::backend::{Dispatch, DispatchDevice};
use burn::tensor::{DType, Device, Tensor};

use crate::caps::{WgpuCaps, is_cpu_adapter};
use crate::weight::{BLOCK_COLS, padded_n_out};

/// A float `[n_out, k_in]` weight in the float GEMV's layout: consecutive parts of its output
/// rows, each padded to a multiple of 128 rows and transposed in column blocks
/// (`[n_pad / 128 * k_in, 128]`: column `n % 128` of block `n / 128` holds row `n`'s values down
/// K), each within one storage binding.
#[derive(Debug, Clone)]
pub struct BlockedFloatWeight {
    pub n_out: usize,
    pub k_in: usize,
    /// `(part, its rows of the weight)`, in order.
    pub parts: Vec<(Tensor<2>, usize)>,
}

impl BlockedFloatWeight {
    /// The weight from its consecutive row blocks (`[rows_i, k_in]`, f32, on a wgpu device), as
    /// the loader keeps them; transposed on the device. A block whose padded size would exceed
    /// `max_binding_bytes` is cut at multiples of 128 rows.
    pub fn from_rows(blocks: &[Tensor<2>], max_binding_bytes: u64) -> Self {
        let k_in = blocks.first().map_or(0, |b| b.dims()[1]);
        let rows_per_part = ((max_binding_bytes / (4 * k_in.max(1) as u64)) as usize / BLOCK_COLS
            * BLOCK_COLS)
            .max(BLOCK_COLS);
        let mut parts = Vec::new();
        for block in blocks {
            let [rows, cols] = block.dims();
            assert_eq!(cols, k_in, "row blocks of one weight have one width");
            assert_eq!(
                block.dtype(),
                DType::F32,
                "the float GEMV takes f32 weights"
            );
            for start in (0..rows).step_by(rows_per_part) {
                let end = (start + rows_per_part).min(rows);
                let part = if start == 0 && end == rows {
                    block.clone()
                } else {
                    block.clone().slice([start..end, 0..k_in])
                };
                parts.push((block_transpose(part), end - start));
            }
        }
        Self {
            n_out: parts.iter().map(|(_, rows)| rows).sum(),
            k_in,
            parts,
        }
    }

    /// `x [m, k_in] @ W^T -> [m, n_out]`, in the dtype of `x` (computed in f32).
    pub fn matmul(&self, x: Tensor<2>) -> Tensor<2> {
        assert_eq!(
            x.dims()[1],
            self.k_in,
            "x has {} features, the weight expects {}",
            x.dims()[1],
            self.k_in
        );
        let dtype = x.dtype();
        let x = x.cast(DType::F32).into_dispatch();
        let outs: Vec<Tensor<2>> = self
            .parts
            .iter()
            .map(|(w, rows)| {
                Tensor::from_dispatch(Dispatch::float_gemv(
                    x.clone(),
                    w.clone().into_dispatch(),
                    *rows,
                ))
            })
            .collect();
        let out = if outs.len() == 1 {
            outs.into_iter().next().expect("one part")
        } else {
            Tensor::cat(outs, 1)
        };
        out.cast(dtype)
    }

    /// Bytes the weight takes on its device (the padding rows included).
    pub fn device_bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|(w, _)| w.shape().num_elements() * 4)
            .sum()
    }
}

/// `[n, k]` padded with zero rows to a multiple of 128 and transposed in blocks of 128 rows:
/// `[n_pad / 128 * k, 128]`.
fn block_transpose(rows: Tensor<2>) -> Tensor<2> {
    let [n, k] = rows.dims();
    let n_pad = padded_n_out(n);
    let padded = if n_pad > n {
        let zeros = Tensor::<2>::zeros([n_pad - n, k], &rows.device());
        Tensor::cat(vec![rows, zeros], 0)
    } else {
        rows
    };
    padded
        .reshape([n_pad / BLOCK_COLS, BLOCK_COLS, k])
        .swap_dims(1, 2)
        .reshape([n_pad / BLOCK_COLS * k, BLOCK_COLS])
}

/// Whether f32 weights on `device` take the float GEMV: a CPU adapter (lavapipe, SwiftShader)
/// that runs our WGSL kernels. There burn's tiled matmul pays for its barriers and lane-by-lane
/// loads; GPUs keep it.
pub fn uses_float_gemv(device: &Device) -> bool {
    if !WgpuCaps::device_runs_quant_kernels(device) {
        return false;
    }
    // The browser build has no other kind of device.
    #[allow(irrefutable_let_patterns)]
    let DispatchDevice::Cube(cube) = device.as_dispatch() else {
        return false;
    };
    is_cpu_adapter(&cube.client().properties().identity.name)
}
