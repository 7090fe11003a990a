//! `Idefics2Processor`: prompts and images of a request in, padded model inputs out.

use std::path::Path;

use image::DynamicImage;
use tracing::debug;

use super::chat::{ChatMessage, ChatTemplate};
use super::config::{ImageOptions, ProcessorConfig};
use super::image::{ImageProcessor, PixelBatch};
use super::prompt::{PromptProcessor, TokenBatch};
use super::{ProcessorError, Result};
use crate::model_files::ModelFiles;

/// Everything the model takes for one batch.
///
/// # Shapes
/// - `input_ids`, `attention_mask`: `[batch, seq]`, left-padded (see [`TokenBatch`]).
/// - `pixels`: `[batch, max_images, 3, H, W]` and its mask (see [`PixelBatch`]); `None` when
///   the batch has no images.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u8>>,
    pub pixels: Option<PixelBatch>,
}

/// Tokenizer, image processor and chat template of one model directory.
#[derive(Debug, Clone)]
pub struct Idefics2Processor {
    pub image_processor: ImageProcessor,
    pub prompt: PromptProcessor,
    pub chat_template: ChatTemplate,
}

impl Idefics2Processor {
    /// Reads `preprocessor_config.json`, `processor_config.json`, the tokenizer files and the
    /// chat template from `dir`. Absent files fall back to transformers' defaults, the bundled
    /// tokenizer and [`DEFAULT_CHAT_TEMPLATE`](super::DEFAULT_CHAT_TEMPLATE).
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_model_files(&ModelFiles::dir(dir.as_ref()))
    }

    /// [`from_model_dir`](Self::from_model_dir) for files on disk or in memory.
    pub fn from_model_files(model: &ModelFiles) -> Result<Self> {
        let config = ProcessorConfig::from_model_files(model)?;
        let image_processor = ImageProcessor::from_model_files(model)?;
        let prompt = PromptProcessor::from_model_files(model, config.image_seq_len)?;
        let chat_template = match config.chat_template {
            Some(source) => Some(ChatTemplate::new(source)),
            None => ChatTemplate::from_model_files(model)?,
        }
        .unwrap_or_default()
        .with_special_tokens(prompt.bos_token(), prompt.eos_token());
        debug!(model = ?model, image_seq_len = config.image_seq_len, "processor loaded");
        Ok(Self {
            image_processor,
            prompt,
            chat_template,
        })
    }

    /// Bundled tokenizer, default template, transformers' default image settings and
    /// `image_seq_len` 64.
    pub fn bundled() -> Result<Self> {
        Ok(Self {
            image_processor: ImageProcessor::default(),
            prompt: PromptProcessor::bundled(ProcessorConfig::default().image_seq_len)?,
            chat_template: ChatTemplate::default(),
        })
    }

    /// The chat as one prompt string (`tokenize=False` in transformers).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat_template.render(messages, add_generation_prompt)
    }

    /// Tokenizes `prompts` and preprocesses `images[i]`, the images of prompt `i` in the order of
    /// its `<image>` placeholders. `images` may be empty when no prompt has placeholders.
    ///
    /// Unlike transformers, whose prompt expansion reads the image processor's stored
    /// `do_image_splitting` even when a call overrides it, both sides use `options` here.
    ///
    /// # Shapes
    /// See [`ProcessedBatch`].
    pub fn process<S: AsRef<str>>(
        &self,
        prompts: &[S],
        images: &[Vec<DynamicImage>],
        options: &ImageOptions,
    ) -> Result<ProcessedBatch> {
        if prompts.is_empty() {
            return Err(ProcessorError::EmptyBatch);
        }
        options.validate()?;
        if !images.is_empty() && images.len() != prompts.len() {
            return Err(ProcessorError::BatchSize {
                prompts: prompts.len(),
                samples: images.len(),
            });
        }
        for (sample, prompt) in prompts.iter().enumerate() {
            let tokens = PromptProcessor::count_image_tokens(prompt.as_ref());
            let given = images.get(sample).map_or(0, Vec::len);
            if tokens != given {
                return Err(ProcessorError::ImageTokenCount {
                    sample,
                    tokens,
                    images: given,
                });
            }
        }
        let split = self
            .image_processor
            .config()
            .with_options(options)
            .do_image_splitting;
        let TokenBatch {
            input_ids,
            attention_mask,
        } = self.prompt.encode(prompts, split)?;
        let pixels = if images.iter().any(|s| !s.is_empty()) {
            Some(self.image_processor.preprocess(images, options)?)
        } else {
            None
        };
        Ok(ProcessedBatch {
            input_ids,
            attention_mask,
            pixels,
        })
    }

    /// [`Self::apply_chat_template`] with the generation prompt, then [`Self::process`], for a
    /// batch of chats.
    pub fn process_chats(
        &self,
        chats: &[Vec<ChatMessage>],
        images: &[Vec<DynamicImage>],
        options: &ImageOptions,
    ) -> Result<ProcessedBatch> {
        let prompts = chats
            .iter()
            .map(|chat| self.apply_chat_template(chat, true))
            .collect::<Result<Vec<_>>>()?;
        self.process(&prompts, images, options)
    }

    /// Text of generated `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.prompt.decode(ids, skip_special_tokens)
    }
}
