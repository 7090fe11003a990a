//! What the wgpu adapter behind a device offers the hand-written kernels, read from the cubecl
//! client's device properties (which cubecl fills from the adapter's limits and features).

use burn::backend::DispatchDevice;
use burn::cubecl::features::Plane;
use burn::cubecl::ir::{ElemType, FloatKind};
use burn::tensor::Device;

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
    /// browsers today). The kernels here do not use them.
    pub subgroups: bool,
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
