//! Flags shared by the subcommands: model location, device, precision, image and sampling
//! settings.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::{DType, Device};
use clap::{Args, ValueEnum};
use idefics2::processor::ImageOptions;
use idefics2::quant::{QuantFormat, QuantPolicy};
use idefics2::{DeviceChoice, Sampling, SamplingOptions, init_device};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory, or hub id such as HuggingFaceM4/idefics2-8b (from the HF cache, downloaded
    /// when missing). Default: the tiny shapes model embedded in this binary (unpacked into the
    /// user data directory on first use).
    #[arg(long)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
}

impl ModelArgs {
    pub fn resolve(&self) -> Result<PathBuf> {
        match &self.model {
            Some(model) => crate::hub::resolve_model(model, &self.revision),
            None => Ok(idefics2::default_model::default_model_dir()?),
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// A GPU when there is one, else the CPU (a CPU adapter such as lavapipe counts as none).
    Auto,
    Cpu,
    Gpu,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeArg {
    F32,
    /// On a GPU: weights and activations in f16 (needs shader-f16). On the CPU: linear weights
    /// kept in f16, arithmetic in f32.
    F16,
    /// The CPU only: linear weights kept in bf16 (as most checkpoints store them), arithmetic in
    /// f32. WGSL has no bf16.
    Bf16,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Float type of the weights (and of activations on a GPU): f16 on a GPU needs shader-f16;
    /// on the CPU, f16 and bf16 keep the linear weights in 16 bits and compute in f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

impl RuntimeArgs {
    /// The device `--device` names (auto resolved) and why it was chosen, for the summary line.
    fn choice(&self) -> (DeviceChoice, Option<String>) {
        match self.device {
            DeviceArg::Cpu => (DeviceChoice::Cpu, None),
            DeviceArg::Gpu => (DeviceChoice::Gpu, None),
            DeviceArg::Auto => {
                let (choice, why) = idefics2::resolve_auto();
                (choice, Some(why))
            }
        }
    }

    pub fn device(&self) -> Result<(Device, DType)> {
        let (choice, why) = self.choice();
        let dtype = match self.dtype {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 if choice == DeviceChoice::Gpu => match why {
                Some(why) => bail!(
                    "--dtype bf16 runs on the CPU only (WGSL has no bf16; use f16 on a GPU), and \
                     --device {why}"
                ),
                None => bail!(
                    "--dtype bf16 runs on the CPU only (WGSL has no bf16): use --device cpu, or \
                     --dtype f16 on a GPU"
                ),
            },
            DtypeArg::Bf16 => DType::BF16,
        };
        Ok((init_device(choice)?, dtype))
    }

    /// [`label`](Self::label), with the adapter and backend a GPU device was brought up on and,
    /// for `--device auto`, why that device.
    pub fn summary(&self) -> String {
        let (choice, why) = self.choice();
        let mut summary = self.label().to_string();
        if choice == DeviceChoice::Gpu
            && let Some(adapter) = idefics2::chosen_adapter()
        {
            summary.push_str(&format!(" ({adapter})"));
        }
        if let Some(why) = why {
            summary.push_str(&format!(" [{why}]"));
        }
        summary
    }

    pub fn label(&self) -> &'static str {
        match (self.choice().0, self.dtype) {
            (DeviceChoice::Gpu, DtypeArg::F32) => "gpu f32",
            (DeviceChoice::Gpu, DtypeArg::F16) => "gpu f16",
            (DeviceChoice::Gpu, DtypeArg::Bf16) => "gpu bf16",
            (_, DtypeArg::F32) => "cpu f32",
            (_, DtypeArg::F16) => "cpu f16 weights",
            (_, DtypeArg::Bf16) => "cpu bf16 weights",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantArg {
    None,
    Q8,
    Q4,
}

/// Quantization of the linear layers at load (a checkpoint written by `idefics2 quantize` loads
/// as saved).
#[derive(Args, Debug, Clone)]
pub struct QuantArgs {
    /// Quantize the text model's and the connector's linear layers: 8 or 4 bits per weight,
    /// one scale per group of input values (and a zero point for q4).
    #[arg(long, value_enum, default_value = "none")]
    pub quant: QuantArg,
    /// Values per quantization group.
    #[arg(long, default_value_t = 32)]
    pub quant_group: usize,
    /// Also quantize the vision encoder's linear layers.
    #[arg(long)]
    pub quant_vision: bool,
    /// Also quantize the lm_head (when it is not tied to the embeddings).
    #[arg(long)]
    pub quant_head: bool,
}

impl QuantArgs {
    pub fn policy(&self) -> Result<QuantPolicy> {
        let group = self.quant_group;
        let format = match self.quant {
            QuantArg::None => {
                if self.quant_vision || self.quant_head {
                    bail!("--quant-vision and --quant-head need --quant q8 or q4");
                }
                None
            }
            QuantArg::Q8 => Some(QuantFormat::Q8 { group }),
            QuantArg::Q4 => Some(QuantFormat::Q4 { group }),
        };
        if let Some(format) = format {
            format
                .validate()
                .map_err(|e| anyhow::anyhow!("--quant-group: {e}"))?;
        }
        Ok(QuantPolicy {
            format,
            vision: self.quant_vision,
            head: self.quant_head,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct ImageArgs {
    /// Split each image into 4 crops plus the original (default: the model's preprocessor config).
    #[arg(long, value_enum)]
    pub image_splitting: Option<OnOff>,
    /// Resize so the longest edge is at most this many pixels.
    #[arg(long)]
    pub longest_edge: Option<u32>,
    /// Resize so the shortest edge is at least this many pixels.
    #[arg(long)]
    pub shortest_edge: Option<u32>,
}

impl ImageArgs {
    pub fn options(&self) -> ImageOptions {
        ImageOptions {
            do_image_splitting: self.image_splitting.map(|s| s == OnOff::On),
            longest_edge: self.longest_edge,
            shortest_edge: self.shortest_edge,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum number of generated tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Greedy decoding (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k", "seed"])]
    pub greedy: bool,
    /// Sample with this temperature.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[arg(long, requires = "temperature")]
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, requires = "temperature")]
    pub top_k: Option<usize>,
    /// Seed of the sampler.
    #[arg(long, requires = "temperature")]
    pub seed: Option<u64>,
    /// Penalise tokens already in the context (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
}

impl SamplingArgs {
    pub fn options(&self) -> SamplingOptions {
        let sampling = match self.temperature {
            Some(temperature) if !self.greedy => Sampling::Sample {
                temperature,
                top_k: self.top_k.unwrap_or(0),
                top_p: self.top_p.unwrap_or(1.0),
                seed: self.seed.unwrap_or(0),
            },
            _ => Sampling::Greedy,
        };
        SamplingOptions {
            sampling,
            repetition_penalty: self.repetition_penalty,
        }
    }
}
