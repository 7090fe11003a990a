//! `x @ W^T` with a quantized `W`: the WGSL kernels on wgpu devices, the plain-burn reference
//! elsewhere.

mod backend;
pub(crate) mod source;

pub use backend::{
    QuantMatmulBackend, force_gemv_quads_per_thread, force_gemv_splits, force_tiled_gemm,
};
pub use source::GEMV_MAX_ROWS;

use burn::backend::Dispatch;
use burn::tensor::{DType, Tensor};

use crate::caps::WgpuCaps;
#[cfg(not(target_family = "wasm"))]
use crate::cpu_quant_matmul::cpu_quant_matmul;
use crate::format::QuantFormat;
use crate::reference::quant_matmul_reference;
use crate::weight::{QuantizedWeight, WeightStorage};

/// `x @ dequantize(w)^T` over the last dimension of `x`; the result has the dtype of `x`.
///
/// On a wgpu device whose runtime takes WGSL the hand-written kernels run (GEMV for up to
/// [`GEMV_MAX_ROWS`] rows, tiled GEMM beyond on GPUs, blocks of GEMV rows on CPU adapters) in
/// f32, `x` cast on the way in and back out; on the CPU device [`cpu_quant_matmul`] reads the
/// host codes; weights kept as tensors elsewhere go through the plain-burn
/// [`quant_matmul_reference`].
///
/// # Shapes
/// - `x`: `[..., k_in]` (e.g. `[batch, seq, hidden]`)
/// - returns `[..., n_out]`
pub fn quant_matmul<const D: usize>(x: Tensor<D>, w: &QuantizedWeight) -> Tensor<D> {
    let dims = x.dims();
    let k_in = dims[D - 1];
    assert_eq!(
        k_in, w.k_in,
        "x has {k_in} features, the weight expects {}",
        w.k_in
    );
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut out_dims = dims;
    out_dims[D - 1] = w.n_out;
    let x = x.reshape([rows, k_in]); // [rows, k_in]
    let out = if uses_kernels(&x, w) {
        let dtype = x.dtype();
        quant_matmul_kernel(x.cast(DType::F32), w).cast(dtype)
    } else {
        match &w.storage {
            #[cfg(not(target_family = "wasm"))]
            WeightStorage::Host { packed, .. } => {
                let dtype = x.dtype();
                cpu_quant_matmul(x.cast(DType::F32), packed).cast(dtype)
            }
            _ => quant_matmul_reference(x, w),
        }
    }; // [rows, n_out]
    out.reshape(out_dims) // [..., n_out]
}

/// Whether [`quant_matmul`] runs the WGSL kernels for these operands.
pub fn uses_kernels(x: &Tensor<2>, w: &QuantizedWeight) -> bool {
    let device = x.device();
    let WeightStorage::Tensors(tensors) = &w.storage else {
        return false;
    };
    !device.is_autodiff()
        && tensors.scales.device() == device
        && WgpuCaps::device_runs_quant_kernels(&device)
}

/// The WGSL kernels alone, without the routing of [`quant_matmul`]: `x [m, k_in]` f32 on a wgpu
/// device. Panics elsewhere.
pub fn quant_matmul_kernel(x: Tensor<2>, w: &QuantizedWeight) -> Tensor<2> {
    let tensors = w.tensors();
    let (x, words, scales) = (
        x.into_dispatch(),
        tensors.words.into_dispatch(),
        tensors.scales.into_dispatch(),
    );
    let out = match (w.format, &tensors.zeros) {
        (QuantFormat::Q8 { group }, _) => {
            Dispatch::quant_matmul_q8(x, words, scales, w.n_out, w.k_in, group)
        }
        (QuantFormat::Q4 { group }, Some(zeros)) => Dispatch::quant_matmul_q4(
            x,
            words,
            scales,
            zeros.clone().into_dispatch(),
            w.n_out,
            w.k_in,
            group,
        ),
        (QuantFormat::Q4 { .. }, None) => panic!("a Q4 weight needs its zero points"),
    };
    Tensor::from_dispatch(out)
}
