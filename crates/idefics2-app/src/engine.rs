//! The model side of the app: loads a model and answers chats, reporting through [`Event`]s. It
//! never touches the UI; [`crate::worker`] runs it off the UI thread (a thread natively, async
//! tasks in the browser, where every GPU read is async).

use std::ops::ControlFlow;

use burn::tensor::{DType, Device};
use idefics2::pipeline::{Pipeline, Prompt, Request};
use idefics2::processor::{ChatMessage, DynamicImage, ImageOptions, IncrementalDecoder};
use idefics2::quant::QuantPolicy;
use idefics2::{LoadOptions, LoadProgress, ModelFiles, SamplingOptions};
use web_time::Instant;

/// Which model to load.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A folder on disk (native).
    Dir(std::path::PathBuf),
    /// Files already in memory (picked or dropped in the browser).
    Files(ModelFiles),
    /// A hosted model directory (browser): its files are downloaded once, then kept in the
    /// browser's Cache API.
    Url(String),
}

impl ModelSource {
    pub fn label(&self) -> String {
        match self {
            Self::Dir(dir) => ModelFiles::dir(dir).label(),
            Self::Files(files) => files.label(),
            Self::Url(url) => url.clone(),
        }
    }
}

/// Precision of the float weights (and of activations on a GPU; on the CPU, f16 and bf16 keep
/// the linear weights in 16 bits and compute in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    /// The CPU only: WGSL has no bf16.
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub source: ModelSource,
    pub device: Device,
    pub device_label: String,
    pub precision: Precision,
    pub quant: QuantPolicy,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub messages: Vec<ChatMessage>,
    /// Every image of the chat, in placeholder order.
    pub images: Vec<DynamicImage>,
    pub image_options: ImageOptions,
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
}

pub enum Command {
    Load(LoadRequest),
    Generate(GenerateRequest),
}

/// What a loaded model is, for the status line and the settings.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub label: String,
    pub device_label: String,
    pub precision: Precision,
    pub quant: String,
    pub weight_bytes: usize,
    /// Key and value cache bytes per token of context (all layers).
    pub kv_bytes_per_token: usize,
    pub image_seq_len: usize,
    /// The processor's default longest edge and splitting.
    pub longest_edge: u32,
    pub do_image_splitting: bool,
    pub max_context: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub time_to_first_token: f64,
    pub tokens_per_second: f64,
    pub cancelled: bool,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// Downloading (browser) or uploading tensors.
    Progress {
        stage: &'static str,
        done: LoadProgress,
    },
    Loaded(ModelInfo),
    LoadFailed(String),
    /// The prompt was prepared: its length in tokens.
    Prompt(usize),
    Token(String),
    Finished {
        text: String,
        stats: AnswerStats,
        /// The generated token ids and their log-probabilities (the test reports compare them
        /// with the library's on the CPU).
        ids: Vec<u32>,
        logprobs: Vec<f32>,
    },
    Failed(String),
}

/// Shared between the UI and the engine: set by Stop / Cancel, read between tokens and tensors.
pub use idefics2::CancelHandle as CancelFlag;

/// Holds the loaded pipeline.
#[derive(Default)]
pub struct Engine {
    pipeline: Option<Pipeline>,
}

impl Engine {
    pub async fn run(&mut self, command: Command, cancel: &CancelFlag, emit: &dyn Fn(Event)) {
        match command {
            Command::Load(request) => match self.load(request, cancel, emit).await {
                Ok(info) => emit(Event::Loaded(info)),
                Err(message) => emit(Event::LoadFailed(message)),
            },
            Command::Generate(request) => match self.generate(request, cancel, emit).await {
                Ok(finished) => emit(finished),
                Err(message) => emit(Event::Failed(message)),
            },
        }
    }

    async fn load(
        &mut self,
        request: LoadRequest,
        cancel: &CancelFlag,
        emit: &dyn Fn(Event),
    ) -> Result<ModelInfo, String> {
        let label = request.source.label();
        let files = match request.source {
            ModelSource::Dir(dir) => ModelFiles::dir(dir),
            ModelSource::Files(files) => files,
            ModelSource::Url(url) => crate::download::model_files(&url, cancel, emit).await?,
        };
        // The old model's memory goes before the new one is uploaded.
        self.pipeline = None;
        let progress = Box::new(|done: LoadProgress| {
            emit(Event::Progress {
                stage: "uploading",
                done,
            });
            if cancel.is_cancelled() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let options = LoadOptions {
            dtype: request.precision.dtype(),
            quant: request.quant,
            progress: Some(progress),
        };
        let pipeline = Pipeline::load_model_files(&files, &request.device, options)
            .map_err(|e| format!("cannot load {label}: {e}"))?;
        let image = pipeline.processor.image_processor.config();
        let text = &pipeline.model.config.text_config;
        let kv_bytes_per_token = 2
            * text.num_hidden_layers
            * text.num_key_value_heads()
            * text.head_dim()
            * pipeline.model.dtype().size();
        let info = ModelInfo {
            label,
            device_label: request.device_label,
            precision: request.precision,
            quant: request.quant.label(),
            weight_bytes: pipeline.model.weight_bytes,
            kv_bytes_per_token,
            image_seq_len: pipeline.model.image_seq_len(),
            longest_edge: image.size.longest_edge,
            do_image_splitting: image.do_image_splitting,
            max_context: pipeline.model.config.text_config.max_position_embeddings,
        };
        self.pipeline = Some(pipeline);
        Ok(info)
    }

    async fn generate(
        &mut self,
        request: GenerateRequest,
        cancel: &CancelFlag,
        emit: &dyn Fn(Event),
    ) -> Result<Event, String> {
        let pipeline = self.pipeline.as_ref().ok_or("no model is loaded")?;
        let chat = Request {
            prompt: Prompt::Chat(request.messages),
            images: request.images,
        };
        let input = pipeline
            .prepare(&[chat], &request.image_options)
            .map_err(|e| e.to_string())?;
        emit(Event::Prompt(input.seq));
        let mut options = pipeline.generation_options(request.max_new_tokens);
        options.sampling = request.sampling;
        let mut decoder = IncrementalDecoder::new(true);
        let start = Instant::now();
        let output = pipeline
            .model
            .generate_async(&input, &options, |event| {
                if let Ok(Some(text)) = decoder.step(&pipeline.processor.prompt, event.token) {
                    emit(Event::Token(text));
                }
                if cancel.is_cancelled() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(Some(rest)) = decoder.finish(&pipeline.processor.prompt) {
            emit(Event::Token(rest));
        }
        let text = pipeline
            .decode(&output.tokens[0])
            .map_err(|e| e.to_string())?;
        let new_tokens = output.tokens[0].len();
        let decode_tokens = new_tokens.saturating_sub(1);
        let stats = AnswerStats {
            prompt_tokens: output.prompt_tokens[0],
            new_tokens,
            time_to_first_token: output.prefill_seconds,
            tokens_per_second: if output.decode_seconds > 0.0 {
                decode_tokens as f64 / output.decode_seconds
            } else {
                new_tokens as f64 / start.elapsed().as_secs_f64().max(1e-9)
            },
            cancelled: output.finish[0] == idefics2::FinishReason::Cancelled,
        };
        Ok(Event::Finished {
            text: text.trim().to_owned(),
            stats,
            ids: output.tokens[0].clone(),
            logprobs: output.logprobs[0].clone(),
        })
    }
}
