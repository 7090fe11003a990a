//! Picking the compute device: burn's CPU backend (Flex) or a wgpu adapter on a primary backend
//! (Vulkan, Metal, DX12, or WebGPU in the browser).

use burn::tensor::{DType, Device};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Gpu,
    /// A GPU adapter when there is one, else the CPU device: a CPU adapter such as lavapipe is
    /// slower than burn's CPU device at the same work (see [`resolve_auto`]).
    Auto,
}

/// The wgpu adapter a GPU device was brought up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuAdapter {
    /// The adapter's name (`llvmpipe (LLVM 15.0.6, 256 bits)` on lavapipe).
    pub name: String,
    /// `Vulkan`, `Metal`, `Dx12` or `BrowserWebGpu`.
    pub backend: String,
    /// A software rasterizer (lavapipe, WARP, SwiftShader) rather than a GPU.
    pub software: bool,
}

impl std::fmt::Display for GpuAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.name, self.backend)?;
        if self.software {
            write!(f, ", a CPU adapter")?;
        }
        Ok(())
    }
}

#[cfg(not(target_family = "wasm"))]
static PRIMARY: std::sync::OnceLock<std::result::Result<(usize, GpuAdapter), String>> =
    std::sync::OnceLock::new();

/// The adapter GPU devices of this process are brought up on, once [`init_device`] (or
/// [`init_gpu_with_setup`]) has looked for one.
#[cfg(not(target_family = "wasm"))]
pub fn chosen_adapter() -> Option<GpuAdapter> {
    PRIMARY
        .get()?
        .as_ref()
        .ok()
        .map(|(_, adapter)| adapter.clone())
}

/// What [`DeviceChoice::Auto`] stands for on this machine, and why, in words for a summary line:
/// `Gpu` when a primary backend has a hardware adapter, else `Cpu` (no adapter, or only a CPU
/// adapter: lavapipe decodes the tiny model at 13 tokens/s where the CPU device does 766).
#[cfg(not(target_family = "wasm"))]
pub fn resolve_auto() -> (DeviceChoice, String) {
    match primary_adapter() {
        Ok((_, adapter)) if !adapter.software => {
            (DeviceChoice::Gpu, format!("auto: the GPU {adapter}"))
        }
        Ok((_, adapter)) => (
            DeviceChoice::Cpu,
            format!("auto: the only adapter, {adapter}, runs on the CPU; the CPU device is faster"),
        ),
        Err(_) => (DeviceChoice::Cpu, "auto: no GPU adapter found".into()),
    }
}

/// Initialises the device. A missing GPU adapter is an error for [`DeviceChoice::Gpu`], never a
/// silent CPU fallback; [`DeviceChoice::Auto`] picks as [`resolve_auto`] says.
///
/// Only the primary backends are asked: wgpu's OpenGL adapter lacks operations burn's autotuned
/// kernels emit (`subgroupAdd`), and its failures panic on wgpu's own threads, so a machine whose
/// only adapter is OpenGL gets an error naming what to install instead.
#[cfg(not(target_family = "wasm"))]
pub fn init_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Auto => init_device(resolve_auto().0),
        DeviceChoice::Gpu => {
            // burn brings a runtime up once per process: later callers share the first device.
            static GPU: std::sync::Mutex<Option<Device>> = std::sync::Mutex::new(None);
            let mut gpu = GPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(device) = gpu.as_ref() {
                return Ok(device.clone());
            }
            let (device, _) = init_gpu_with_setup()?;
            *gpu = Some(device.clone());
            Ok(device)
        }
    }
}

/// [`init_device`] for [`DeviceChoice::Gpu`], also handing back wgpu's handles so that a window
/// (eframe) draws with the same device.
#[cfg(not(target_family = "wasm"))]
pub fn init_gpu_with_setup() -> Result<(Device, burn::tensor::wgpu::WgpuSetup)> {
    let (api, adapter) = primary_adapter()?;
    let (device, setup) = Device::wgpu_options()
        .graphics_api(api)
        .init_with_setup()
        .map_err(|e| Error::Device(format!("{adapter}: {e}")))?;
    Ok((device, setup))
}

/// The first primary backend with a hardware adapter, else the first with a software one
/// (lavapipe), as burn's own automatic choice does but without falling back to OpenGL. Asked once
/// per process (tests bring devices up on several threads, and the Vulkan loader crashes when
/// instances come and go on several threads at once).
#[cfg(not(target_family = "wasm"))]
fn primary_adapter() -> Result<(burn::tensor::wgpu::WgpuBackend, GpuAdapter)> {
    use burn::tensor::wgpu::WgpuBackend;
    let apis = [WgpuBackend::Vulkan, WgpuBackend::Metal, WgpuBackend::Dx12];
    match PRIMARY.get_or_init(probe_primary_backends) {
        Ok((index, adapter)) => Ok((apis[*index], adapter.clone())),
        Err(message) => Err(Error::Device(message.clone())),
    }
}

