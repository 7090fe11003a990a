//! Scaled dot-product attention shared by the vision encoder, the perceiver and the decoder:
//! grouped-query heads without repeating K/V, an additive mask, softmax in f32.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Tensor};

/// Added to the scores of masked keys. Finite, so fully masked rows (left padding) stay finite.
pub const MASKED: f32 = -1.0e9;

/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, kv_len, head_dim]`, `heads` a multiple of `kv_heads`
///   (query head `h` reads key/value head `h / (heads / kv_heads)`, as `repeat_kv` does)
/// - `mask`: additive f32 `[batch, q_len, kv_len]`, 0 where allowed and [`MASKED`] elsewhere
/// - returns `[batch, heads, q_len, head_dim]`
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<3>>,
    scale: f64,
) -> Tensor<4> {
    let [batch, heads, q_len, head_dim] = q.dims();
    let [_, kv_heads, kv_len, _] = k.dims();
    let groups = heads / kv_heads;
    let dtype = q.dtype();
    let q = q.reshape([batch, kv_heads, groups * q_len, head_dim]);
    let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32) * scale; // [batch, kv_heads, groups*q_len, kv_len]
    let scores = match mask {
        Some(mask) => {
            let scores = scores.reshape([batch, kv_heads, groups, q_len, kv_len]);
            let mask = mask.unsqueeze_dims::<5>(&[1, 2]); // [batch, 1, 1, q_len, kv_len]
            (scores + mask).reshape([batch, kv_heads, groups * q_len, kv_len])
        }
        None => scores,
    };
    let probs = softmax(scores, 3).cast(dtype);
    probs
        .matmul(v) // [batch, kv_heads, groups*q_len, head_dim]
        .reshape([batch, heads, q_len, head_dim])
}

/// Splits `[batch, seq, heads*head_dim]` into `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize, head_dim: usize) -> Tensor<4> {
    let [batch, seq, _] = x.dims();
    x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2)
}

/// Merges `[batch, heads, seq, head_dim]` back into `[batch, seq, heads*head_dim]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// An additive key-padding mask `[batch, q_len, kv_len]` from per-key validity (`true` = real).
pub fn key_padding_mask(valid: &[bool], batch: usize, q_len: usize, kv_len: usize) -> Vec<f32> {
    let mut mask = Vec::with_capacity(batch * q_len * kv_len);
    for b in 0..batch {
        let row: Vec<f32> = valid[b * kv_len..(b + 1) * kv_len]
            .iter()
            .map(|&ok| if ok { 0.0 } else { MASKED })
            .collect();
        for _ in 0..q_len {
            mask.extend_from_slice(&row);
        }
    }
    mask
}
