//! Hub `config.json` and `generation_config.json`, mirroring transformers 4.54.1's
//! `Idefics2Config` (nested vision, perceiver and Mistral text configs) with its defaults.
//! <https://github.com/huggingface/transformers/blob/v4.54.1/src/transformers/models/idefics2/configuration_idefics2.py>

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model_files::ModelFiles;

/// Activation functions named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    Gelu,
    #[serde(rename = "gelu_pytorch_tanh")]
    GeluPytorchTanh,
    #[serde(rename = "gelu_new")]
    GeluNew,
}

/// SigLIP vision encoder (`Idefics2VisionConfig`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "default_vision_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_vision_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_vision_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_vision_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_vision_hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

/// Perceiver resampler (`Idefics2PerceiverConfig`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerceiverConfig {
    #[serde(default = "default_perceiver_hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_perceiver_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_perceiver_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_resampler_n_latents")]
    pub resampler_n_latents: usize,
    #[serde(default = "default_resampler_depth")]
    pub resampler_depth: usize,
    #[serde(default = "default_resampler_n_heads")]
    pub resampler_n_heads: usize,
    #[serde(default = "default_resampler_head_dim")]
    pub resampler_head_dim: usize,
    #[serde(default = "default_perceiver_num_key_value_heads")]
    pub num_key_value_heads: usize,
}

/// Mistral text decoder (`MistralConfig`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_text_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_text_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_text_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_text_num_attention_heads")]
    pub num_attention_heads: usize,
    /// `None` in the JSON means "same as num_attention_heads".
    #[serde(default = "default_text_num_key_value_heads")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_text_hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_text_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// `None` (JSON null) disables the sliding window.
    #[serde(default = "default_sliding_window")]
    pub sliding_window: Option<usize>,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
}

/// The whole model (`Idefics2Config`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Idefics2Config {
    #[serde(default = "default_image_token_id")]
    pub image_token_id: u32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_vision_config")]
    pub vision_config: VisionConfig,
    #[serde(default = "default_perceiver_config")]
    pub perceiver_config: PerceiverConfig,
    #[serde(default = "default_text_config")]
    pub text_config: TextConfig,
    /// Present in checkpoints written by `idefics2 quantize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<crate::quant::QuantizationConfig>,
}

impl Idefics2Config {
    /// Reads `config.json` and applies `Idefics2Config.__init__`'s adjustments.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_to_string(path)?;
        Self::from_json(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// `config.json` of a model on disk or in memory.
    pub fn from_model_files(model: &ModelFiles) -> Result<Self> {
        let text = read_model_text(model, "config.json")?;
        Self::from_json(&text).map_err(|source| Error::Json {
            path: model.path("config.json"),
            source,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let mut config: Self = serde_json::from_str(text)?;
        // transformers: the perceiver takes the text width (and then the text eps) when they differ.
        if config.text_config.hidden_size != config.perceiver_config.hidden_size {
            config.perceiver_config.hidden_size = config.text_config.hidden_size;
            config.perceiver_config.rms_norm_eps = config.text_config.rms_norm_eps;
        }
        Ok(config)
    }

    /// Checks the relations between fields that the model relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                message,
            })
        };
        let v = &self.vision_config;
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return fail(format!(
                "vision_config: image_size {} must be at least patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return fail(format!(
                "vision_config: hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        let p = &self.perceiver_config;
        if p.num_key_value_heads == 0 || !p.resampler_n_heads.is_multiple_of(p.num_key_value_heads)
        {
            return fail(format!(
                "perceiver_config: resampler_n_heads {} is not a multiple of num_key_value_heads {}",
                p.resampler_n_heads, p.num_key_value_heads
            ));
        }
        let t = &self.text_config;
        if t.num_attention_heads == 0
            || t.num_key_value_heads() == 0
            || !t
                .num_attention_heads
                .is_multiple_of(t.num_key_value_heads())
        {
            return fail(format!(
                "text_config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_attention_heads,
                t.num_key_value_heads()
            ));
        }
        if !t.head_dim().is_multiple_of(2) {
            return fail(format!(
                "text_config: head_dim {} must be even for RoPE",
                t.head_dim()
            ));
        }
        if self.image_token_id as usize >= t.vocab_size {
            return fail(format!(
                "image_token_id {} is outside the vocabulary ({})",
                self.image_token_id, t.vocab_size
            ));
        }
        Ok(())
    }
}

/// `eos_token_id` may be one id or a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(id) => vec![*id],
            OneOrMany::Many(ids) => ids.clone(),
        }
    }
}

