//! Perceiver resampler (`Idefics2PerceiverResampler`): learned latents attend over
//! concat(context, latents) with grouped-query heads; RMSNorms; a final norm.
//! <https://github.com/huggingface/transformers/blob/v4.54.1/src/transformers/models/idefics2/modeling_idefics2.py>

use burn::tensor::Tensor;

use crate::config::PerceiverConfig;
use crate::model::attention::{AttentionMask, attention, split_heads};
use crate::model::layers::{GatedMlp, Linear, RmsNorm};
use crate::weights::TensorLoader;

#[derive(Debug, Clone)]
pub struct PerceiverAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
}

#[derive(Debug, Clone)]
pub struct PerceiverLayer {
    pub input_latents_norm: RmsNorm,
    pub input_context_norm: RmsNorm,
    pub self_attn: PerceiverAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: GatedMlp,
}

#[derive(Debug, Clone)]
pub struct PerceiverResampler {
    /// `[n_latents, hidden]`
    pub latents: Tensor<2>,
    pub layers: Vec<PerceiverLayer>,
    pub norm: RmsNorm,
}

impl PerceiverResampler {
    pub fn load(loader: &mut TensorLoader, prefix: &str, config: &PerceiverConfig) -> Self {
        let hidden = config.hidden_size;
        let eps = config.rms_norm_eps;
        let (heads, kv_heads, head_dim) = (
            config.resampler_n_heads,
            config.num_key_value_heads,
            config.resampler_head_dim,
        );
        let layers = (0..config.resampler_depth)
            .map(|i| {
                let p = format!("{prefix}.layers.{i}");
                let linear = |loader: &mut TensorLoader, name: &str, i: usize, o: usize| {
                    Linear::load(loader, &format!("{p}.self_attn.{name}"), i, o, false)
                };
                PerceiverLayer {
                    input_latents_norm: RmsNorm::load(
                        loader,
                        &format!("{p}.input_latents_norm"),
                        hidden,
                        eps,
                    ),
                    input_context_norm: RmsNorm::load(
                        loader,
                        &format!("{p}.input_context_norm"),
                        hidden,
                        eps,
                    ),
                    self_attn: PerceiverAttention {
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
                        hidden * 4,
                        hidden,
                        config.hidden_act,
                    ),
                }
            })
            .collect();
        Self {
            latents: loader.float(
                &format!("{prefix}.latents"),
                [config.resampler_n_latents, hidden],
            ),
            layers,
            norm: RmsNorm::load(loader, &format!("{prefix}.norm"), hidden, eps),
        }
    }

    /// # Shapes
    /// - `context`: `[images, patches, hidden]`
    /// - `mask`: key padding over `patches + n_latents` keys (padding patches masked)
    /// - returns `[images, n_latents, hidden]`
    pub fn forward(&self, context: Tensor<3>, mask: &AttentionMask) -> Tensor<3> {
        let [images, _, hidden] = context.dims();
        let [n_latents, _] = self.latents.dims();
        let mut latents = self
            .latents
            .clone()
            .unsqueeze::<3>()
            .expand([images, n_latents, hidden]);
        for layer in &self.layers {
            let residual = latents.clone();
            let normed_latents = layer.input_latents_norm.forward(latents);
            let normed_context = layer.input_context_norm.forward(context.clone());
            let attended = layer
                .self_attn
                .forward(normed_latents, normed_context, mask);
            latents = residual + attended;
            let residual = latents.clone();
            latents = residual
                + layer
                    .mlp
                    .forward(layer.post_attention_layernorm.forward(latents));
        }
        self.norm.forward(latents)
    }
}

impl PerceiverAttention {
    fn forward(&self, latents: Tensor<3>, context: Tensor<3>, mask: &AttentionMask) -> Tensor<3> {
        let keys_in = Tensor::cat(vec![context, latents.clone()], 1); // [images, patches + n_latents, hidden]
        let q = split_heads(self.q_proj.forward(latents), self.num_heads, self.head_dim);
        let k = split_heads(
            self.k_proj.forward(keys_in.clone()),
            self.num_key_value_heads,
            self.head_dim,
        );
        let v = split_heads(
            self.v_proj.forward(keys_in),
            self.num_key_value_heads,
            self.head_dim,
        );
        let scale = (self.head_dim as f64).powf(-0.5);
        self.o_proj.forward(attention(q, k, v, mask, scale))
    }
}
