//! `preprocessor_config.json` and `processor_config.json`, with transformers' defaults for absent
//! fields (`Idefics2ImageProcessor.__init__`, `Idefics2Processor.__init__` in 4.54.1), and the
//! per-request overrides.

use serde::{Deserialize, Deserializer, Serialize};

use super::resize::Resample;
use super::{ProcessorError, Result};
use crate::model_files::ModelFiles;

/// `preprocessor_config.json` of an Idefics2 model (the `Idefics2ImageProcessor` fields).
/// Unknown keys (`image_processor_type`, `processor_class`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProcessorConfig {
    /// Convert non-RGB inputs to RGB, compositing alpha onto white (the processor's `convert_to_rgb`).
    #[serde(default = "default_do_convert_rgb")]
    pub do_convert_rgb: bool,
    #[serde(default = "default_do_resize")]
    pub do_resize: bool,
    #[serde(default = "default_size")]
    pub size: ImageSize,
    /// PIL resampling filter id (2 = BILINEAR).
    #[serde(default = "default_resample")]
    pub resample: Resample,
    #[serde(default = "default_do_rescale")]
    pub do_rescale: bool,
    #[serde(default = "default_rescale_factor")]
    pub rescale_factor: f64,
    #[serde(default = "default_do_normalize")]
    pub do_normalize: bool,
    /// Per-channel mean; a single number in the JSON applies to all three channels.
    #[serde(default = "default_image_mean", deserialize_with = "per_channel")]
    pub image_mean: [f32; 3],
    #[serde(default = "default_image_std", deserialize_with = "per_channel")]
    pub image_std: [f32; 3],
    /// Pad to the batch's largest image and image count. Always done here: the batch is one
    /// rectangular array, so `false` is accepted but has no effect.
    #[serde(default = "default_do_pad")]
    pub do_pad: bool,
    /// Split each image into 4 quadrants followed by the original.
    #[serde(default = "default_do_image_splitting")]
    pub do_image_splitting: bool,
}

/// `size` of [`ImageProcessorConfig`]: the resize bounds in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSize {
    pub longest_edge: u32,
    pub shortest_edge: u32,
}

fn default_do_convert_rgb() -> bool {
    true
}
fn default_do_resize() -> bool {
    true
}
fn default_size() -> ImageSize {
    ImageSize {
        longest_edge: 980,
        shortest_edge: 378,
    }
}
fn default_resample() -> Resample {
    Resample::Bilinear
}
fn default_do_rescale() -> bool {
    true
}
fn default_rescale_factor() -> f64 {
    1.0 / 255.0
}
fn default_do_normalize() -> bool {
    true
}
/// `IMAGENET_STANDARD_MEAN`.
fn default_image_mean() -> [f32; 3] {
    [0.5; 3]
}
/// `IMAGENET_STANDARD_STD`.
fn default_image_std() -> [f32; 3] {
    [0.5; 3]
}
fn default_do_pad() -> bool {
    true
}
fn default_do_image_splitting() -> bool {
    false
}

