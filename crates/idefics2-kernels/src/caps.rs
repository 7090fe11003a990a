//! What the wgpu adapter behind a device offers the hand-written kernels, read from the cubecl
//! client's device properties (which cubecl fills from the adapter's limits and features).

use burn::backend::DispatchDevice;
use burn::cubecl::features::Plane;
use burn::cubecl::ir::{DeviceProperties, ElemType, FloatKind};
use burn::tensor::Device;

use crate::forced::Forced;

/// Limits and features of a wgpu device that the kernels care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgpuCaps {
    /// The adapter's name (`llvmpipe (LLVM 15.0.6, 256 bits)` on lavapipe).
    pub adapter: String,
    /// The runtime's name; raw WGSL kernels run only where it compiles WGSL (`wgpu<wgsl>`).
    pub runtime: &'static str,
    /// Largest buffer one binding can see: `min(max_storage_buffer_binding_size, max_buffer_size)`.
    pub max_binding_bytes: u64,
    /// `max_compute_workgroup_storage_size`.
    pub max_workgroup_storage_bytes: usize,
    /// `max_compute_invocations_per_workgroup`.
    pub max_workgroup_invocations: u32,
    /// The device has `shader-f16` (f16 usable in shaders and buffers).
    pub shader_f16: bool,
    /// cubecl exposes subgroup operations (never on CPU adapters such as lavapipe, nor in
    /// browsers today).
    pub subgroups: bool,
    /// The subgroup size the GEMV and the flash attention share their loads over on a CPU adapter
    /// (see [`cpu_subgroup_size`]); `None` elsewhere.
    pub cpu_subgroup_size: Option<u32>,
}

impl WgpuCaps {
    /// The capabilities of `device`, or `None` when it is not a wgpu device.
    pub fn of(device: &Device) -> Option<Self> {
        let DispatchDevice::Cube(cube @ burn::cubecl::Device::Wgpu(_)) = device.as_dispatch()
        else {
            return None;
        };
        let client = cube.client();
        let props = client.properties();
        Some(Self {
            adapter: props.identity.name.clone(),
            runtime: client.name(),
            max_binding_bytes: props.memory.max_page_size,
            max_workgroup_storage_bytes: props.hardware.max_shared_memory_size,
            max_workgroup_invocations: props.hardware.max_units_per_cube,
            shader_f16: props.supports_type(ElemType::Float(FloatKind::F16)),
            subgroups: props.features.plane.contains(Plane::Ops),
            cpu_subgroup_size: cpu_subgroup_size(props),
        })
    }

    /// Whether the quantized-matmul kernels can run here: the runtime takes WGSL text and the
    /// GEMM's 256-thread workgroup with 16 KiB of workgroup memory fits.
    pub fn runs_quant_kernels(&self) -> bool {
        kernels_fit(
            self.runtime,
            self.max_workgroup_invocations,
            self.max_workgroup_storage_bytes,
        )
    }

    /// [`runs_quant_kernels`](Self::runs_quant_kernels) of `device`'s adapter (false off
    /// wgpu), read without building the whole description: it is asked on every quantized
    /// matmul.
    pub fn device_runs_quant_kernels(device: &Device) -> bool {
        let DispatchDevice::Cube(cube @ burn::cubecl::Device::Wgpu(_)) = device.as_dispatch()
        else {
            return false;
        };
        let client = cube.client();
        let props = client.properties();
        kernels_fit(
            client.name(),
            props.hardware.max_units_per_cube,
            props.hardware.max_shared_memory_size,
        )
    }
}

/// Set when tests turn off the loads shared over subgroups.
static FORCED_PLAIN_LOADS: Forced = Forced::new();

/// Makes every lane load what it needs itself (`true`) where the kernels would share the loads
/// over a CPU adapter's subgroups (the GEMV's x, the flash attention's K and V), or back to the
/// automatic rule (`false`): lets tests on lavapipe cover the loads other adapters take.
#[doc(hidden)]
pub fn force_plain_loads(plain: bool) {
    FORCED_PLAIN_LOADS.set(plain.then_some(1));
}

/// The subgroup size the kernels share loads over on a CPU adapter (lavapipe: 8, the lanes of its
/// 256-bit vectors): `Some` when the adapter offers wgpu's `SUBGROUP` feature with one fixed size
/// (and [`force_plain_loads`] is off).
/// cubecl creates its wgpu device with every feature of the adapter (and marks subgroups usable
/// only on GPUs, for its own kernels), so the adapter's features are the device's. cubecl's
/// properties carry the sizes but not the feature: the adapter is looked up once per process by
/// name and sizes on a wgpu instance of our own (only for CPU adapters with a fixed size, never
/// in the browser).
pub(crate) fn cpu_subgroup_size(props: &DeviceProperties) -> Option<u32> {
    let name = props.identity.name.as_str();
    let (size_min, size_max) = (props.hardware.plane_size_min, props.hardware.plane_size_max);
    if !is_cpu_adapter(name) || size_min != size_max || size_min < 2 {
        return None;
    }
    if FORCED_PLAIN_LOADS.get().is_some() {
        return None;
    }
    static SEEN: std::sync::Mutex<Vec<(String, u32, bool)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, _, offers)) = seen.iter().find(|(n, s, _)| n == name && *s == size_min) {
        return offers.then_some(size_min);
    }
    let offers = adapter_offers_subgroups(name, size_min);
    seen.push((name.to_string(), size_min, offers));
    offers.then_some(size_min)
}

/// The entry-point parameter that names a thread's lane in its subgroup, for kernels that share
/// their loads over the subgroup (`shared`); nothing otherwise.
pub(crate) fn lane_builtin(shared: bool) -> &'static str {
    if shared {
        "    @builtin(subgroup_invocation_id) lane: u32,"
    } else {
        ""
    }
}

#[cfg(not(target_family = "wasm"))]
fn adapter_offers_subgroups(name: &str, size: u32) -> bool {
    use burn::backend::wgpu::wgpu;
    // Not Instance::default(): that also starts the GL backend, which complains without a display.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters =
        burn::cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    adapters.iter().any(|adapter| {
        let info = adapter.get_info();
        info.name == name
            && info.subgroup_min_size == size
            && info.subgroup_max_size == size
            && adapter.features().contains(wgpu::Features::SUBGROUP)
    })
}

#[cfg(target_family = "wasm")]
fn adapter_offers_subgroups(_name: &str, _size: u32) -> bool {
    false
}

/// Whether the adapter is a CPU implementation (lavapipe/llvmpipe, SwiftShader, WARP): a few
/// cores, so the kernels skip the extra parallelism (and passes) that GPUs need.
pub(crate) fn is_cpu_adapter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["llvmpipe", "lavapipe", "swiftshader", "basic render"]
        .iter()
        .any(|cpu| name.contains(cpu))
}

fn kernels_fit(runtime: &str, workgroup_invocations: u32, workgroup_storage_bytes: usize) -> bool {
    runtime.contains("wgsl") && workgroup_invocations >= 256 && workgroup_storage_bytes >= 16 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_adapters_are_recognized() {
        assert!(is_cpu_adapter("llvmpipe (LLVM 15.0.6, 256 bits)"));
        assert!(is_cpu_adapter("SwiftShader Device (Subzero)"));
        assert!(!is_cpu_adapter("NVIDIA H100 80GB HBM3"));
    }
}
