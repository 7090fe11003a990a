//! The float GEMV as a burn backend extension: dispatch for the cubecl backend (wgpu), lazy
//! registration under Fusion, and the launcher.

use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, SourceKernel, into_contiguous};
use burn::backend::{Backend, backend_extension};
use burn::cubecl::prelude::{CubeCount, CubeDim};
use burn::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn::tensor::{DType, Shape};

use super::source::{FloatGemv, QUADS_PER_THREAD, WORKGROUP};
use crate::caps::cpu_subgroup_size;
use crate::info_words::pack_words;
use crate::quant_matmul::GEMV_MAX_ROWS;
use crate::weight::{BLOCK_COLS, padded_n_out};

/// Largest workgroup count along one grid dimension (WebGPU's default limit).
const MAX_GRID_DIM: usize = 65_535;

/// `x [m, k_in] (f32) @ w^T -> [m, n_out] (f32)`, `w` an f32 `[n_out, k_in]` weight in the
/// kernel's layout: `[n_pad / 128 * k_in, 128]` (see [`crate::BlockedFloatWeight`]).
#[backend_extension(Cube, Fusion)]
pub trait FloatGemvBackend: Backend {
    #[fusion(dtype = DType::F32, shape = Shape::new([x[0], *n_out]))]
    fn float_gemv(x: FloatTensor<Self>, w: FloatTensor<Self>, n_out: usize) -> FloatTensor<Self>;
}

impl FloatGemvBackend for CubeBackend {
    fn float_gemv(x: CubeTensor, w: CubeTensor, n_out: usize) -> CubeTensor {
        let x = into_contiguous(x);
        let w = into_contiguous(w);
        let [m, k_in] = x
            .meta
            .shape()
            .as_slice()
            .try_into()
            .expect("x must be [m, k_in]");
        let n_pad = padded_n_out(n_out);
        assert_eq!(x.dtype, DType::F32, "x must be f32");
        assert_eq!(w.dtype, DType::F32, "the weight must be f32");
        assert_eq!(
            w.meta.shape().as_slice(),
            [n_pad / BLOCK_COLS * k_in, BLOCK_COLS],
            "the weight must be [n_pad / 128 * k_in, 128] (transposed in column blocks, padded)"
        );
        let client = x.client.clone();
        let out = CubeTensor::new_contiguous(
            client.clone(),
            x.device.clone(),
            Shape::new([m, n_out]),
            client.empty(m * n_out * DType::F32.size()),
            DType::F32,
        );
        assert!(k_in > 0, "a float GEMV needs at least one input feature");
        if m == 0 {
            return out; // no rows: nothing to launch
        }
        let rows = m.min(GEMV_MAX_ROWS);
        let grid_x = n_pad.div_ceil(WORKGROUP * 4 * QUADS_PER_THREAD);
        let row_blocks = m.div_ceil(rows);
        assert!(
            grid_x <= MAX_GRID_DIM && row_blocks <= MAX_GRID_DIM,
            "float GEMV too large: [{m}, {n_out}]"
        );
        let lanes = cpu_subgroup_size(client.properties())
            .map(|lanes| lanes as usize)
            .filter(|lanes| WORKGROUP.is_multiple_of(*lanes));
        let kernel = FloatGemv {
            rows,
            x_vec4: k_in.is_multiple_of(4),
            subgroup_x: lanes,
        };
        let params = [m, n_out, k_in, n_pad]
            .map(|v| u32::try_from(v).expect("matmul dimensions fit in u32"));
        let arguments = KernelArguments::new()
            .with_buffers(vec![
                x.handle.binding(),
                w.handle.binding(),
                out.handle.clone().binding(),
            ])
            .with_info(MetadataBindingInfo::custom(pack_words(&params)));
        client.launch(
            Box::new(SourceKernel::new(kernel, CubeDim::new_1d(WORKGROUP as u32))),
            CubeCount::Static(grid_x as u32, 1, row_blocks as u32),
            arguments,
        );
        out
    }
}