fn per_channel<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<[f32; 3], D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum PerChannel {
        One(f32),
        Three([f32; 3]),
    }
    Ok(match PerChannel::deserialize(deserializer)? {
        PerChannel::One(v) => [v; 3],
        PerChannel::Three(v) => v,
    })
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_convert_rgb: default_do_convert_rgb(),
            do_resize: default_do_resize(),
            size: default_size(),
            resample: default_resample(),
            do_rescale: default_do_rescale(),
            rescale_factor: default_rescale_factor(),
            do_normalize: default_do_normalize(),
            image_mean: default_image_mean(),
            image_std: default_image_std(),
            do_pad: default_do_pad(),
            do_image_splitting: default_do_image_splitting(),
        }
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`; transformers' defaults when the file is absent.
    pub fn from_model_files(model: &ModelFiles) -> Result<Self> {
        read_optional_json(model, "preprocessor_config.json").map(Option::unwrap_or_default)
    }

    /// The settings for one request: `options` wins over the config where it says something.
    pub fn with_options(&self, options: &ImageOptions) -> Self {
        let mut config = self.clone();
        if let Some(split) = options.do_image_splitting {
            config.do_image_splitting = split;
        }
        if let Some(longest_edge) = options.longest_edge {
            config.size.longest_edge = longest_edge;
        }
        if let Some(shortest_edge) = options.shortest_edge {
            config.size.shortest_edge = shortest_edge;
        }
        config
    }
}

/// `processor_config.json`: `Idefics2Processor`'s own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessorConfig {
    /// `<image>` tokens per image (the perceiver's `resampler_n_latents`).
    #[serde(default = "default_image_seq_len")]
    pub image_seq_len: usize,
    /// Some checkpoints keep the chat template here.
    #[serde(default)]
    pub chat_template: Option<String>,
}

fn default_image_seq_len() -> usize {
    64
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            image_seq_len: default_image_seq_len(),
            chat_template: None,
        }
    }
}

impl ProcessorConfig {
    /// Reads `processor_config.json`; defaults when the file is absent.
    pub fn from_model_files(model: &ModelFiles) -> Result<Self> {
        read_optional_json(model, "processor_config.json").map(Option::unwrap_or_default)
    }
}

/// Per-request overrides of [`ImageProcessorConfig`]; `None` keeps the config's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOptions {
    pub do_image_splitting: Option<bool>,
    pub longest_edge: Option<u32>,
    pub shortest_edge: Option<u32>,
}

impl ImageOptions {
    /// Edges from one patch (14 px) to 4096 px: a smaller image has no patch to encode, a larger
    /// one only costs memory (the processor scales images up to `shortest_edge`).
    pub const EDGE_RANGE: std::ops::RangeInclusive<u32> = 14..=4096;

    /// The first option out of range, named as the command line and the app name it.
    pub fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("longest edge", self.longest_edge),
            ("shortest edge", self.shortest_edge),
        ] {
            if let Some(value) = value
                && !Self::EDGE_RANGE.contains(&value)
            {
                return Err(ProcessorError::ImageOption {
                    option,
                    value,
                    expected: format!(
                        "{} to {} pixels",
                        Self::EDGE_RANGE.start(),
                        Self::EDGE_RANGE.end()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `Ok(None)` when the model has no file `name`; any other read or parse failure is an error.
pub(crate) fn read_optional_json<T: serde::de::DeserializeOwned>(
    model: &ModelFiles,
    name: &str,
) -> Result<Option<T>> {
    let Some(text) = read_optional_text(model, name)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ProcessorError::ParseConfig {
            path: model.path(name),
            source,
        })
}

/// The text of file `name`; `Ok(None)` when absent.
pub(crate) fn read_optional_text(model: &ModelFiles, name: &str) -> Result<Option<String>> {
    model
        .read_text(name)
        .map_err(|source| ProcessorError::ReadFile {
            path: model.path(name),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_take_transformers_defaults() {
        let config: ImageProcessorConfig = serde_json::from_str("{}").expect("parse");
        assert_eq!(config, ImageProcessorConfig::default());
        assert!(!config.do_image_splitting);
        assert_eq!(config.size.longest_edge, 980);
        assert_eq!(config.size.shortest_edge, 378);
        let processor: ProcessorConfig = serde_json::from_str("{}").expect("parse");
        assert_eq!(processor.image_seq_len, 64);
    }

    #[test]
    fn idefics2_8b_config_parses() {
        let json = r#"{"do_convert_rgb": true, "do_image_splitting": true, "do_normalize": true,
            "do_pad": true, "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Idefics2ImageProcessor", "image_std": 0.5, "resample": 2,
            "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 980, "shortest_edge": 378}}"#;
        let config: ImageProcessorConfig = serde_json::from_str(json).expect("parse");
        assert!(config.do_image_splitting);
        assert_eq!(config.image_std, [0.5; 3]);
        assert_eq!(config.rescale_factor, 1.0 / 255.0);
        let small = config.with_options(&ImageOptions {
            do_image_splitting: Some(false),
            longest_edge: Some(112),
            shortest_edge: None,
        });
        assert!(!small.do_image_splitting);
        assert_eq!(
            small.size,
            ImageSize {
                longest_edge: 112,
                shortest_edge: 378
            }
        );
    }

    #[test]
    fn unsupported_resample_is_an_error() {
        let err = serde_json::from_str::<ImageProcessorConfig>(r#"{"resample": 0}"#);
        assert!(err.is_err());
    }
}
