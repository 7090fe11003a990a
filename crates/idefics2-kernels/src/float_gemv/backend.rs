//! The float GEMV as a burn backend extension: dispatch for the cubecl backend (wgpu), lazy
//! registration under Fusion, and the launcher.

use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, SourceKernel, into_contiguous};
use burn::backend::{Backend, backend_extension};
use burn::cubecl::prelude::{CubeCount, CubeDim};
use burn::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn::tensor::{DType, Shape};

use super::source::{FloatGemv, WORKGROUP};
use crate::caps::cpu_subgroup_size;
use crate::forced::Forced;
use crate::info_words::pack_words;
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
        assert!(k_in > 0, "a float GEMV needs at least one input feature");
        let client = x.client.clone();
        let out = CubeTensor::new_contiguous(
            client.clone(),
            x.device.clone(),
            Shape::new([m, n_out]),
            client.empty(m * n_out * DType::F32.size()),
            DType::F32,
        );
        if m == 0 {
            return out; // no rows: nothing to launch
        }
        let (rows, quads) = match FORCED_SHAPE.get() {
            Some(shape) => (m.min(shape / 100), shape % 100),
            None => thread_shape(m),
        };
        let grid_x = n_pad.div_ceil(WORKGROUP * 4 * quads);
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
            quads,
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

/// The rows and column quads one thread holds for `m` rows of x. Each weight load serves every
/// row of the block, and llvmpipe's loads cost far more than its multiply-adds, so large blocks
/// win: [256, 1152] x [1152, 4304]^T on lavapipe took 884 ms with 8 rows of 4 quads, 461 with 16
/// of 2, 312 with 32 of 2, 239 with 64 of 2 (burn's matmul 1420); 128 rows took longer to compile
/// (over a minute) and ran no faster. Blocks of more than 8 rows come in three sizes (fewer
/// kernels to compile). One row (decoding) runs fastest with one quad (19.0 ms against 20.5 with
/// 2 and 24.5 with 4 on [1, 1152] x [1152, 4304]^T).
fn thread_shape(m: usize) -> (usize, usize) {
    match m {
        0..=1 => (1, 1),
        2..=8 => (m, 2),
        _ => (m.next_power_of_two().min(MAX_ROWS), 2),
    }
}

/// The largest block of rows one thread holds.
const MAX_ROWS: usize = 64;

/// Rows and quads per thread forced (`100 rows + quads`), for measurements.
static FORCED_SHAPE: Forced = Forced::new();

/// Forces the rows and column quads each float GEMV thread holds, or back to the defaults with
/// `None` (for measurements: `quant_matmul_speed` reads `IDEFICS2_FLOAT_GEMV=rows,quads`).
#[doc(hidden)]
pub fn force_float_gemv_shape(shape: Option<(usize, usize)>) {
    FORCED_SHAPE.set(shape.map(|(rows, quads)| 100 * rows + quads));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_rows_come_in_few_sizes() {
        assert_eq!(thread_shape(1), (1, 1));
        assert_eq!(thread_shape(5), (5, 2));
        assert_eq!(thread_shape(9), (16, 2));
        assert_eq!(thread_shape(33), (64, 2));
        assert_eq!(thread_shape(1000), (64, 2));
    }
}
