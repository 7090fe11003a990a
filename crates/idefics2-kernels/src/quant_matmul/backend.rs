//! The quantized matmul as a burn backend extension: dispatch for the cubecl backend (wgpu),
//! lazy registration under Fusion, and the launcher that checks its inputs, picks the GEMV or the
//! GEMM, fills the template and dispatches.

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, SourceKernel, into_contiguous};
use burn::backend::{Backend, backend_extension};
use burn::cubecl::CubeKernel;
use burn::cubecl::prelude::{CubeCount, CubeDim};
use burn::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn::tensor::{DType, Shape};

use super::source::{GEMM_TILE, GEMV_COLS, GEMV_MAX_ROWS, GEMV_WORKGROUP, QuantGemm, QuantGemv};
use crate::caps::{cpu_subgroup_size, is_cpu_adapter};
use crate::forced::Forced;
use crate::format::QuantFormat;
use crate::info_words::pack_words;
use crate::weight::{BLOCK_COLS, padded_n_out};

/// Largest workgroup count along one grid dimension (WebGPU's default limit).
const MAX_GRID_DIM: usize = 65_535;

/// `x [m, k_in] (f32) @ dequantize(w)^T -> [m, n_out] (f32)`, w given in the device layout of
/// [`crate::QuantizedWeight`]: packed words `[n_pad / 128 * words_per_row, 128]` (u32 bit patterns
/// in a 32-bit int tensor), scales `[n_pad / 128 * groups_per_row, 128]` and, for Q4, zero points
/// as the scales.
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
/// [`GEMV_MAX_ROWS`] rows, and any number on CPU adapters, in blocks of that many rows) or the
/// tiled GEMM (more rows on GPUs; no rows is an empty grid, which cubecl skips).
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
    let n_pad = padded_n_out(n_out);
    assert_eq!(x.meta.shape().as_slice(), [m, k_in], "x must be [m, k_in]");
    assert_eq!(x.dtype, DType::F32, "x must be f32");
    let blocks = n_pad / BLOCK_COLS;
    assert_eq!(
        words.meta.shape().as_slice(),
        [blocks * words_per_row, BLOCK_COLS],
        "{format:?} words (transposed in column blocks, padded)"
    );
    assert_eq!(words.dtype.size(), 4, "words must be a 32-bit int tensor");
    let scale_f16 = scales.dtype == DType::F16;
    for (name, tensor) in
        std::iter::once(("scales", &scales)).chain(zeros.iter().map(|z| ("zeros", z)))
    {
        assert_eq!(
            tensor.meta.shape().as_slice(),
            [blocks * groups, BLOCK_COLS],
            "{format:?} {name} (transposed in column blocks, padded)"
        );
        assert!(
            tensor.dtype == scales.dtype && matches!(tensor.dtype, DType::F32 | DType::F16),
            "{name} must be f32 or f16, as the scales"
        );
    }

    let client = x.client.clone();
    let props = client.properties();
    let cpu = is_cpu_adapter(&props.identity.name);
    // CPU adapters pay dearly for the tiled GEMM's barriers: their prefill runs the register-
    // blocked GEMV over blocks of GEMV_MAX_ROWS rows instead (8x faster on lavapipe).
    let gemv = (1..=GEMV_MAX_ROWS).contains(&m)
        || (m > GEMV_MAX_ROWS && cpu && FORCED_TILED_GEMM.get().is_none());
    // The GEMV's K slices, each with its partial sums [m, n_out] in `out`.
    let (splits, groups_per_split) = if gemv {
        // a launch of row blocks holds each block's rows in registers, as a GEMV of that many rows
        gemv_splits(m.min(GEMV_MAX_ROWS), n_out, k_in, groups, cpu)
    } else {
        (1, groups)
    };
    let out = CubeTensor::new_contiguous(
        client.clone(),
        x.device.clone(),
        Shape::new([splits * m, n_out]),
        client.empty(splits * m * n_out * DType::F32.size()),
        DType::F32,
    );

    let (kernel, count, grid_x): (Box<dyn CubeKernel>, CubeCount, usize) = if gemv {
        let quads_per_thread = gemv_quads_per_thread(cpu);
        let grid_x = n_pad.div_ceil(GEMV_WORKGROUP * GEMV_COLS * quads_per_thread);
        let block_rows = m.min(GEMV_MAX_ROWS);
        let row_blocks = m.div_ceil(block_rows);
        assert!(
            grid_x <= MAX_GRID_DIM && splits <= MAX_GRID_DIM && row_blocks <= MAX_GRID_DIM,
            "GEMV too large: [{m}, {n_out}]"
        );
        let kernel = QuantGemv {
            format,
            scale_f16,
            rows: block_rows,
            quads_per_thread,
            x_vec4: k_in.is_multiple_of(4),
            subgroup_x: gemv_subgroup_x(format, cpu_subgroup_size(props)),
        };
        let cube_dim = CubeDim::new_1d(GEMV_WORKGROUP as u32);
        let count = CubeCount::Static(grid_x as u32, splits as u32, row_blocks as u32);
        (Box::new(SourceKernel::new(kernel, cube_dim)), count, grid_x)
    } else {
        let grid_x = n_out.div_ceil(GEMM_TILE);
        let grid_y = m.div_ceil(GEMM_TILE);
        assert!(
            grid_x <= MAX_GRID_DIM && grid_y <= MAX_GRID_DIM,
            "matmul too large: [{m}, {n_out}]"
        );
        let kernel = QuantGemm { format, scale_f16 };
        let cube_dim = CubeDim::new_2d(16, 16);
        let count = CubeCount::Static(grid_x as u32, grid_y as u32, 1);
        (Box::new(SourceKernel::new(kernel, cube_dim)), count, grid_x)
    };

    let params = [
        m,
        n_out,
        k_in,
        words_per_row,
        groups,
        grid_x,
        groups_per_split,
        n_pad,
    ]
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
    if splits == 1 {
        return out;
    }
    // [splits, m, n_out] -> [m, n_out]
    let out = CubeBackend::float_reshape(out, Shape::new([splits, m, n_out]));
    let out = CubeBackend::float_sum_dim(out, 0);
    CubeBackend::float_reshape(out, Shape::new([m, n_out]))
}

