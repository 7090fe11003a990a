//! Scaled dot-product attention shared by the vision encoder, the perceiver and the decoder:
//! grouped-query heads without repeating K/V, an additive mask, softmax in f32.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Tensor};

/// Added to the scores of masked keys. Finite, so fully masked rows (left padding) stay finite.
pub const MASKED: f32 = -1.0e9;

/// Largest score matrix one attention call materializes: longer queries are processed in row
/// blocks (softmax is per row, so the result is the same). 64 MiB keeps each buffer well inside
/// the 128 MiB storage binding of lavapipe and browsers; a 980x980 image's 4900 patches would
/// otherwise need 1.5 GB of scores per layer.
pub const MAX_SCORE_BYTES: usize = 64 << 20;

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
    attention_in_blocks(q, k, v, mask, scale, MAX_SCORE_BYTES)
}

/// [`attention`] with query blocks sized so that one block's f32 scores take at most
/// `max_score_bytes`.
pub fn attention_in_blocks(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<3>>,
    scale: f64,
    max_score_bytes: usize,
) -> Tensor<4> {
    let [batch, heads, q_len, _] = q.dims();
    let kv_len = k.dims()[2];
    let row_bytes = batch * heads * kv_len * 4;
    let rows = (max_score_bytes / row_bytes.max(1)).max(1);
    if rows >= q_len {
        return attention_block(q, k, v, mask, scale);
    }
    let blocks: Vec<Tensor<4>> = (0..q_len)
        .step_by(rows)
        .map(|start| {
            let end = (start + rows).min(q_len);
            let q_block = q.clone().slice([0..batch, 0..heads, start..end]);
            let mask_block = mask.clone().map(|m| m.slice([0..batch, start..end]));
            attention_block(q_block, k.clone(), v.clone(), mask_block, scale)
        })
        .collect();
    Tensor::cat(blocks, 2)
}

fn attention_block(
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Query blocks give what one block gives, with grouped heads and a mask.
    #[test]
    fn blocks_match_one_pass() {
        let device = Device::flex();
        let (batch, heads, kv_heads, q_len, kv_len, dim) = (2, 4, 2, 37, 23, 8);
        let q = Tensor::<4>::random(
            [batch, heads, q_len, dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let k = Tensor::<4>::random(
            [batch, kv_heads, kv_len, dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let v = Tensor::<4>::random(
            [batch, kv_heads, kv_len, dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let valid: Vec<bool> = (0..batch * kv_len).map(|i| i % 5 != 3).collect();
        let mask = Tensor::<1>::from_floats(
            key_padding_mask(&valid, batch, q_len, kv_len).as_slice(),
            &device,
        )
        .reshape([batch, q_len, kv_len]);
        let one = attention_block(q.clone(), k.clone(), v.clone(), Some(mask.clone()), 0.3);
        // 4 bytes x batch x heads x kv_len per row: room for 5 rows per block, 8 blocks.
        let blocked = attention_in_blocks(q, k, v, Some(mask), 0.3, 5 * 4 * batch * heads * kv_len);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            one.into_data().try_to_vec::<f32>().unwrap_or_default(),
            blocked.into_data().try_to_vec::<f32>().unwrap_or_default(),
        );
        assert_eq!(a.len(), batch * heads * q_len * dim);
        assert_eq!(a.len(), b.len());
        // Equal up to the rounding of a different matmul blocking.
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "blocked attention differs by {worst}");
    }
}
