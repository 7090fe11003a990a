//! Scaled dot-product attention with grouped-query heads: the flash attention kernel on wgpu
//! devices, plain burn ops (the reference) elsewhere.

mod backend;
mod reference;
mod source;

pub use backend::{FlashAttentionBackend, force_attention_rows_per_thread};
pub use reference::{MAX_SCORE_BYTES, attention_reference, attention_reference_in_blocks};

use burn::backend::Dispatch;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::caps::{WgpuCaps, is_cpu_adapter};
use crate::forced::Forced;
use backend::workgroup_shape;

/// Added to the scores of masked keys. Finite, so fully masked rows (left padding) stay finite.
pub const MASKED: f32 = -1.0e9;

/// Which keys each query sees.
#[derive(Debug, Clone, Default)]
pub struct AttentionMask {
    /// Added to every score of a key: `[batch, kv_len]`, 0 for real keys and [`MASKED`] for
    /// padding (left-padded prompts, padding patches).
    pub key_bias: Option<Tensor<2>>,
    /// Query row `i` sits at cache position `i + kv_len - q_len` and sees keys up to it.
    pub causal: bool,
    /// With `Some(w)`, the query at position `p` sees key `j` only when `j + w > p` (Mistral's
    /// sliding window, as transformers' `sliding_window_overlay` builds it).
    pub window: Option<usize>,
}

impl AttentionMask {
    /// Key padding from per-key validity (`valid`: `[batch * kv_len]`, `true` = real key), or no
    /// mask at all when every key is real.
    pub fn key_padding(valid: &[bool], batch: usize, kv_len: usize, device: &Device) -> Self {
        assert_eq!(valid.len(), batch * kv_len, "one flag per key");
        let key_bias = valid.contains(&false).then(|| {
            let bias: Vec<f32> = valid
                .iter()
                .map(|&ok| if ok { 0.0 } else { MASKED })
                .collect();
            Tensor::<2>::from_data(TensorData::new(bias, [batch, kv_len]), device)
        });
        Self {
            key_bias,
            ..Self::default()
        }
    }
}