/// Splits forced on the GEMV (else the rule of [`gemv_splits`]), for tests on CPU adapters.
static FORCED_GEMV_SPLITS: Forced = Forced::new();

/// Forces the GEMV to cut K into (at most) `splits` slices, or back to the automatic rule with
/// `None`: lets tests on a CPU adapter cover the multi-slice path that GPUs take.
#[doc(hidden)]
pub fn force_gemv_splits(splits: Option<usize>) {
    FORCED_GEMV_SPLITS.set(splits);
}

/// Set when tests force the tiled GEMM on a CPU adapter (which runs blocks of the GEMV instead).
static FORCED_TILED_GEMM: Forced = Forced::new();

/// Forces more than [`GEMV_MAX_ROWS`] rows onto the tiled GEMM (`true`), as GPUs run them, or back
/// to the automatic rule (`false`): lets tests on a CPU adapter cover the GEMM.
#[doc(hidden)]
pub fn force_tiled_gemm(tiled: bool) {
    FORCED_TILED_GEMM.set(tiled.then_some(1));
}

/// Column quads per GEMV thread forced (else the rule of [`gemv_quads_per_thread`]), for tests
/// on CPU adapters.
static FORCED_GEMV_QUADS: Forced = Forced::new();

/// Forces the column quads each GEMV thread computes, or back to the automatic rule with `None`:
/// lets tests on a CPU adapter cover the one-quad threads that GPUs run.
#[doc(hidden)]
pub fn force_gemv_quads_per_thread(quads: Option<usize>) {
    FORCED_GEMV_QUADS.set(quads);
}

/// Column quads per GEMV thread: one on GPUs (neighbouring threads read neighbouring words); 4 on
/// CPU adapters, which load buffers lane by lane, so that each x value loaded serves 16 columns.
fn gemv_quads_per_thread(cpu: bool) -> usize {
    match FORCED_GEMV_QUADS.get() {
        Some(forced) => forced,
        None if cpu => 4,
        None => 1,
    }
}

/// The subgroup size over which the GEMV shares its x loads (see `shaders/quant_gemv.wgsl`): a CPU
/// adapter's fixed size (`cpu_subgroup_size`) when 4 values per lane make one group of the format
/// (groups of 32 on lavapipe; groups of 128, shared 32 values at a time, gained nothing there).
/// GPUs read x from their caches and keep the plain loads.
fn gemv_subgroup_x(format: QuantFormat, cpu_subgroup: Option<u32>) -> Option<usize> {
    let lanes = cpu_subgroup? as usize;
    let fits = format.group() == 4 * lanes && GEMV_WORKGROUP.is_multiple_of(lanes);
    fits.then_some(lanes)
}

/// Threads the GEMV aims for on a GPU: enough loads in flight to approach the memory bandwidth of
/// large GPUs when the output alone has too few columns.
const GEMV_TARGET_THREADS: usize = 32 * 1024;

/// How the GEMV cuts K: `(splits, groups_per_split)`. One slice on CPU adapters (a few cores,
/// plenty of columns per core; the extra pass would only cost). On GPUs, enough slices to reach
/// [`GEMV_TARGET_THREADS`], as long as the partial sums (written and read back: `8 splits m n_out`
/// bytes) stay small beside the weight (at least `k_in n_out / 2` bytes): `splits m <= k_in / 64`.
fn gemv_splits(m: usize, n_out: usize, k_in: usize, groups: usize, cpu: bool) -> (usize, usize) {
    let threads = n_out.div_ceil(GEMV_COLS);
    let wanted = if let Some(forced) = FORCED_GEMV_SPLITS.get() {
        forced.min(groups).max(1)
    } else if cpu {
        1
    } else {
        GEMV_TARGET_THREADS
            .div_ceil(threads)
            .min(k_in / (64 * m))
            .min(groups)
            .max(1)
    };
    let groups_per_split = groups.div_ceil(wanted).max(1);
    (groups.div_ceil(groups_per_split).max(1), groups_per_split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_splits_cover_every_group() {
        // Mistral-7B's MLP on a GPU: up and down projections, one and eight rows.
        assert_eq!(gemv_splits(1, 14336, 4096, 128, false), (10, 13));
        assert_eq!(gemv_splits(8, 14336, 4096, 128, false), (8, 16));
        assert_eq!(gemv_splits(1, 4096, 14336, 448, false), (32, 14));
        // CPU adapters and tiny shapes: one slice.
        assert_eq!(gemv_splits(1, 14336, 4096, 128, true), (1, 128));
        assert_eq!(gemv_splits(3, 5, 72, 3, false), (1, 3));
        for (m, n, k) in [(1usize, 5usize, 300usize), (8, 130, 4096), (2, 1, 100_000)] {
            for group in [32, 128] {
                let groups = k.div_ceil(group);
                let (splits, per) = gemv_splits(m, n, k, groups, false);
                assert!(splits * per >= groups && (splits - 1) * per < groups);
            }
        }
    }
}