/// `generation_config.json`: the fields generation uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_to_string(path)?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// `generation_config.json`; defaults when the model has none.
    pub fn from_model_files(model: &ModelFiles) -> Result<Self> {
        let name = "generation_config.json";
        let io_error = |source| Error::Io {
            path: model.path(name),
            source,
        };
        let Some(text) = model.read_text(name).map_err(io_error)? else {
            return Ok(Self::default());
        };
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: model.path(name),
            source,
        })
    }

    /// Ids that end generation: `eos_token_id` of the generation config, else `</s>` (2).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(OneOrMany::to_vec)
            .unwrap_or_else(|| vec![2])
    }

    /// Single-token entries of `bad_words_ids` (the only kind Idefics2 uses); longer sequences are
    /// banned when their prefix was just generated.
    pub fn bad_words(&self) -> Vec<Vec<u32>> {
        self.bad_words_ids.clone().unwrap_or_default()
    }
}

/// A file of the model that must exist, as text.
pub(crate) fn read_model_text(model: &ModelFiles, name: &str) -> Result<String> {
    let io_error = |source| Error::Io {
        path: model.path(name),
        source,
    };
    model.read_text(name).map_err(io_error)?.ok_or_else(|| {
        io_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the model has no such file",
        ))
    })
}

pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn default_vision_hidden_size() -> usize {
    768
}
fn default_vision_intermediate_size() -> usize {
    3072
}
fn default_vision_num_hidden_layers() -> usize {
    12
}
fn default_vision_num_attention_heads() -> usize {
    12
}
fn default_num_channels() -> usize {
    3
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    32
}
fn default_vision_hidden_act() -> Activation {
    Activation::GeluPytorchTanh
}
fn default_layer_norm_eps() -> f64 {
    1e-6
}
fn default_perceiver_hidden_act() -> Activation {
    Activation::Silu
}
fn default_perceiver_hidden_size() -> usize {
    4096
}
fn default_perceiver_rms_norm_eps() -> f64 {
    1e-6
}
fn default_resampler_n_latents() -> usize {
    64
}
fn default_resampler_depth() -> usize {
    3
}
fn default_resampler_n_heads() -> usize {
    16
}
fn default_resampler_head_dim() -> usize {
    96
}
fn default_perceiver_num_key_value_heads() -> usize {
    4
}
fn default_vocab_size() -> usize {
    32000
}
fn default_text_hidden_size() -> usize {
    4096
}
fn default_text_intermediate_size() -> usize {
    14336
}
fn default_text_num_hidden_layers() -> usize {
    32
}
fn default_text_num_attention_heads() -> usize {
    32
}
fn default_text_num_key_value_heads() -> Option<usize> {
    Some(8)
}
fn default_text_hidden_act() -> Activation {
    Activation::Silu
}
fn default_max_position_embeddings() -> usize {
    4096 * 32
}
fn default_text_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_sliding_window() -> Option<usize> {
    Some(4096)
}
fn default_image_token_id() -> u32 {
    32001
}
fn default_vision_config() -> VisionConfig {
    serde_json::from_str("{}").expect("all vision fields have defaults")
}
fn default_perceiver_config() -> PerceiverConfig {
    serde_json::from_str("{}").expect("all perceiver fields have defaults")
}
/// transformers builds this one with overrides when `text_config` is absent.
fn default_text_config() -> TextConfig {
    let mut config: TextConfig = serde_json::from_str("{}").expect("all text fields have defaults");
    config.max_position_embeddings = 4096 * 8;
    config.rms_norm_eps = 1e-5;
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_take_transformers_defaults() {
        let config = Idefics2Config::from_json(r#"{"text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": null}}"#).unwrap();
        assert_eq!(config.vision_config.patch_size, 32);
        assert_eq!(config.text_config.num_key_value_heads(), 4);
        assert_eq!(config.text_config.head_dim(), 16);
        assert_eq!(config.text_config.sliding_window, Some(4096));
        // The perceiver follows the text width and eps when they differ.
        assert_eq!(config.perceiver_config.hidden_size, 64);
        assert_eq!(config.perceiver_config.rms_norm_eps, 1e-6);
        let config = Idefics2Config::from_json("{}").unwrap();
        assert_eq!(config.text_config.rms_norm_eps, 1e-5);
        assert_eq!(config.perceiver_config.rms_norm_eps, 1e-6);
    }

    #[test]
    fn eos_may_be_one_id_or_a_list() {
        let g: GenerationConfig = serde_json::from_str(r#"{"eos_token_id": [2, 32002]}"#).unwrap();
        assert_eq!(g.eos_ids(), vec![2, 32002]);
        let g: GenerationConfig = serde_json::from_str(r#"{"eos_token_id": 2}"#).unwrap();
        assert_eq!(g.eos_ids(), vec![2]);
    }
}
