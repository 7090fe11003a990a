//! Attention for the vision encoder, the perceiver and the decoder: the flash attention kernel of
//! `idefics2-kernels` on wgpu, plain burn on the CPU device (see [`attention`]).

use burn::tensor::Tensor;

pub use idefics2_kernels::{AttentionMask, MASKED};

use crate::profile;

/// [`idefics2_kernels::attention`], counted as `attention` by the profile.
///
/// # Shapes
/// `q` `[batch, heads, seq, head_dim]`, `k`/`v` `[batch, kv_heads, keys, head_dim]` ->
/// `[batch, seq, heads * head_dim]`
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<3> {
    let _profile = profile::scope("attention", || q.device());
    idefics2_kernels::attention(q, k, v, mask, scale)
}

/// Splits `[batch, seq, heads*head_dim]` into `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize, head_dim: usize) -> Tensor<4> {
    let [batch, seq, _] = x.dims();
    x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2)
}
