//! Processor and model together: requests (raw prompts or chats, with images) in, a batched
//! [`ModelInput`] out, and generated ids back to text. What every front end shares.

use std::path::Path;

use burn::tensor::{DType, Device};
use image::DynamicImage;

use crate::config::GenerationConfig;
use crate::error::{Error, Result};
use crate::generate::GenerationOptions;
use crate::model::{Idefics2, ModelInput};
use crate::model_files::ModelFiles;
use crate::processor::{ChatMessage, Idefics2Processor, ImageOptions, ProcessedBatch};
use crate::quant::QuantPolicy;
use crate::weights::LoadOptions;

/// What the user asks: a raw prompt with `<image>` placeholders, or a chat rendered through the
/// model's template with the generation prompt.
#[derive(Debug, Clone)]
pub enum Prompt {
    Raw(String),
    Chat(Vec<ChatMessage>),
}

/// One prompt and its images, in placeholder order.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub images: Vec<DynamicImage>,
}

pub struct Pipeline {
    pub processor: Idefics2Processor,
    pub model: Idefics2,
    pub generation: GenerationConfig,
}

impl Pipeline {
    /// Loads a hub model directory: config, weights, processor files, generation config.
    pub fn load(model_dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_quantized(model_dir, device, dtype, QuantPolicy::NONE)
    }

    /// [`load`](Self::load) with linear layers quantized as `quant` says (see
    /// [`Idefics2::load_quantized`]).
    pub fn load_quantized(
        model_dir: &Path,
        device: &Device,
        dtype: DType,
        quant: QuantPolicy,
    ) -> Result<Self> {
        let options = LoadOptions::new(dtype, quant);
        Self::load_model_files(&ModelFiles::dir(model_dir), device, options)
    }

    /// [`load_quantized`](Self::load_quantized) for model files on disk or in memory (the
    /// browser); `progress` sees each tensor as it is uploaded and can cancel.
    pub fn load_model_files(
        model: &ModelFiles,
        device: &Device,
        options: LoadOptions<'_>,
    ) -> Result<Self> {
        let processor = Idefics2Processor::from_model_files(model)?;
        let generation = GenerationConfig::from_model_files(model)?;
        let model_weights = Idefics2::load_model_files(model, device, options)?;
        let pipeline = Self {
            processor,
            model: model_weights,
            generation,
        };
        pipeline.check_image_seq_len(model)?;
        Ok(pipeline)
    }

    fn check_image_seq_len(&self, files: &ModelFiles) -> Result<()> {
        let (processor, model) = (
            self.processor.prompt.image_seq_len(),
            self.model.image_seq_len(),
        );
        if processor != model {
            return Err(Error::Config {
                path: files.path("processor_config.json"),
                message: format!(
                    "image_seq_len {processor} differs from the perceiver's {model} latents"
                ),
            });
        }
        Ok(())
    }

    /// Generation defaults from `generation_config.json`.
    pub fn generation_options(&self, max_new_tokens: usize) -> GenerationOptions {
        GenerationOptions::from_generation_config(&self.generation, max_new_tokens)
    }

    /// Renders chats, tokenizes, preprocesses images: one left-padded batch.
    pub fn prepare(&self, requests: &[Request], options: &ImageOptions) -> Result<ModelInput> {
        prepare(&self.processor, requests.to_vec(), options)
    }

    /// Text of generated ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(self.processor.decode(ids, true)?)
    }
}

/// [`Pipeline::prepare`] with a processor alone (the model may live elsewhere, as in the serving
/// engine), taking the requests so that their images are not copied.
pub fn prepare(
    processor: &Idefics2Processor,
    requests: Vec<Request>,
    options: &ImageOptions,
) -> Result<ModelInput> {
    let mut prompts = Vec::with_capacity(requests.len());
    let mut images = Vec::with_capacity(requests.len());
    for request in requests {
        prompts.push(match request.prompt {
            Prompt::Raw(text) => text,
            Prompt::Chat(messages) => processor.apply_chat_template(&messages, true)?,
        });
        images.push(request.images);
    }
    let batch = processor.process(&prompts, &images, options)?;
    Ok(model_input(batch))
}

/// Flattens the processor's rows into the model's `[batch, seq]` input.
pub fn model_input(batch: ProcessedBatch) -> ModelInput {
    let rows = batch.input_ids.len();
    let seq = batch.input_ids.first().map_or(0, Vec::len);
    ModelInput {
        input_ids: batch.input_ids.into_iter().flatten().collect(),
        attention_mask: batch.attention_mask.into_iter().flatten().collect(),
        batch: rows,
        seq,
        pixels: batch.pixels,
    }
}
