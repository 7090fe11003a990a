//! A plain copy kernel: the memory-bandwidth yardstick of the benchmarks.

use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{
    CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::cubecl::prelude::{CubeCount, CubeDim, KernelId};
use burn::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn::tensor::{DType, Tensor};

/// Workgroups of the copy (enough to fill any GPU; the grid strides over the array).
const COPY_GRID: usize = 1024;

#[backend_extension(Cube, Fusion)]
pub trait CopyBackend: Backend {
    #[fusion(dtype = DType::F32, shape = x)]
    fn copy_f32(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

struct CopyKernel;

impl KernelSource for CopyKernel {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(include_str!("../../../shaders/copy.wgsl"))
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>()
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

impl CopyBackend for CubeBackend {
    fn copy_f32(x: CubeTensor) -> CubeTensor {
        let x = into_contiguous(x);
        assert_eq!(x.dtype, DType::F32, "copy_f32 takes f32");
        let n = x.meta.shape().num_elements();
        assert!(n.is_multiple_of(4), "copy_f32 copies whole vec4s");
        let client = x.client.clone();
        let out = CubeTensor::new_contiguous(
            client.clone(),
            x.device.clone(),
            x.meta.shape().clone(),
            client.empty(n * 4),
            DType::F32,
        );
        let n_vec4 = u32::try_from(n / 4).expect("copy size fits in u32");
        let arguments = KernelArguments::new()
            .with_buffers(vec![x.handle.binding(), out.handle.clone().binding()])
            .with_info(MetadataBindingInfo::custom(vec![
                u64::from(n_vec4) | ((COPY_GRID as u64) << 32),
            ]));
        client.launch(
            Box::new(SourceKernel::new(CopyKernel, CubeDim::new_1d(256))),
            CubeCount::Static(COPY_GRID as u32, 1, 1),
            arguments,
        );
        out
    }
}

/// `x` copied by the WGSL kernel (wgpu devices only; the length must be a multiple of 4).
pub fn copy_kernel<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::copy_f32(x.into_dispatch()))
}