/// Attention of `q` over `k`/`v`, heads merged.
///
/// On a wgpu device whose runtime takes WGSL, the flash attention kernel (in f32, the inputs cast
/// on the way in and the output back); on any other device, or for a head size that is not a
/// multiple of 4, [`attention_reference`]. Rows whose keys are all masked (left padding) come out
/// finite but differ between the two.
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, kv_len, head_dim]`, `heads` a multiple of `kv_heads` (query head
///   `h` reads key/value head `h / (heads / kv_heads)`, as `repeat_kv` does), `q_len <= kv_len`
/// - returns `[batch, q_len, heads * head_dim]`
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<3> {
    match kernel_splits(&q, &k) {
        Some(splits) => {
            let dtype = q.dtype();
            run_kernel(q, k, v, mask, scale, splits).cast(dtype)
        }
        None => attention_reference(q, k, v, mask, scale),
    }
}

/// Whether [`attention`] runs the flash attention kernel for these operands.
pub fn uses_attention_kernel(q: &Tensor<4>, k: &Tensor<4>) -> bool {
    kernel_splits(q, k).is_some()
}

/// The slices of keys the kernel would cut for these operands, or `None` where [`attention`]
/// takes the reference. Reads the adapter's properties once: it is asked by every attention.
fn kernel_splits(q: &Tensor<4>, k: &Tensor<4>) -> Option<usize> {
    let device = q.device();
    let [batch, heads, q_len, head_dim] = q.dims();
    let [_, kv_heads, kv_len, _] = k.dims();
    if device.is_autodiff()
        || head_dim % 4 != 0
        || head_dim > 256
        || kv_heads == 0
        || heads % kv_heads != 0
        || q_len == 0
        || q_len > kv_len
    {
        return None;
    }
    let caps = WgpuCaps::of(&device).filter(WgpuCaps::runs_quant_kernels)?;
    let splits = attention_splits(batch * heads, q_len, kv_len, is_cpu_adapter(&caps.adapter));
    // Every operand and the output must fit one storage binding.
    let out_row = if splits == 1 { head_dim } else { head_dim + 4 };
    let largest =
        4 * (splits * batch * heads * q_len * out_row).max(batch * kv_heads * kv_len * head_dim);
    (largest as u64 <= caps.max_binding_bytes).then_some(splits)
}

/// The kernel alone, without the routing of [`attention`]: f32 out, any float dtype in, on a
/// wgpu device. Panics elsewhere.
pub fn attention_kernel(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<3> {
    let caps = WgpuCaps::of(&q.device()).expect("the attention kernel runs on wgpu devices");
    let [batch, heads, q_len, _] = q.dims();
    let kv_len = k.dims()[2];
    let splits = attention_splits(batch * heads, q_len, kv_len, is_cpu_adapter(&caps.adapter));
    run_kernel(q, k, v, mask, scale, splits)
}

/// Dispatches the kernel with the keys cut into `splits` slices and combines the slices.
fn run_kernel(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    scale: f64,
    splits: usize,
) -> Tensor<3> {
    let device = q.device();
    let [batch, heads, q_len, head_dim] = q.dims();
    let kv_len = k.dims()[2];
    let bias = match &mask.key_bias {
        Some(bias) => bias.clone().cast(DType::F32),
        None => Tensor::<2>::zeros([batch, kv_len], &device),
    };
    let out = Tensor::<2>::from_dispatch(Dispatch::flash_attention(
        q.cast(DType::F32).into_dispatch(),
        k.cast(DType::F32).into_dispatch(),
        v.cast(DType::F32).into_dispatch(),
        bias.into_dispatch(),
        mask.causal,
        mask.window.unwrap_or(0),
        (scale as f32).to_bits(),
        splits,
    ));
    if splits == 1 {
        return out.reshape([batch, q_len, heads * head_dim]);
    }
    // Combine the slices: out = sum_s e^(m_s - m) o_s / sum_s e^(m_s - m) l_s.
    let parts = out.reshape([splits, batch, heads, q_len, head_dim + 4]);
    let o = parts.clone().narrow(4, 0, head_dim);
    let max = parts.clone().narrow(4, head_dim, 1);
    let sum = parts.narrow(4, head_dim + 1, 1);
    let weight = (max.clone() - max.max_dim(0)).exp(); // [splits, batch, heads, q_len, 1]
    let total = (weight.clone() * sum).sum_dim(0); // [1, batch, heads, q_len, 1]
    let combined = (weight * o).sum_dim(0) / total; // [1, batch, heads, q_len, head_dim]
    combined
        .reshape([batch, heads, q_len, head_dim])
        .swap_dims(1, 2)
        .reshape([batch, q_len, heads * head_dim])
}

/// Slices forced on the keys (else the rule of [`attention_splits`]), for tests on CPU adapters.
static FORCED_SPLITS: Forced = Forced::new();

/// Forces the attention kernel to cut the keys into `splits` slices, or back to the automatic rule
/// with `None`: lets tests on a CPU adapter cover the split path that GPUs take when decoding.
#[doc(hidden)]
pub fn force_attention_splits(splits: Option<usize>) {
    FORCED_SPLITS.set(splits);
}

/// Threads the kernel aims for on a GPU before it splits the keys.
const TARGET_THREADS: usize = 16 * 1024;
/// Fewest keys per slice worth a slice of its own.
const MIN_KEYS_PER_SPLIT: usize = 64;

/// How many slices of keys: one on CPU adapters (a few cores, already busy with the heads); on
/// GPUs, enough to reach [`TARGET_THREADS`] when the queries alone are too few (decoding), with
/// at least [`MIN_KEYS_PER_SPLIT`] keys per slice.
fn attention_splits(heads: usize, q_len: usize, kv_len: usize, cpu: bool) -> usize {
    if let Some(forced) = FORCED_SPLITS.get() {
        return forced.min(kv_len).max(1);
    }
    if cpu {
        return 1;
    }
    let (per_workgroup, rows_per_thread) = workgroup_shape(q_len, cpu);
    let threads = heads * q_len.div_ceil(per_workgroup * rows_per_thread) * per_workgroup;
    TARGET_THREADS
        .div_ceil(threads)
        .min(kv_len.div_ceil(MIN_KEYS_PER_SPLIT))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_only_where_queries_are_few() {
        // Decoding one token of Mistral-7B (32 heads) over 4k keys on a GPU.
        assert_eq!(attention_splits(32, 1, 4096, false), 64);
        assert_eq!(attention_splits(32, 1, 100, false), 2);
        // A 4k prefill has threads enough; CPU adapters never split.
        assert_eq!(attention_splits(32, 4096, 4096, false), 1);
        assert_eq!(attention_splits(32, 1, 4096, true), 1);
    }

    /// Plain burn on the CPU device: the same numbers in row blocks as in one pass, with grouped
    /// heads, key padding, causality and a window.
    #[test]
    fn reference_blocks_match_one_pass() {
        use burn::tensor::Distribution;
        let device = Device::flex();
        let (batch, heads, kv_heads, q_len, kv_len, dim) = (2, 4, 2, 37, 45, 8);
        let normal =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let q = normal([batch, heads, q_len, dim]);
        let k = normal([batch, kv_heads, kv_len, dim]);
        let v = normal([batch, kv_heads, kv_len, dim]);
        let valid: Vec<bool> = (0..batch * kv_len).map(|i| i % 5 != 3).collect();
        let mask = AttentionMask {
            causal: true,
            window: Some(20),
            ..AttentionMask::key_padding(&valid, batch, kv_len, &device)
        };
        let one = attention_reference(q.clone(), k.clone(), v.clone(), &mask, 0.3);
        // 4 bytes x batch x heads x kv_len per row: room for 5 rows per block, 8 blocks.
        let row = 4 * batch * heads * kv_len;
        let blocked = attention_reference_in_blocks(q, k, v, &mask, 0.3, 5 * row);
        let a = one.into_data().try_to_vec::<f32>().unwrap_or_default();
        let b = blocked.into_data().try_to_vec::<f32>().unwrap_or_default();
        assert_eq!(a.len(), batch * heads * q_len * dim);
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "blocked attention differs by {worst}");
    }
}
