//! Idefics2 (SigLIP vision encoder, perceiver resampler, Mistral decoder) on burn: one engine for
//! the CPU (burn's Flex device) and any GPU through wgpu.

pub mod awq;
pub mod cancel;
pub mod config;
#[cfg(not(target_family = "wasm"))]
pub mod default_model;
pub mod device;
#[cfg(not(target_family = "wasm"))]
pub mod engine;
pub mod error;
pub mod generate;
pub mod kv_cache;
pub mod log_softmax;
pub mod model;
pub mod model_files;
pub mod pipeline;
pub mod pixels;
pub mod processor;
pub mod profile;
pub mod quant;
#[cfg(not(target_family = "wasm"))]
pub mod quant_save;
pub mod sampling;
pub mod synthetic;
pub mod weights;

pub use cancel::CancelHandle;
pub use config::{GenerationConfig, Idefics2Config};
pub use device::{DeviceChoice, GpuAdapter};
#[cfg(not(target_family = "wasm"))]
pub use device::{
    catch_panics, chosen_adapter, exit_on_panic, init_device, init_gpu_with_setup, panic_text,
    quiet_headless_wayland, resolve_auto,
};
pub use error::{Error, Result};
pub use generate::{FinishReason, GenerationOptions, GenerationOutput, TokenEvent};
pub use model::{CheckReport, Idefics2, ModelInput};
pub use model_files::ModelFiles;
pub use pixels::PixelBatch;
pub use sampling::{Sampling, SamplingOptions};
pub use weights::{LoadOptions, LoadProgress, ProgressFn};
