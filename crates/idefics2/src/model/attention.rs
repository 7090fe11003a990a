//! Attention for the vision encoder, the perceiver and the decoder: the flash attention kernel of
//! `idefics2-kernels` on wgpu, plain burn on the CPU device (see [`attention`]).

use burn::tensor::Tensor;

pub use idefics2_kernels::{AttentionMask, MASKED, attention};

/// Splits `[batch, seq, heads*head_dim]` into `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize, head_dim: usize) -> Tensor<4> {
    let [batch, seq, _] = x.dims();
    x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2)
}
