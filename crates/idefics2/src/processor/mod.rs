//! Idefics2 processor: image files and text in, model inputs out.
//!
//! Mirrors `Idefics2Processor` and `Idefics2ImageProcessor` of transformers 4.54.1 with Pillow
//! (<https://github.com/huggingface/transformers/blob/v4.54.1/src/transformers/models/idefics2/processing_idefics2.py>,
//! `image_processing_idefics2.py` beside it). Everything stays on the host: pixels come back as
//! `Vec<f32>` / `Vec<u8>` with their dims, token ids as `Vec<Vec<u32>>`.
//!
//! - [`image`]: decode, RGB conversion, split, resize, rescale, normalize, pad ([`ImageProcessor`]).
//! - [`resize`]: Pillow's antialiased resampling, bit for bit in 8-bit mode.
//! - `jpeg`: JPEG decoding with libjpeg-turbo's arithmetic (Pillow's decoder), bit for bit.
//! - [`prompt`]: `<image>` expansion, tokenization, left padding, decoding ([`PromptProcessor`]).
//! - [`stream`]: token-by-token text for streaming ([`IncrementalDecoder`]).
//! - [`chat`]: the chat template ([`ChatTemplate`]).
//! - [`inputs`]: all of it together ([`Idefics2Processor`]).

pub mod chat;
pub mod config;
pub mod image;
pub mod inputs;
mod jpeg;
pub mod prompt;
pub mod resize;
pub mod stream;

use std::path::PathBuf;

/// Decoded images as the processor takes them.
pub use ::image::DynamicImage;
pub use chat::{ChatMessage, ChatTemplate, ContentPart, DEFAULT_CHAT_TEMPLATE};
pub use config::{ImageOptions, ImageProcessorConfig, ImageSize, ProcessorConfig};
pub use image::{
    AlphaMode, ImageProcessor, PixelBatch, decode_image_bytes, load_image, load_image_bytes,
    load_image_bytes_within, to_rgb8,
};
pub use inputs::{Idefics2Processor, ProcessedBatch};
pub use prompt::{PromptProcessor, TokenBatch};
pub use resize::Resample;
pub use stream::IncrementalDecoder;

/// Everything that can go wrong between files on disk and model inputs.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decode image {origin}: {source}")]
    DecodeImage {
        /// The file path, or `<bytes>` for in-memory input.
        origin: String,
        source: ::image::ImageError,
    },
    #[error("image {width}x{height} is too small to split into 4 sub-images (needs at least 2x2)")]
    ImageTooSmallToSplit { width: u32, height: u32 },
    #[error("image {width}x{height} has an empty side")]
    EmptyImage { width: u32, height: u32 },
    #[error("invalid JSON in {path}: {source}")]
    ParseConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid `{field}`: {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },
    #[error("prompt {sample} has {tokens} `<image>` placeholders but {images} images were given")]
    ImageTokenCount {
        sample: usize,
        tokens: usize,
        images: usize,
    },
    #[error("{prompts} prompts but image lists for {samples} samples")]
    BatchSize { prompts: usize, samples: usize },
    #[error("the batch is empty")]
    EmptyBatch,
    #[error("{option} {value} is out of range: {expected}")]
    ImageOption {
        option: &'static str,
        value: u32,
        expected: String,
    },
    #[error("tokenizer {origin}: {source}")]
    Tokenizer {
        /// The tokenizer file, or `<bundled>`.
        origin: String,
        source: tokenizers::Error,
    },
    #[error("token `{token}` is not in the tokenizer's vocabulary")]
    MissingToken { token: String },
    #[error("chat template: {source}")]
    ChatTemplate { source: minijinja::Error },
}

pub type Result<T> = std::result::Result<T, ProcessorError>;
