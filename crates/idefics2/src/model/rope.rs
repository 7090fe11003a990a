//! Rotary position embeddings, rotate-half convention (`MistralRotaryEmbedding`), with the
//! cos/sin tables computed on the host in f32 as transformers does.

use burn::tensor::{DType, Device, Tensor, TensorData};

/// cos and sin for the given positions.
///
/// # Shapes
/// `positions`: `[batch * seq]` -> cos, sin: `[batch, 1, seq, head_dim]` in `dtype`
pub fn rope_tables(
    positions: &[i64],
    batch: usize,
    seq: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
    dtype: DType,
) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    // inv_freq = 1 / theta^(2i/dim), in f32 like the reference.
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    for &pos in positions {
        let angles: Vec<f32> = inv_freq.iter().map(|f| f * pos as f32).collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    let make = |values: Vec<f32>| {
        Tensor::<4>::from_data(TensorData::new(values, [batch, 1, seq, head_dim]), device)
            .cast(dtype)
    };
    (make(cos), make(sin))
}

/// `x * cos + rotate_half(x) * sin`.
///
/// # Shapes
/// `x`: `[batch, heads, seq, head_dim]`, `cos`/`sin`: `[batch, 1, seq, head_dim]` -> like `x`
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let _profile = crate::profile::scope("rope", || x.device());
    let [batch, heads, seq, head_dim] = x.dims();
    let half = head_dim / 2;
    let x1 = x.clone().slice([0..batch, 0..heads, 0..seq, 0..half]);
    let x2 = x
        .clone()
        .slice([0..batch, 0..heads, 0..seq, half..head_dim]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3); // [batch, heads, seq, head_dim]
    x * cos.clone() + rotated * sin.clone()
}
