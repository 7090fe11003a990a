//! Picking the compute device: burn's CPU backend (Flex) or the default wgpu adapter
//! (Vulkan, Metal, DX12, or WebGPU in the browser).

use burn::tensor::{DType, Device};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Gpu,
}

/// Initialises the device. A missing GPU adapter is an error, never a silent CPU fallback.
#[cfg(not(target_family = "wasm"))]
pub fn init_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Gpu => Device::wgpu_options()
            .init()
            .map_err(|e| Error::Device(format!("no usable wgpu adapter: {e}"))),
    }
}

/// Browser and async callers.
pub async fn init_device_async(choice: DeviceChoice) -> Result<Device> {
    match choice {
        #[cfg(not(target_family = "wasm"))]
        DeviceChoice::Cpu => Ok(Device::flex()),
        #[cfg(target_family = "wasm")]
        DeviceChoice::Cpu => Err(Error::Device(
            "the browser build has no CPU device: use WebGPU".into(),
        )),
        DeviceChoice::Gpu => Device::wgpu_options()
            .init_async()
            .await
            .map_err(|e| Error::Device(format!("no usable wgpu adapter: {e}"))),
    }
}

/// f16 where the device supports it, else f32.
pub fn best_float(device: &Device) -> DType {
    if device.supports_dtype(DType::F16) {
        DType::F16
    } else {
        DType::F32
    }
}
