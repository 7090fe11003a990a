//! Attention in plain burn ops (matmul, additive mask, softmax): what the CPU device runs and
//! what the flash attention kernel is tested against.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Tensor, TensorData};

use super::{AttentionMask, MASKED};

/// Largest score matrix one call materializes: longer queries are processed in row blocks
/// (softmax is per row, so the result is the same). 64 MiB keeps each buffer well inside the
/// 128 MiB storage binding of lavapipe and browsers; a 980x980 image's 4900 patches would
/// otherwise need 1.5 GB of scores per layer.
pub const MAX_SCORE_BYTES: usize = 64 << 20;

/// [`super::attention`] in plain burn ops, heads merged: `[batch, q_len, heads * head_dim]`.
pub fn attention_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    scale: f64,
) -> Tensor<3> {
    attention_reference_in_blocks(q, k, v, mask, scale, MAX_SCORE_BYTES)
}

/// [`attention_reference`] with query blocks sized so that one block's f32 scores take at most
/// `max_score_bytes`.
pub fn attention_reference_in_blocks(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    scale: f64,
    max_score_bytes: usize,
) -> Tensor<3> {
    let [batch, heads, q_len, head_dim] = q.dims();
    let kv_len = k.dims()[2];
    let row_bytes = batch * heads * kv_len * 4;
    let rows = (max_score_bytes / row_bytes.max(1)).max(1);
    let blocks: Vec<Tensor<4>> = (0..q_len)
        .step_by(rows)
        .map(|start| {
            let end = (start + rows).min(q_len);
            let q_block = q.clone().slice([0..batch, 0..heads, start..end]);
            let block_mask = dense_mask(mask, start..end, q_len, kv_len, &q.device());
            attention_block(q_block, k.clone(), v.clone(), block_mask, scale)
        })
        .collect();
    let out = if blocks.len() == 1 {
        blocks.into_iter().next().expect("one block")
    } else {
        Tensor::cat(blocks, 2)
    }; // [batch, heads, q_len, head_dim]
    out.swap_dims(1, 2)
        .reshape([batch, q_len, heads * head_dim])
}

/// The additive mask of query rows `rows` (of `q_len`): `[batch or 1, rows, kv_len]`, 0 where
/// allowed and [`MASKED`] elsewhere, or `None` when every key is allowed.
fn dense_mask(
    mask: &AttentionMask,
    rows: std::ops::Range<usize>,
    q_len: usize,
    kv_len: usize,
    device: &burn::tensor::Device,
) -> Option<Tensor<3>> {
    let offset = kv_len - q_len;
    let positional = (mask.causal || mask.window.is_some()).then(|| {
        let n = rows.len();
        let mut values = Vec::with_capacity(n * kv_len);
        for row in rows {
            let pos = row + offset;
            values.extend((0..kv_len).map(|j| {
                let causal_ok = !mask.causal || j <= pos;
                let window_ok = mask.window.is_none_or(|w| j + w > pos);
                if causal_ok && window_ok { 0.0 } else { MASKED }
            }));
        }
        Tensor::<3>::from_data(TensorData::new(values, [1, n, kv_len]), device)
    });
    let bias = mask.key_bias.clone().map(|bias| bias.unsqueeze_dim::<3>(1)); // [batch, 1, kv_len]
    match (positional, bias) {
        (Some(p), Some(b)) => Some((p + b).clamp_min(MASKED)),
        (Some(p), None) => Some(p),
        (None, Some(b)) => Some(b),
        (None, None) => None,
    }
}

/// One block of queries: `[batch, heads, rows, head_dim]`, the mask broadcast over heads.
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
            let mask = mask.unsqueeze_dims::<5>(&[1, 2]); // [batch or 1, 1, 1, q_len, kv_len]
            (scores + mask).reshape([batch, kv_heads, groups * q_len, kv_len])
        }
        None => scores,
    };
    let probs = softmax(scores, 3).cast(dtype);
    probs
        .matmul(v) // [batch, kv_heads, groups*q_len, head_dim]
        .reshape([batch, heads, q_len, head_dim])
}
