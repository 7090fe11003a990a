//! The library's one error type. Data is validated where it enters (loader, processor, merge),
//! so `forward` passes can stay infallible.

use std::path::PathBuf;

/// A tensor the checkpoint has with a shape the config does not expect.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{name}` has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("the checkpoint does not match the config:{}", describe_mismatch(.missing, .unexpected, .mismatched))]
    Weights {
        missing: Vec<String>,
        unexpected: Vec<String>,
        mismatched: Vec<ShapeMismatch>,
    },
    #[error(
        "{tokens} `<image>` tokens in the prompt but {features} image features ({images} images x {per_image} tokens)"
    )]
    ImageTokenCount {
        tokens: usize,
        features: usize,
        images: usize,
        per_image: usize,
    },
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    InputShape {
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{tokens} tokens exceed the limit of {limit} ({what})")]
    TooManyTokens {
        tokens: usize,
        limit: usize,
        what: String,
    },
    #[error("invalid generation option: {0}")]
    GenerationOption(String),
    #[error("device error: {0}")]
    Device(String),
    #[error("default model: {0}")]
    DefaultModel(String),
    #[error("quantization: {0}")]
    QuantConfig(String),
    #[error("cannot quantize `{name}`: {message}")]
    Quant { name: String, message: String },
    #[error("loading was cancelled")]
    Cancelled,
    #[error("synthetic model: {0}")]
    Synthetic(String),
    #[error(transparent)]
    Processor(#[from] crate::processor::ProcessorError),
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    mismatched: &[ShapeMismatch],
) -> String {
    let mut out = String::new();
    for name in missing {
        out.push_str(&format!("\n  missing tensor `{name}`"));
    }
    for name in unexpected {
        out.push_str(&format!("\n  unexpected tensor `{name}`"));
    }
    for m in mismatched {
        out.push_str(&format!(
            "\n  tensor `{}`: expected shape {:?}, found {:?}",
            m.name, m.expected, m.found
        ));
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
