//! Models with random weights of real shapes, made in memory: `--synthetic idefics2-8b` in the
//! benchmarks, where the real checkpoint cannot be downloaded.

use burn::tensor::{DType, Device};

use crate::config::Idefics2Config;
use crate::error::{Error, Result};
use crate::model::Idefics2;
use crate::quant::QuantPolicy;

/// `config.json` of HuggingFaceM4/idefics2-8b (the -base and -chatty checkpoints share it).
pub const IDEFICS2_8B_CONFIG: &str = r#"{
  "architectures": ["Idefics2ForConditionalGeneration"],
  "image_token_id": 32001,
  "model_type": "idefics2",
  "tie_word_embeddings": false,
  "perceiver_config": {"hidden_act": "silu", "resampler_depth": 3, "resampler_head_dim": 96,
    "resampler_n_heads": 16, "resampler_n_latents": 64, "num_key_value_heads": 4},
  "text_config": {"vocab_size": 32003, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "sliding_window": 4096, "pad_token_id": 0},
  "vision_config": {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304,
    "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14}
}"#;

/// The names `preset_config` knows.
pub const PRESETS: &[&str] = &["idefics2-8b"];

/// The config of a named architecture; `text_layers` keeps only the first decoder layers.
pub fn preset_config(name: &str, text_layers: Option<usize>) -> Result<Idefics2Config> {
    let json = match name {
        "idefics2-8b" => IDEFICS2_8B_CONFIG,
        other => {
            return Err(Error::Synthetic(format!(
                "unknown model `{other}`: known are {}",
                PRESETS.join(", ")
            )));
        }
    };
    let mut config = Idefics2Config::from_json(json)
        .map_err(|e| Error::Synthetic(format!("preset `{name}`: {e}")))?;
    if let Some(layers) = text_layers {
        let all = config.text_config.num_hidden_layers;
        if layers == 0 || layers > all {
            return Err(Error::Synthetic(format!(
                "{layers} decoder layers asked: `{name}` has 1 to {all}"
            )));
        }
        config.text_config.num_hidden_layers = layers;
    }
    Ok(config)
}

impl Idefics2 {
    /// A model of `config`'s shapes with seeded random weights (see
    /// [`synthetic_values`](crate::weights::synthetic_values)), uploaded tensor by tensor.
    pub fn synthetic(
        config: Idefics2Config,
        device: &Device,
        dtype: DType,
        quant: QuantPolicy,
        seed: u64,
    ) -> Result<Self> {
        let (dtype, half) = Self::storage(device, dtype)?;
        let mut loader = crate::weights::TensorLoader::synthetic(device, dtype, seed)
            .with_quant(quant, crate::quant::StoredQuant::Float)
            .with_half_linears(half);
        let model = Self::build(&config, &mut loader, device, dtype);
        loader.finish()?;
        Ok(model)
    }
}

impl crate::pipeline::Pipeline {
    /// A pipeline around [`Idefics2::synthetic`]: the bundled tokenizer and transformers'
    /// default image processing (longest edge 980), `image_seq_len` from the config.
    pub fn synthetic(
        config: Idefics2Config,
        device: &Device,
        dtype: DType,
        quant: QuantPolicy,
        seed: u64,
    ) -> Result<Self> {
        let mut processor = crate::processor::Idefics2Processor::bundled()?;
        processor.prompt = crate::processor::PromptProcessor::bundled(
            config.perceiver_config.resampler_n_latents,
        )?;
        let model = Idefics2::synthetic(config, device, dtype, quant, seed)?;
        Ok(Self {
            processor,
            model,
            generation: crate::config::GenerationConfig::default(),
        })
    }
}
