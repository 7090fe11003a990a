//! The quantized matmul as a burn backend extension: dispatch for the cubecl backend (wgpu),
//! lazy registration under Fusion, and the launcher that checks its inputs, picks the GEMV or the
//! GEMM, fills the template and dispatches.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, SourceKernel, into_contiguous};
use burn::backend::{Backend, backend_extension};
use burn::cubecl::CubeKernel;
use burn::cubecl::prelude::{CubeCount, CubeDim};
use burn::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn::tensor::{DType, Shape};

use super::source::{GEMM_TILE, GEMV_COLS, GEMV_MAX_ROWS, GEMV_WORKGROUP, QuantGemm, QuantGemv};
use crate::format::QuantFormat;

/// Largest workgroup count along one grid dimension (WebGPU's default limit).
const MAX_GRID_DIM: usize = 65_535;

/// `x [m, k_in] (f32) @ dequantize(w)^T -> [m, n_out] (f32)`, w given as packed words
/// `[n_out, words_per_row]` (u32 bit patterns in a 32-bit int tensor), scales
/// `[n_out, groups_per_row]` and, for Q4, zero points `[n_out, groups_per_row]`.
#[backend_extension(Cube, Fusion)]
pub trait QuantMatmulBackend: Backend {
    #[fusion(dtype = DType::F32, shape = Shape::new([x[0], *n_out]))]
    fn quant_matmul_q8(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: FloatTensor<Self>,
        n_out: usize,
        k_in: usize,
        group: usize,
    ) -> FloatTensor<Self>;

    #[fusion(dtype = DType::F32, shape = Shape::new([x[0], *n_out]))]
    #[allow(clippy::too_many_arguments)]
    fn quant_matmul_q4(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: FloatTensor<Self>,
        zeros: FloatTensor<Self>,
        n_out: usize,
        k_in: usize,
        group: usize,
    ) -> FloatTensor<Self>;
}

impl QuantMatmulBackend for CubeBackend {
    fn quant_matmul_q8(
        x: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        n_out: usize,
        k_in: usize,
        group: usize,
    ) -> CubeTensor {
        launch(
            QuantFormat::Q8 { group },
            x,
            words,
            scales,
            None,
            n_out,
            k_in,
        )
    }

    fn quant_matmul_q4(
        x: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        zeros: CubeTensor,
        n_out: usize,
        k_in: usize,
        group: usize,
    ) -> CubeTensor {
        launch(
            QuantFormat::Q4 { group },
            x,
            words,
            scales,
            Some(zeros),
            n_out,
            k_in,
        )
    }
}

/// Checks shapes and dtypes, makes the inputs contiguous and dispatches the GEMV (1 to
/// [`GEMV_MAX_ROWS`] rows) or the GEMM (more rows; no rows is an empty grid, which cubecl skips).
fn launch(
    format: QuantFormat,
    x: CubeTensor,
    words: CubeTensor,
    scales: CubeTensor,
    zeros: Option<CubeTensor>,
    n_out: usize,
    k_in: usize,
) -> CubeTensor {
    let x = into_contiguous(x);
    let words = into_contiguous(words);
    let scales = into_contiguous(scales);
    let zeros = zeros.map(into_contiguous);
    let m = x.meta.shape()[0];
    let groups = format.groups_per_row(k_in);
    let words_per_row = format.words_per_row(k_in);
    assert_eq!(x.meta.shape().as_slice(), [m, k_in], "x must be [m, k_in]");
    assert_eq!(x.dtype, DType::F32, "x must be f32");
    assert_eq!(
        words.meta.shape().as_slice(),
        [n_out, words_per_row],
        "{format:?} words"
    );
    assert_eq!(words.dtype.size(), 4, "words must be a 32-bit int tensor");
    for (name, tensor) in
        std::iter::once(("scales", &scales)).chain(zeros.iter().map(|z| ("zeros", z)))
    {
        assert_eq!(
            tensor.meta.shape().as_slice(),
            [n_out, groups],
            "{format:?} {name}"
        );
        assert_eq!(tensor.dtype, DType::F32, "{name} must be f32");
    }

    let client = x.client.clone();
    let out = CubeTensor::new_contiguous(
        client.clone(),
        x.device.clone(),
        Shape::new([m, n_out]),
        client.empty(m * n_out * DType::F32.size()),
        DType::F32,
    );

    let (kernel, count, grid_x): (Box<dyn CubeKernel>, CubeCount, usize) =
        if (1..=GEMV_MAX_ROWS).contains(&m) {
            let blocks = n_out.div_ceil(GEMV_COLS);
            let grid_x = blocks.min(MAX_GRID_DIM);
            let grid_y = blocks.div_ceil(grid_x);
            let kernel = QuantGemv { format, rows: m };
            let cube_dim = CubeDim::new_1d(GEMV_WORKGROUP as u32);
            let count = CubeCount::Static(grid_x as u32, grid_y as u32, 1);
            (Box::new(SourceKernel::new(kernel, cube_dim)), count, grid_x)
        } else {
            let grid_x = n_out.div_ceil(GEMM_TILE);
            let grid_y = m.div_ceil(GEMM_TILE);
            assert!(
                grid_x <= MAX_GRID_DIM && grid_y <= MAX_GRID_DIM,
                "matmul too large: [{m}, {n_out}]"
            );
            let kernel = QuantGemm { format };
            let cube_dim = CubeDim::new_2d(16, 16);
            let count = CubeCount::Static(grid_x as u32, grid_y as u32, 1);
            (Box::new(SourceKernel::new(kernel, cube_dim)), count, grid_x)
        };

    let params = [m, n_out, k_in, words_per_row, groups, grid_x, 0, 0]
        .map(|v| u32::try_from(v).expect("matmul dimensions fit in u32"));
    let mut buffers = vec![
        x.handle.binding(),
        words.handle.binding(),
        scales.handle.binding(),
        out.handle.clone().binding(),
    ];
    buffers.extend(zeros.map(|z| z.handle.binding()));
    let arguments = KernelArguments::new()
        .with_buffers(buffers)
        .with_info(MetadataBindingInfo::custom(pack_words(&params)));
    client.launch(kernel, count, arguments);
    out
}

/// Packs u32 values two per u64 in memory order: cubecl uploads the info words as their
/// little-endian bytes, so the shader's `Params` sees the values in order.
fn pack_words(values: &[u32]) -> Vec<u64> {
    values
        .chunks(2)
        .map(|pair| u64::from(pair[0]) | (u64::from(pair.get(1).copied().unwrap_or(0)) << 32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_words_keep_value_order_in_memory() {
        let packed = pack_words(&[1, 2, 3]);
        let bytes: Vec<u8> = packed.iter().flat_map(|w| w.to_le_bytes()).collect();
        let back: Vec<u32> = bytes
            .chunks(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(back, [1, 2, 3, 0]);
    }
}
