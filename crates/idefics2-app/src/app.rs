//! The window: settings on the right, the chat in the middle, the composer (thumbnails and text)
//! at the bottom, the status line under everything. All model work goes through the [`Worker`].

use std::sync::mpsc;

use burn::tensor::Device;
use idefics2::LoadProgress;
use web_time::Instant;

use crate::attachment::Attachment;
use crate::conversation::{Conversation, Role, Turn};
use crate::engine::{
    AnswerStats, Command, Event, GenerateRequest, LoadRequest, ModelInfo, ModelSource,
};
use crate::script::Script;
use crate::settings::{DeviceKind, Settings};
use crate::worker::Worker;

/// The GPU that the window and the model share.
#[derive(Clone)]
pub struct Gpu {
    pub device: Device,
    /// "adapter name (backend)".
    pub label: String,
    /// A CPU adapter (lavapipe, SwiftShader, WARP) rather than a GPU.
    pub software: bool,
}

impl Gpu {
    /// The GPU of `device`, brought up on `adapter`.
    pub fn new(device: Device, adapter: &burn::tensor::wgpu::wgpu::Adapter) -> Self {
        Self {
            device,
            label: crate::adapter_label(adapter),
            software: adapter.get_info().device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu,
        }
    }
}

/// What the app was started with.
pub struct Startup {
    pub gpu: Option<Gpu>,
    /// The device the model runs on; `None`: the GPU when it is a real one, else the CPU (a
    /// CPU adapter such as lavapipe is slower than the CPU device at the model's work).
    pub device: Option<DeviceKind>,
    /// The model opened first (the embedded demo model unless told otherwise).
    pub model: Option<ModelSource>,
    pub script: Option<Script>,
}

pub(crate) enum ModelState {
    None,
    Loading {
        label: String,
        stage: &'static str,
        done: LoadProgress,
    },
    Ready(ModelInfo),
}

/// An answer being written.
pub(crate) struct Pending {
    pub(crate) text: String,
    pub(crate) prompt_tokens: Option<usize>,
    pub(crate) started: Instant,
    /// What the user sent, given back to the composer if the answer fails.
    pub(crate) sent: Option<Turn>,
}

pub struct ChatApp {
    pub(crate) worker: Worker,
    pub(crate) gpu: Option<Gpu>,
    pub(crate) model: ModelState,
    /// The last model asked for: Reload loads it again with new settings.
    pub(crate) source: Option<ModelSource>,
    pub(crate) settings: Settings,
    pub(crate) chat: Conversation,
    pub(crate) composer_text: String,
    pub(crate) composer_images: Vec<Attachment>,
    pub(crate) pending: Option<Pending>,
    pub(crate) last_stats: Option<AnswerStats>,
    /// The last answer's token ids and log-probabilities.
    pub(crate) last_tokens: (Vec<u32>, Vec<f32>),
    pub(crate) errors: Vec<String>,
    /// The browser's "model URL" field.
    #[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
    pub(crate) url: String,
    pub(crate) script: Option<Script>,
    /// Files read asynchronously (browser drops and picks) come back here.
    #[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
    pub(crate) files_tx: mpsc::Sender<Incoming>,
    pub(crate) files_rx: mpsc::Receiver<Incoming>,
    pub(crate) pasted: usize,
}

/// Something read from the user's files.
pub enum Incoming {
    Image { name: String, bytes: Vec<u8> },
    Model(idefics2::ModelFiles),
    Error(String),
}

impl ChatApp {
    pub fn new(ctx: &egui::Context, startup: Startup) -> Self {
        let (files_tx, files_rx) = mpsc::channel();
        let mut app = Self {
            worker: Worker::start(ctx.clone()),
            gpu: startup.gpu,
            model: ModelState::None,
            source: None,
            settings: Settings::default(),
            chat: Conversation::default(),
            composer_text: String::new(),
            composer_images: Vec::new(),
            pending: None,
            last_stats: None,
            last_tokens: (Vec::new(), Vec::new()),
            errors: Vec::new(),
            url: String::new(),
            script: startup.script,
            files_tx,
            files_rx,
            pasted: 0,
        };
        app.settings.device = match (startup.device, &app.gpu) {
            (_, None) => DeviceKind::Cpu,
            (Some(device), _) => device,
            (None, Some(gpu)) if gpu.software => DeviceKind::Cpu,
            (None, Some(_)) => DeviceKind::Gpu,
        };
        if let Some(source) = startup.model {
            app.load(source);
        }
        app
    }

    pub(crate) fn busy(&self) -> bool {
        self.pending.is_some() || matches!(self.model, ModelState::Loading { .. })
    }

    pub fn load(&mut self, source: ModelSource) {
        if self.busy() {
            self.errors
                .push("wait for the current answer or load to finish".into());
            return;
        }
        let (device, device_label) = match (self.settings.device, &self.gpu) {
            (DeviceKind::Gpu, Some(gpu)) => (gpu.device.clone(), gpu.label.clone()),
            (DeviceKind::Gpu, None) => {
                self.errors
                    .push("no GPU adapter was found; choose the CPU device".into());
                return;
            }
            #[cfg(not(target_family = "wasm"))]
            (DeviceKind::Cpu, _) => (Device::flex(), "CPU (burn flex)".to_owned()),
            #[cfg(target_family = "wasm")]
            (DeviceKind::Cpu, _) => {
                self.errors
                    .push("the browser build runs on WebGPU only".into());
                return;
            }
        };
        self.model = ModelState::Loading {
            label: source.label(),
            stage: "starting",
            done: LoadProgress::default(),
        };
        self.source = Some(source.clone());
        self.worker.send(Command::Load(LoadRequest {
            source,
            device,
            device_label,
            precision: self.settings.precision,
            quant: self.settings.quant.policy(),
        }));
    }

