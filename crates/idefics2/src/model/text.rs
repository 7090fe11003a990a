//! Mistral decoder (`MistralModel` + `lm_head`): RMSNorm, rotate-half RoPE, grouped-query
//! attention over a KV cache, SwiGLU MLP, sliding-window causal mask as transformers builds it.
//! <https://github.com/huggingface/transformers/blob/v4.54.1/src/transformers/models/mistral/modeling_mistral.py>

use super::row_chunks::RowChunks;
use burn::tensor::{Device, Tensor};

use crate::config::TextConfig;
use crate::kv_cache::KvCache;
use crate::model::attention::{AttentionMask, attention, split_heads};
use crate::model::layers::{GatedMlp, Linear, RmsNorm};
use crate::model::rope::{apply_rope, rope_tables};
use crate::weights::TensorLoader;

#[derive(Debug, Clone)]
pub struct TextAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: TextAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: GatedMlp,
}

#[derive(Debug, Clone)]
pub struct TextModel {
    /// `[vocab, hidden]`
    /// In row blocks when the table exceeds one storage binding (the 8B's does in f32 and f16).
    pub embed_tokens: RowChunks,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub rope_theta: f64,
}

impl TextModel {
    pub fn load(loader: &mut TensorLoader, prefix: &str, config: &TextConfig) -> Self {
        let hidden = config.hidden_size;
        let (heads, kv_heads, head_dim) = (
            config.num_attention_heads,
            config.num_key_value_heads(),
            config.head_dim(),
        );
        let eps = config.rms_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("{prefix}.layers.{i}");
                let linear = |loader: &mut TensorLoader, name: &str, i: usize, o: usize| {
                    Linear::load(loader, &format!("{p}.self_attn.{name}"), i, o, false)
                };
                DecoderLayer {
                    input_layernorm: RmsNorm::load(
                        loader,
                        &format!("{p}.input_layernorm"),
                        hidden,
                        eps,
                    ),
                    self_attn: TextAttention {
                        q_proj: linear(loader, "q_proj", hidden, heads * head_dim),
                        k_proj: linear(loader, "k_proj", hidden, kv_heads * head_dim),
                        v_proj: linear(loader, "v_proj", hidden, kv_heads * head_dim),
                        o_proj: linear(loader, "o_proj", heads * head_dim, hidden),
                        num_heads: heads,
                        num_key_value_heads: kv_heads,
                        head_dim,
                    },
                    post_attention_layernorm: RmsNorm::load(
                        loader,
                        &format!("{p}.post_attention_layernorm"),
                        hidden,
                        eps,
                    ),
                    mlp: GatedMlp::load(
                        loader,
                        &format!("{p}.mlp"),
                        hidden,
                        config.intermediate_size,
                        hidden,
                        config.hidden_act,
                    ),
                }
            })
            .collect();
        Self {
            embed_tokens: loader.float_rows(
                &format!("{prefix}.embed_tokens.weight"),
                [config.vocab_size, hidden],
            ),
            layers,
            norm: RmsNorm::load(loader, &format!("{prefix}.norm"), hidden, eps),
            rope_theta: config.rope_theta,
        }
    }

    /// # Shapes
    /// `ids`: `[batch, seq]` -> `[batch, seq, hidden]`
    /// Embeddings of `ids` (`[batch * seq]`, checked against the vocabulary by the caller).
    pub fn embed(&self, ids: &[u32], batch: usize, seq: usize) -> Tensor<3> {
        let hidden = self.embed_tokens.cols();
        self.embed_tokens.gather(ids).reshape([batch, seq, hidden])
    }

    /// Runs the decoder over `seq` new positions, appending them to `cache`.
    ///
    /// # Shapes
    /// - `embeds`: `[batch, seq, hidden]`
    /// - `positions`: `[batch * seq]` RoPE positions
    /// - `mask`: over `cache.len() + seq` keys (see [`decoder_mask`])
    /// - returns the final-normed hidden states `[batch, seq, hidden]`
    pub fn forward(
        &self,
        embeds: Tensor<3>,
        positions: &[i64],
        mask: &AttentionMask,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let _profile = crate::profile::scope("text decoder: other", || embeds.device());
        let [batch, seq, _] = embeds.dims();
        let head_dim = self.layers.first().map_or(2, |l| l.self_attn.head_dim);
        let (cos, sin) = rope_tables(
            positions,
            batch,
            seq,
            head_dim,
            self.rope_theta,
            &embeds.device(),
            embeds.dtype(),
        );
        let mut x = embeds;
        for (index, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let h = layer.input_layernorm.forward(x);
            let h = layer.self_attn.forward(h, &cos, &sin, mask, cache, index);
            x = residual + h;
            let residual = x.clone();
            x = residual + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        cache.advance(seq);
        self.norm.forward(x)
    }
}

impl TextAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let q = split_heads(
            self.q_proj.forward(x.clone()),
            self.num_heads,
            self.head_dim,
        );
        let k = split_heads(
            self.k_proj.forward(x.clone()),
            self.num_key_value_heads,
            self.head_dim,
        );
        let v = split_heads(
            self.v_proj.forward(x),
            self.num_key_value_heads,
            self.head_dim,
        );
        let q = apply_rope(q, cos, sin);
        let k = apply_rope(k, cos, sin);
        let (k, v) = cache.append(layer, k, v);
        let scale = (self.head_dim as f64).powf(-0.5);
        self.o_proj.forward(attention(q, k, v, mask, scale))
    }
}

/// The decoder's mask over `past` cached and `seq` new positions: causal, keys that are padding
/// (`attention_mask` 0) masked, and with a sliding window `w` a query at cache index `i` sees
/// key `j` only when `j > i - w` (`sliding_window_overlay` in masking_utils).
///
/// # Shapes
/// `attention_mask`: `[batch, past + seq]`
pub fn decoder_mask(
    attention_mask: &[u8],
    batch: usize,
    sliding_window: Option<usize>,
    device: &Device,
) -> AttentionMask {
    let total = attention_mask.len() / batch.max(1);
    let valid: Vec<bool> = attention_mask.iter().map(|&m| m != 0).collect();
    AttentionMask {
        causal: true,
        window: sliding_window,
        ..AttentionMask::key_padding(&valid, batch, total, device)
    }
}
