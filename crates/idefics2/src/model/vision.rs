//! SigLIP vision encoder at native resolution (`Idefics2VisionTransformer`): 14x14 patch
//! embedding, NaViT-style bucketed position ids, encoder layers with a key-padding mask,
//! post-layernorm.
//! <https://github.com/huggingface/transformers/blob/v4.54.1/src/transformers/models/idefics2/modeling_idefics2.py>

use burn::tensor::{Int, Tensor};

use crate::config::VisionConfig;
use crate::model::attention::{AttentionMask, attention, split_heads};
use crate::model::layers::{LayerNorm, Linear, activate};
use crate::weights::TensorLoader;

#[derive(Debug, Clone)]
pub struct VisionEmbeddings {
    /// Conv2d(3, hidden, 14, stride 14) flattened to a linear map over `[c, ky, kx]` patches.
    pub patch_embedding: Linear,
    /// `[num_patches_per_side^2, hidden]`
    pub position_embedding: Tensor<2>,
}

#[derive(Debug, Clone)]
pub struct VisionAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
    pub head_dim: usize,
}

#[derive(Debug, Clone)]
pub struct VisionMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub act: crate::config::Activation,
}

#[derive(Debug, Clone)]
pub struct VisionEncoderLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: VisionAttention,
    pub layer_norm2: LayerNorm,
    pub mlp: VisionMlp,
}

#[derive(Debug, Clone)]
pub struct VisionModel {
    pub embeddings: VisionEmbeddings,
    pub layers: Vec<VisionEncoderLayer>,
    pub post_layernorm: LayerNorm,
}

impl VisionModel {
    /// Loads `{prefix}.embeddings`, `{prefix}.encoder.layers.N`, `{prefix}.post_layernorm`.
    pub fn load(loader: &mut TensorLoader, prefix: &str, config: &VisionConfig) -> Self {
        let hidden = config.hidden_size;
        let patch = config.patch_size;
        let channels = config.num_channels;
        let side = config.image_size / patch;
        let patch_embedding = Linear::float(
            loader.float_as(
                &format!("{prefix}.embeddings.patch_embedding.weight"),
                [hidden, channels, patch, patch],
                [hidden, channels * patch * patch],
            ),
            Some(loader.float(
                &format!("{prefix}.embeddings.patch_embedding.bias"),
                [hidden],
            )),
            "vision patch embedding",
        );
        let position_embedding = loader.float(
            &format!("{prefix}.embeddings.position_embedding.weight"),
            [side * side, hidden],
        );
        let head_dim = hidden / config.num_attention_heads;
        let eps = config.layer_norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("{prefix}.encoder.layers.{i}");
                let proj = |loader: &mut TensorLoader, name: &str| {
                    Linear::load(
                        loader,
                        &format!("{p}.self_attn.{name}"),
                        hidden,
                        hidden,
                        true,
                    )
                };
                VisionEncoderLayer {
                    layer_norm1: LayerNorm::load(loader, &format!("{p}.layer_norm1"), hidden, eps),
                    self_attn: VisionAttention {
                        q_proj: proj(loader, "q_proj"),
                        k_proj: proj(loader, "k_proj"),
                        v_proj: proj(loader, "v_proj"),
                        out_proj: proj(loader, "out_proj"),
                        num_heads: config.num_attention_heads,
                        head_dim,
                    },
                    layer_norm2: LayerNorm::load(loader, &format!("{p}.layer_norm2"), hidden, eps),
                    mlp: VisionMlp {
                        fc1: Linear::load(
                            loader,
                            &format!("{p}.mlp.fc1"),
                            hidden,
                            config.intermediate_size,
                            true,
                        ),
                        fc2: Linear::load(
                            loader,
                            &format!("{p}.mlp.fc2"),
                            config.intermediate_size,
                            hidden,
                            true,
                        ),
                        act: config.hidden_act,
                    },
                }
            })
            .collect();
        Self {
            embeddings: VisionEmbeddings {
                patch_embedding,
                position_embedding,
            },
            layers,
            post_layernorm: LayerNorm::load(
                loader,
                &format!("{prefix}.post_layernorm"),
                hidden,
                eps,
            ),
        }
    }

    /// # Shapes
    /// - `patches`: `[images, num_patches, channels*patch*patch]` (see `crate::vision_input`)
    /// - `position_ids`: `[images, num_patches]`
    /// - `mask`: key padding over the patches (no key bias when no patch is padding)
    /// - returns `[images, num_patches, hidden]`
    pub fn forward(
        &self,
        patches: Tensor<3>,
        position_ids: Tensor<2, Int>,
        mask: &AttentionMask,
    ) -> Tensor<3> {
        let _profile = crate::profile::scope("vision encoder: other", || patches.device());
        let [images, num_patches, _] = patches.dims();
        let hidden = self.embeddings.position_embedding.dims()[1];
        let positions = self
            .embeddings
            .position_embedding
            .clone()
            .select(0, position_ids.reshape([images * num_patches]))
            .reshape([images, num_patches, hidden]);
        let mut x = self.embeddings.patch_embedding.forward(patches) + positions; // [images, patches, hidden]
        for layer in &self.layers {
            let residual = x.clone();
            let h = layer.layer_norm1.forward(x);
            let h = layer.self_attn.forward(h, mask);
            x = residual + h;
            let residual = x.clone();
            let h = layer.layer_norm2.forward(x);
            let h = layer.mlp.fc1.forward(h);
            let h = {
                let _profile = crate::profile::scope("activations", || h.device());
                activate(layer.mlp.act, h)
            };
            let h = layer.mlp.fc2.forward(h);
            x = residual + h;
        }
        self.post_layernorm.forward(x)
    }
}

impl VisionAttention {
    fn forward(&self, x: Tensor<3>, mask: &AttentionMask) -> Tensor<3> {
        let q = split_heads(
            self.q_proj.forward(x.clone()),
            self.num_heads,
            self.head_dim,
        );
        let k = split_heads(
            self.k_proj.forward(x.clone()),
            self.num_heads,
            self.head_dim,
        );
        let v = split_heads(self.v_proj.forward(x), self.num_heads, self.head_dim);
        let scale = (self.head_dim as f64).powf(-0.5);
        self.out_proj.forward(attention(q, k, v, mask, scale))
    }
}