    /// Sends the composer's text and images as a new user turn.
    pub fn send(&mut self) {
        let ModelState::Ready(info) = &self.model else {
            self.errors.push("no model is loaded yet".into());
            return;
        };
        if self.pending.is_some() {
            return;
        }
        let text = self.composer_text.trim().to_owned();
        if text.is_empty() && self.composer_images.is_empty() {
            return;
        }
        let max_context = info.max_context;
        let turn = Turn {
            role: Role::User,
            text,
            images: std::mem::take(&mut self.composer_images),
        };
        self.composer_text.clear();
        self.chat.turns.push(turn.clone());
        self.ask(Some(turn), max_context);
    }

    /// Answers the chat as it stands (it ends with a user turn).
    fn ask(&mut self, sent: Option<Turn>, max_context: usize) {
        let (messages, images) = self.chat.to_model();
        self.pending = Some(Pending {
            text: String::new(),
            prompt_tokens: None,
            started: Instant::now(),
            sent,
        });
        let max_new_tokens = self.settings.max_new_tokens.min(max_context);
        self.worker.send(Command::Generate(GenerateRequest {
            messages,
            images,
            image_options: self.settings.image_options(),
            max_new_tokens,
            sampling: self.settings.sampling(),
        }));
    }

    pub(crate) fn regenerate(&mut self) {
        let ModelState::Ready(info) = &self.model else {
            return;
        };
        let max_context = info.max_context;
        if !self.busy() && self.chat.drop_last_answer() {
            self.ask(None, max_context);
        }
    }

    pub fn add_image_bytes(&mut self, ctx: &egui::Context, name: &str, bytes: &[u8]) {
        match Attachment::from_bytes(ctx, name, bytes) {
            Ok(image) => self.composer_images.push(image),
            Err(e) => self.errors.push(format!("cannot open image {e}")),
        }
    }

    pub fn set_composer_text(&mut self, text: &str) {
        self.composer_text = text.to_owned();
    }

    /// The last answer, when the model has finished one.
    pub fn last_answer(&self) -> Option<&str> {
        if self.pending.is_some() {
            return None;
        }
        self.chat
            .turns
            .last()
            .filter(|t| t.role == Role::Assistant)
            .map(|t| t.text.as_str())
    }

    pub fn last_stats(&self) -> Option<AnswerStats> {
        self.last_stats
    }

    /// The last answer's generated token ids and their log-probabilities.
    pub fn last_tokens(&self) -> (&[u32], &[f32]) {
        (&self.last_tokens.0, &self.last_tokens.1)
    }

    pub fn model_ready(&self) -> bool {
        matches!(self.model, ModelState::Ready(_))
    }

    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    pub(crate) fn handle_events(&mut self, ctx: &egui::Context) {
        for event in self.worker.poll() {
            match event {
                Event::Progress { stage, done } => {
                    if let ModelState::Loading {
                        stage: s, done: d, ..
                    } = &mut self.model
                    {
                        (*s, *d) = (stage, done);
                    }
                }
                Event::Loaded(info) => {
                    self.settings.adopt_model(&info);
                    self.model = ModelState::Ready(info);
                }
                Event::LoadFailed(message) => {
                    self.model = ModelState::None;
                    self.errors.push(message);
                }
                Event::Prompt(tokens) => {
                    if let Some(p) = &mut self.pending {
                        p.prompt_tokens = Some(tokens);
                    }
                }
                Event::Token(piece) => {
                    if let Some(p) = &mut self.pending {
                        p.text.push_str(&piece);
                    }
                }
                Event::Finished {
                    text,
                    stats,
                    ids,
                    logprobs,
                } => {
                    self.pending = None;
                    self.last_stats = Some(stats);
                    self.last_tokens = (ids, logprobs);
                    self.chat.turns.push(Turn {
                        role: Role::Assistant,
                        text,
                        images: Vec::new(),
                    });
                }
                Event::Failed(message) => {
                    // Nothing is lost: the question goes back to the composer.
                    if let Some(Pending {
                        sent: Some(turn), ..
                    }) = self.pending.take()
                    {
                        if self.chat.turns.last().is_some_and(|t| t.role == Role::User) {
                            self.chat.turns.pop();
                        }
                        self.composer_text = turn.text;
                        let mut images = turn.images;
                        images.append(&mut self.composer_images);
                        self.composer_images = images;
                    }
                    self.pending = None;
                    self.errors.push(message);
                }
            }
        }
        while let Ok(incoming) = self.files_rx.try_recv() {
            match incoming {
                Incoming::Image { name, bytes } => {
                    match Attachment::from_bytes(ctx, &name, &bytes) {
                        Ok(image) => self.composer_images.push(image),
                        Err(e) => self.errors.push(format!("cannot open image {e}")),
                    }
                }
                Incoming::Model(files) => self.load(ModelSource::Files(files)),
                Incoming::Error(e) => self.errors.push(e),
            }
        }
    }
}
