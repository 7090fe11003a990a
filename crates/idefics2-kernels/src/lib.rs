//! Hand-written WGSL kernels for idefics2 on burn-wgpu, each beside a plain-burn reference that
//! the CPU device runs and the tests compare against.
//!
//! Quantized matmul (`y = x W^T` with `W` stored in 8 or 4 bits per value, one scale per group of
//! input values):
//! ```rust,ignore
//! let packed = quantize(&weight_f32, n_out, k_in, QuantFormat::Q4_32)?; // host
//! let w = upload(&packed, &device)?;
//! let y = quant_matmul(x, &w); // [..., k_in] -> [..., n_out]
//! ```
//! Flash attention (`softmax(q k^T * scale + mask) v` in one pass over the keys, grouped-query
//! heads, causal/sliding-window/key-padding masks): [`attention`].
//!
//! The WGSL sources live in the repository's `shaders/` folder.

mod attention;
mod caps;
mod copy;
// Native only: the browser build has no CPU device (and no rayon).
#[cfg(not(target_family = "wasm"))]
mod cpu_gemv;
#[cfg(not(target_family = "wasm"))]
pub mod cpu_half_matmul;
#[cfg(target_arch = "x86_64")]
pub mod cpu_q4_i16;
#[cfg(not(target_family = "wasm"))]
pub mod cpu_quant_matmul;
#[cfg(not(target_family = "wasm"))]
pub mod cpu_widened_matmul;
mod error;
pub mod figures;
mod float_gemv;
mod forced;
mod format;
mod info_words;
mod quant_matmul;
mod quantize;
mod reference;
mod weight;

pub use attention::{
    AttentionMask, FlashAttentionBackend, MASKED, MAX_SCORE_BYTES, attention, attention_kernel,
    attention_reference, attention_reference_in_blocks, force_attention_rows_per_thread,
    force_attention_splits, uses_attention_kernel,
};
pub use caps::{WgpuCaps, force_plain_loads};
pub use copy::{CopyBackend, copy_kernel};
pub use error::QuantError;
pub use float_gemv::{
    BlockedFloatWeight, FloatGemvBackend, force_float_gemv_shape, uses_float_gemv,
};
pub use format::QuantFormat;
pub use quant_matmul::{
    GEMV_MAX_ROWS, QuantMatmulBackend, force_gemv_quads_per_thread, force_gemv_splits,
    force_tiled_gemm, quant_matmul, quant_matmul_kernel, uses_kernels,
};
pub use quantize::{PackedWeight, f16_scale, quantize};
pub use reference::{dequantize_reference, quant_matmul_reference};
pub use weight::{
    QuantizedWeight, WeightStorage, WeightTensors, force_f32_scales, force_tensor_weights,
    padded_n_out, upload, upload_owned,
};
