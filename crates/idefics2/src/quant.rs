//! Which linear layers are quantized, and how a quantized checkpoint says so.
//!
//! In-situ: the loader quantizes the text model's and the connector's linear layers as it reads
//! them (tensor by tensor); the vision encoder and the lm_head stay float unless asked. Saved:
//! `idefics2 quantize` writes the packed tensors (`{layer}.qweight`, `.scales`, `.qzeros`) and a
//! `quantization_config` in `config.json` that names the format and the parts, and every front
//! end loads that directly.

use serde::{Deserialize, Serialize};

pub use idefics2_kernels::{PackedWeight, QuantFormat, QuantizedWeight};

/// The `quant_method` we write into `quantization_config`.
pub const QUANT_METHOD: &str = "idefics2-rs";

/// What to quantize at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuantPolicy {
    /// `None`: everything stays float.
    pub format: Option<QuantFormat>,
    /// Also the vision encoder's linear layers.
    pub vision: bool,
    /// Also the untied lm_head.
    pub head: bool,
}

impl QuantPolicy {
    pub const NONE: Self = Self {
        format: None,
        vision: false,
        head: false,
    };

    pub fn new(format: Option<QuantFormat>) -> Self {
        Self {
            format,
            ..Self::NONE
        }
    }

    /// The format of the linear layer `prefix` (hub name without `.weight`), if quantized.
    pub fn format_for(&self, prefix: &str) -> Option<QuantFormat> {
        let format = self.format?;
        let quantized = prefix.starts_with("model.text_model.")
            || prefix.starts_with("model.connector.")
            || (self.vision && prefix.starts_with("model.vision_model."))
            || (self.head && prefix == "lm_head");
        quantized.then_some(format)
    }

    /// A short label: `f`, `q4g32`, `q8g32+vision+head`.
    pub fn label(&self) -> String {
        match self.format {
            None => "float".into(),
            Some(format) => {
                let mut label = format.name();
                if self.vision {
                    label.push_str("+vision");
                }
                if self.head {
                    label.push_str("+head");
                }
                label
            }
        }
    }
}

/// `quantization_config` of a checkpoint written by `idefics2 quantize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    pub quant_method: String,
    /// 8 or 4.
    pub bits: usize,
    pub group_size: usize,
    /// Whether the vision encoder's and the lm_head's linear layers are quantized too.
    #[serde(default)]
    pub vision: bool,
    #[serde(default)]
    pub head: bool,
}

impl QuantizationConfig {
    pub fn from_policy(policy: &QuantPolicy) -> Option<Self> {
        let format = policy.format?;
        Some(Self {
            quant_method: QUANT_METHOD.into(),
            bits: format.bits(),
            group_size: format.group(),
            vision: policy.vision,
            head: policy.head,
        })
    }

    /// The policy this checkpoint was written with, or why it cannot be read.
    pub fn policy(&self) -> Result<QuantPolicy, String> {
        if self.quant_method != QUANT_METHOD {
            return Err(format!(
                "quantization_config.quant_method `{}` is not supported (only `{QUANT_METHOD}`)",
                self.quant_method
            ));
        }
        let format = match self.bits {
            8 => QuantFormat::Q8 {
                group: self.group_size,
            },
            4 => QuantFormat::Q4 {
                group: self.group_size,
            },
            other => return Err(format!("quantization_config.bits {other}: expected 8 or 4")),
        };
        format
            .validate()
            .map_err(|e| format!("quantization_config: {e}"))?;
        Ok(QuantPolicy {
            format: Some(format),
            vision: self.vision,
            head: self.head,
        })
    }
}

/// Hub names of the packed tensors of linear layer `prefix`.
pub fn packed_names(prefix: &str) -> [String; 3] {
    [
        format!("{prefix}.qweight"),
        format!("{prefix}.scales"),
        format!("{prefix}.qzeros"),
    ]
}
