//! The browser side: the entry point called by `web/index.html`, file picking and dropping (all
//! reads are async there), and the `#result` element that a scripted session fills.

use std::sync::mpsc::Sender;

use burn::tensor::Device;
use eframe::egui_wgpu::{WgpuSetup, WgpuSetupExisting};
use wasm_bindgen::prelude::*;

use crate::app::Incoming;
use crate::engine::ModelSource;
use crate::script::Script;
use crate::settings::DeviceKind;
use crate::{ChatApp, Gpu, Startup};

/// The app as JavaScript sees it.
#[wasm_bindgen]
pub struct WebHandle {
    runner: eframe::WebRunner,
}

#[wasm_bindgen]
impl WebHandle {
    #[wasm_bindgen(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        console_error_panic_hook::set_once();
        Self {
            runner: eframe::WebRunner::new(),
        }
    }

    /// Starts the app on `canvas` with the model at `model_url` (a directory URL). With
    /// `image_url` and `question`, it runs one scripted turn and writes the answer to `#result`.
    pub async fn start(
        &self,
        canvas: web_sys::HtmlCanvasElement,
        model_url: String,
        image_url: Option<String>,
        question: Option<String>,
    ) -> Result<(), JsValue> {
        // One WebGPU device for burn and egui.
        let (device, setup) = Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| JsValue::from_str(&format!("WebGPU is not available: {e}")))?;
        let gpu = Gpu::new(device, &setup.adapter);
        let mut options = eframe::WebOptions::default();
        options.wgpu_options.wgpu_setup = WgpuSetup::Existing(WgpuSetupExisting {
            instance: setup.instance,
            adapter: setup.adapter,
            device: setup.device,
            queue: setup.queue,
        });
        let script = match (image_url, question) {
            (Some(url), Some(question)) => {
                let bytes = fetch_bytes(&url).await?;
                let name = url.rsplit('/').next().unwrap_or("image").to_owned();
                Some(Script::new(vec![(name, bytes)], question))
            }
            _ => None,
        };
        let startup = Startup {
            gpu: Some(gpu),
            // The browser build has no CPU device.
            device: Some(DeviceKind::Gpu),
            model: Some(ModelSource::Url(model_url)),
            script,
        };
        self.runner
            .start(
                canvas,
                options,
                Box::new(move |cc| Ok(Box::new(ChatApp::new(&cc.egui_ctx, startup)))),
            )
            .await
    }

    pub fn has_panicked(&self) -> bool {
        self.runner.has_panicked()
    }

    pub fn panic_message(&self) -> Option<String> {
        self.runner.panic_summary().map(|s| s.message())
    }
}

async fn fetch_bytes(url: &str) -> Result<Vec<u8>, JsValue> {
    use wasm_bindgen::JsCast;
    let window = web_sys::window().ok_or("no window")?;
    let response: web_sys::Response =
        wasm_bindgen_futures::JsFuture::from(window.fetch_with_str(url))
            .await?
            .dyn_into()?;
    if !response.ok() {
        return Err(JsValue::from_str(&format!(
            "{url}: HTTP {}",
            response.status()
        )));
    }
    let buffer = wasm_bindgen_futures::JsFuture::from(response.array_buffer()?).await?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// Puts a scripted session's report (JSON) into the page's `#result` element.
pub fn report(text: &str) {
    let element = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("result"));
    if let Some(element) = element {
        element.set_text_content(Some(text));
        let _ = element.set_attribute("data-done", "1");
    }
}

const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "gif", "bmp"];

pub fn pick_images(files: Sender<Incoming>, ctx: egui::Context) {
    wasm_bindgen_futures::spawn_local(async move {
        let picked = rfd::AsyncFileDialog::new()
            .add_filter("images", &IMAGE_EXTENSIONS)
            .pick_files()
            .await;
        for file in picked.unwrap_or_default() {
            let bytes = file.read().await;
            let _ = files.send(Incoming::Image {
                name: file.file_name(),
                bytes,
            });
        }
        ctx.request_repaint();
    });
}

/// The user picks every file of a model directory (the browser cannot open folders by path).
pub fn pick_model_files(files: Sender<Incoming>, ctx: egui::Context) {
    wasm_bindgen_futures::spawn_local(async move {
        let Some(picked) = rfd::AsyncFileDialog::new().pick_files().await else {
            return;
        };
        let mut read = Vec::with_capacity(picked.len());
        for file in picked {
            read.push((file.file_name(), file.read().await));
        }
        let _ = files.send(Incoming::Model(idefics2::ModelFiles::memory(
            "picked files",
            read,
        )));
        ctx.request_repaint();
    });
}

/// Dropped files: a model when they include `config.json` or safetensors, else images.
pub fn read_dropped(
    dropped: Vec<egui::DroppedFileHandle>,
    files: Sender<Incoming>,
    ctx: egui::Context,
) {
    wasm_bindgen_futures::spawn_local(async move {
        let name_of = |f: &egui::DroppedFileHandle| f.path().to_string_lossy().into_owned();
        let is_model = dropped.iter().any(|f| {
            let name = name_of(f);
            name.ends_with("config.json") || name.ends_with(".safetensors")
        });
        let mut model_files = Vec::new();
        for file in &dropped {
            let name = name_of(file);
            match file.bytes_async().await {
                Ok(bytes) if is_model => model_files.push((name, bytes)),
                Ok(bytes) => {
                    let _ = files.send(Incoming::Image { name, bytes });
                }
                Err(e) => {
                    let _ = files.send(Incoming::Error(format!("cannot read {name}: {e}")));
                }
            }
        }
        if is_model {
            let model = idefics2::ModelFiles::memory("dropped files", model_files);
            let _ = files.send(Incoming::Model(model));
        }
        ctx.request_repaint();
    });
}
