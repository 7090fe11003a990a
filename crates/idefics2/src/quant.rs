//! Which linear layers are quantized, and how a quantized checkpoint says so.
//!
//! In-situ: the loader quantizes the text model's and the connector's linear layers as it reads
//! them (tensor by tensor); the vision encoder and the lm_head stay float unless asked. Saved:
//! `idefics2 quantize` writes the packed tensors (`{layer}.qweight`, `.scales`, `.qzeros`) and a
//! `quantization_config` in `config.json` that names the format and the parts, and every front
//! end loads that directly.

use serde::{Deserialize, Serialize};

pub use crate::awq::{AWQ_METHOD, AwqLayout};

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

/// How a checkpoint stores its quantized linear layers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoredQuant {
    /// As floats: layers the policy names are quantized at load.
    #[default]
    Float,
    /// Packed by `idefics2 quantize`, in our layout.
    Packed,
    /// AutoAWQ's GEMM layout (`idefics2-8b-AWQ`).
    Awq(AwqLayout),
}

/// `quantization_config` of a quantized checkpoint: one written by `idefics2 quantize`, or
/// AutoAWQ's. Fields of other methods are ignored; [`stored`](Self::stored) says why such a
/// checkpoint cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    pub quant_method: String,
    /// 8 or 4 (AWQ: 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// Ours: whether the vision encoder's and the lm_head's linear layers are quantized too.
    #[serde(default)]
    pub vision: bool,
    #[serde(default)]
    pub head: bool,
    /// AWQ: the layout, `gemm` (the hub's) or `gemv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// AWQ: whether groups have zero points (true when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_point: Option<bool>,
    /// AWQ: linear layers left float, matched as substrings of their path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_to_not_convert: Option<Vec<String>>,
}

impl QuantizationConfig {
    pub fn from_policy(policy: &QuantPolicy) -> Option<Self> {
        let format = policy.format?;
        Some(Self {
            quant_method: QUANT_METHOD.into(),
            bits: Some(format.bits()),
            group_size: Some(format.group()),
            vision: policy.vision,
            head: policy.head,
            version: None,
            zero_point: None,
            modules_to_not_convert: None,
        })
    }

    /// The policy this checkpoint was written with and how its layers are stored, or why it
    /// cannot be read (naming the field and its value).
    pub fn stored(&self) -> Result<(QuantPolicy, StoredQuant), String> {
        let group = |bits: usize| {
            let group = self
                .group_size
                .ok_or("quantization_config.group_size is missing")?;
            let format = if bits == 8 {
                QuantFormat::Q8 { group }
            } else {
                QuantFormat::Q4 { group }
            };
            format
                .validate()
                .map_err(|e| format!("quantization_config.group_size {group}: {e}"))?;
            Ok::<_, String>(format)
        };
        match self.quant_method.as_str() {
            QUANT_METHOD => {
                let format = match self.bits {
                    Some(bits @ (8 | 4)) => group(bits)?,
                    Some(other) => {
                        return Err(format!("quantization_config.bits {other}: expected 8 or 4"));
                    }
                    None => return Err("quantization_config.bits is missing".into()),
                };
                let policy = QuantPolicy {
                    format: Some(format),
                    vision: self.vision,
                    head: self.head,
                };
                Ok((policy, StoredQuant::Packed))
            }
            AWQ_METHOD => {
                let version = self.version.as_deref().unwrap_or("gemm");
                if !version.eq_ignore_ascii_case("gemm") {
                    return Err(format!(
                        "quantization_config.version `{version}` is not supported: AWQ \
                         checkpoints load in the `gemm` layout (the hub's Idefics2 AWQ uses it)"
                    ));
                }
                match self.bits {
                    Some(4) => {}
                    Some(other) => {
                        return Err(format!(
                            "quantization_config.bits {other} is not supported: AWQ checkpoints \
                             load with 4 bits"
                        ));
                    }
                    None => return Err("quantization_config.bits is missing".into()),
                }
                if self.zero_point == Some(false) {
                    return Err(
                        "quantization_config.zero_point false is not supported: AWQ's \
                                gemm layout stores a zero point per group"
                            .into(),
                    );
                }
                let format = group(4)?;
                let layout = AwqLayout {
                    group: format.group(),
                    not_convert: self.modules_to_not_convert.clone().unwrap_or_default(),
                };
                Ok((QuantPolicy::new(Some(format)), StoredQuant::Awq(layout)))
            }
            other => Err(format!(
                "quantization_config.quant_method `{other}` is not supported (only `{AWQ_METHOD}` \
                 checkpoints and those written by `idefics2 quantize`, `{QUANT_METHOD}`)"
            )),
        }
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
