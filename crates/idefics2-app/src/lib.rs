//! The Idefics2 chat app: one eframe GUI for the desktop (`idefics2-app`, Vulkan/Metal/DX12) and
//! the browser (this crate as a wasm module, WebGPU; see `web/`). The window and the model share
//! one wgpu device.

pub mod app;
pub mod attachment;
pub mod conversation;
pub mod download;
pub mod engine;
pub mod script;
pub mod settings;
pub mod view;
#[cfg(target_family = "wasm")]
pub mod web;
pub mod worker;

pub use app::{ChatApp, Gpu, Startup};

/// "adapter name (backend)" for the status line.
pub fn adapter_label(adapter: &burn::tensor::wgpu::wgpu::Adapter) -> String {
    let info = adapter.get_info();
    // Browsers do not name their adapter; say at least whether it is a software one.
    let name = match (info.name.trim(), info.device_type) {
        ("", burn::tensor::wgpu::wgpu::DeviceType::Cpu) => "software adapter",
        ("", _) => "GPU adapter",
        (name, _) => name,
    };
    format!("{name} ({:?})", info.backend)
}