/// Index into (Vulkan, Metal, Dx12) and the adapter, for [`primary_adapter`].
#[cfg(not(target_family = "wasm"))]
fn probe_primary_backends() -> std::result::Result<(usize, GpuAdapter), String> {
    use burn::tensor::wgpu::wgpu;
    let candidates = [
        (wgpu::Backend::Vulkan, 0),
        (wgpu::Backend::Metal, 1),
        (wgpu::Backend::Dx12, 2),
    ];
    let mut software = None;
    for (backend, api) in candidates {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: backend.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = burn::cubecl::future::block_on(instance.enumerate_adapters(backend.into()));
        let describe = |info: wgpu::AdapterInfo| GpuAdapter {
            name: info.name,
            backend: format!("{:?}", info.backend),
            software: info.device_type == wgpu::DeviceType::Cpu,
        };
        let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(wgpu::Adapter::get_info).collect();
        if let Some(info) = infos
            .iter()
            .find(|i| i.device_type != wgpu::DeviceType::Cpu)
        {
            return Ok((api, describe(info.clone())));
        }
        if software.is_none()
            && let Some(info) = infos.into_iter().next()
        {
            software = Some((api, describe(info)));
        }
    }
    software.ok_or_else(|| no_adapter_message().to_string())
}

#[cfg(not(target_family = "wasm"))]
fn no_adapter_message() -> &'static str {
    if cfg!(target_os = "linux") {
        "no Vulkan adapter found: install a Vulkan driver (Debian/Ubuntu: `apt-get install \
         mesa-vulkan-drivers libvulkan1`, which also brings lavapipe, a CPU adapter), or use \
         --device cpu"
    } else if cfg!(target_os = "macos") {
        "no Metal adapter found; use --device cpu"
    } else if cfg!(target_os = "windows") {
        "no DX12 or Vulkan adapter found: update the graphics driver, or use --device cpu"
    } else {
        "no Vulkan, Metal or DX12 adapter found; use --device cpu"
    }
}

/// Keeps libwayland quiet on machines without a session (servers, CI): Mesa's Vulkan drivers load
/// it while wgpu looks for adapters, and with `XDG_RUNTIME_DIR` unset it prints "error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment." on stderr, though nothing of ours
/// draws. Points the variable at a private empty directory when it is unset; a no-op otherwise.
/// Call it first thing in `main`, before any thread starts.
#[cfg(all(not(target_family = "wasm"), target_os = "linux"))]
pub fn quiet_headless_wayland() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let dir = std::env::temp_dir().join(format!("idefics2-runtime-{user}"));
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let private =
        std::fs::metadata(&dir).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o077 == 0);
    if private {
        // SAFETY: called at the start of `main`, before any other thread exists, so nothing reads
        // the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("XDG_RUNTIME_DIR", &dir)
        };
    }
}

/// See the Linux version; nothing to do elsewhere.
#[cfg(all(not(target_family = "wasm"), not(target_os = "linux")))]
pub fn quiet_headless_wayland() {}

/// Browser and async callers.
pub async fn init_device_async(choice: DeviceChoice) -> Result<Device> {
    match choice {
        #[cfg(not(target_family = "wasm"))]
        DeviceChoice::Cpu => Ok(Device::flex()),
        #[cfg(target_family = "wasm")]
        DeviceChoice::Cpu => Err(Error::Device(
            "the browser build has no CPU device: use WebGPU".into(),
        )),
        DeviceChoice::Gpu | DeviceChoice::Auto => Device::wgpu_options()
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

#[cfg(not(target_family = "wasm"))]
thread_local! {
    static CATCHES_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes a panic on any thread (ours, wgpu's, burn's) end the process with exit code 101 after
/// its message is printed, except inside [`catch_panics`]. By default a panic on a background
/// thread ends only that thread, and a caller waiting on it (a GPU readback, a channel) can wait
/// for ever: a run must fail, not hang.
#[cfg(not(target_family = "wasm"))]
pub fn exit_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if !CATCHES_PANICS.with(std::cell::Cell::get) {
            std::process::exit(101);
        }
    }));
}

/// The message a panic carries (what `panic!` was given), for an error that reports it.
#[cfg(not(target_family = "wasm"))]
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown error".to_owned())
}

/// `catch_unwind` that [`exit_on_panic`] lets through: for a caller that turns a panic of the
/// model (burn reports a GPU out of memory or a lost device by panicking) into an error message.
#[cfg(not(target_family = "wasm"))]
pub fn catch_panics<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    let before = CATCHES_PANICS.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHES_PANICS.with(|c| c.set(before));
    result
}
