//! A quantized weight on a device: the packed words, scales and zero points as burn tensors.

use std::borrow::Cow;
use std::sync::Arc;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::caps::WgpuCaps;
use crate::error::QuantError;
use crate::forced::Forced;
use crate::format::QuantFormat;
use crate::quantize::PackedWeight;

/// A quantized `[n_out, k_in]` weight on a device: on wgpu devices the tensors of
/// [`PackedWeight`] in the kernels' layout ([`WeightTensors`]), on the CPU device the packed codes
/// in host memory as they are, read by [`crate::cpu_quant_matmul`].
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    pub format: QuantFormat,
    pub n_out: usize,
    pub k_in: usize,
    pub storage: WeightStorage,
}

/// Where a [`QuantizedWeight`] keeps its codes.
// A few hundred of these exist per model; boxing the tensors would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum WeightStorage {
    /// Device tensors (wgpu; on the CPU device only when tests force the plain-burn oracle).
    Tensors(WeightTensors),
    /// Host memory, for the CPU device.
    Host {
        packed: Arc<PackedWeight>,
        device: Device,
    },
}

/// The tensors of [`PackedWeight`] transposed in blocks of [`BLOCK_COLS`] output columns, with
/// `n_out` padded to `n_pad` (a multiple of [`BLOCK_COLS`], see [`padded_n_out`]). Block `b` holds
/// the words (or scales) of columns `128 b .. 128 b + 128` as `[words_per_row, 128]`, one block
/// after the other: neighbouring threads (neighbouring columns) read neighbouring words, as GPUs
/// want, and the 8 lanes of a CPU adapter's SIMD batch, 16 columns each, read one contiguous
/// stream down K instead of 512 bytes from every 57 KiB row of a plain transpose (1.5x faster on
/// lavapipe). Padding columns hold zeros.
#[derive(Debug, Clone)]
pub struct WeightTensors {
    /// `[n_pad / 128 * words_per_row, 128]` packed codes (blocks of `[words_per_row, 128]`;
    /// column `n % 128` of block `n / 128` holds output row `n`'s words): the u32 words' bit
    /// patterns in an i32 tensor.
    pub words: Tensor<2, Int>,
    /// `[n_pad / 128 * groups_per_row, 128]` scales, in blocks as the words: f16 on wgpu devices
    /// with `shader-f16`, else f32 (the same values: [`crate::quantize`] makes them f16 numbers).
    pub scales: Tensor<2>,
    /// Zero points (whole numbers) laid out as the scales, for formats that have them, in the
    /// dtype of the scales.
    pub zeros: Option<Tensor<2>>,
}

impl QuantizedWeight {
    /// Bytes the weight takes on its device: packed words, scales and zero points (the padding
    /// columns included).
    pub fn device_bytes(&self) -> usize {
        match &self.storage {
            WeightStorage::Tensors(t) => {
                let bytes = |t: &Tensor<2>| t.shape().num_elements() * t.dtype().size();
                t.words.shape().num_elements() * 4
                    + bytes(&t.scales)
                    + t.zeros.as_ref().map_or(0, bytes)
            }
            WeightStorage::Host { packed, .. } => {
                4 * (packed.words.len() + packed.scales.len()) + packed.zeros.len()
            }
        }
    }

    /// The weight as device tensors: its own, or made from the host codes (for the plain-burn
    /// reference).
    pub fn tensors(&self) -> WeightTensors {
        match &self.storage {
            WeightStorage::Tensors(t) => t.clone(),
            WeightStorage::Host { packed, device } => block_tensors(packed, device, DType::F32),
        }
    }
}

/// Uploads `packed` to `device`. On a wgpu device its tensors are transposed in column blocks on
/// the way (see [`WeightTensors`]), every tensor must fit one storage binding, and scales and
/// zero points go up as f16 where the device has `shader-f16` (half the bytes the kernels read
/// beside the codes). On the CPU device the packed codes stay as they are, in host memory.
pub fn upload(packed: &PackedWeight, device: &Device) -> Result<QuantizedWeight, QuantError> {
    upload_cow(Cow::Borrowed(packed), device)
}

/// [`upload`] taking the weight by value: the CPU device then keeps it without copying it (the
/// loader's case, a copy of every layer otherwise).
pub fn upload_owned(packed: PackedWeight, device: &Device) -> Result<QuantizedWeight, QuantError> {
    upload_cow(Cow::Owned(packed), device)
}

fn upload_cow(
    packed: Cow<'_, PackedWeight>,
    device: &Device,
) -> Result<QuantizedWeight, QuantError> {
    let (n_out, k_in, format) = (packed.n_out, packed.k_in, packed.format);
    let caps = WgpuCaps::of(device);
    #[cfg(not(target_family = "wasm"))]
    if caps.is_none()
        && crate::cpu_quant_matmul::is_cpu_device(device)
        && FORCED_TENSORS.get().is_none()
    {
        return Ok(QuantizedWeight {
            format,
            n_out,
            k_in,
            storage: WeightStorage::Host {
                packed: Arc::new(packed.into_owned()),
                device: device.clone(),
            },
        });
    }
    let groups = packed.groups_per_row();
    let scale_dtype =
        if caps.as_ref().is_some_and(|c| c.shader_f16) && FORCED_F32_SCALES.get().is_none() {
            DType::F16
        } else {
            DType::F32
        };
    if let Some(caps) = caps {
        let n_pad = padded_n_out(n_out);
        let sizes = [
            ("packed words", 4 * packed.words_per_row() * n_pad),
            ("scales", scale_dtype.size() * groups * n_pad),
        ];
        for (what, bytes) in sizes {
            let bytes = bytes as u64;
            if bytes > caps.max_binding_bytes {
                return Err(QuantError::BindingTooLarge {
                    format,
                    n_out,
                    k_in,
                    what,
                    bytes,
                    limit: caps.max_binding_bytes,
                });
            }
        }
    }
    Ok(QuantizedWeight {
        format,
        n_out,
        k_in,
        storage: WeightStorage::Tensors(block_tensors(&packed, device, scale_dtype)),
    })
}

/// The device tensors of `packed` (see [`WeightTensors`]), scales and zero points in
/// `scale_dtype`.
fn block_tensors(packed: &PackedWeight, device: &Device, scale_dtype: DType) -> WeightTensors {
    let (n_out, format) = (packed.n_out, packed.format);
    let groups = packed.groups_per_row();
    let words_per_row = packed.words_per_row();
    let n_pad = padded_n_out(n_out);
    let blocks = n_pad / BLOCK_COLS;
    let words: Vec<i32> = block_transpose(&packed.words, n_out, words_per_row, n_pad)
        .into_iter()
        .map(|w| w as i32)
        .collect();
    let words = Tensor::<2, Int>::from_data(
        TensorData::new(words, [blocks * words_per_row, BLOCK_COLS]),
        (device, DType::I32),
    );
    let per_group = |values: &[f32]| {
        let values = block_transpose(values, n_out, groups, n_pad);
        let shape = [blocks * groups, BLOCK_COLS];
        let data = if scale_dtype == DType::F16 {
            let halves: Vec<half::f16> = values.into_iter().map(half::f16::from_f32).collect();
            TensorData::new(halves, shape)
        } else {
            TensorData::new(values, shape)
        };
        Tensor::<2>::from_data(data, (device, scale_dtype))
    };
    WeightTensors {
        words,
        scales: per_group(&packed.scales),
        zeros: format
            .has_zero_point()
            .then(|| per_group(&packed.zeros_f32())),
    }
}

/// Set when tests make the CPU device keep quantized weights as tensors (the plain-burn oracle).
static FORCED_TENSORS: Forced = Forced::new();

/// Makes [`upload`] give the CPU device block tensors (`true`), read by the plain-burn reference,
/// or back to host codes (`false`): lets tests compare the CPU matmul with the oracle end to end.
#[doc(hidden)]
pub fn force_tensor_weights(tensors: bool) {
    FORCED_TENSORS.set(tensors.then_some(1));
}

/// Set when tests force f32 scales on an adapter with shader-f16.
static FORCED_F32_SCALES: Forced = Forced::new();

/// Makes [`upload`] keep scales and zero points in f32 (`true`), as on adapters without
/// shader-f16, or back to the automatic rule (`false`): lets tests cover both kernel variants.
#[doc(hidden)]
pub fn force_f32_scales(f32_scales: bool) {
    FORCED_F32_SCALES.set(f32_scales.then_some(1));
}

/// Output columns per block of a [`QuantizedWeight`]'s device tensors: the 32 quads of 4 columns
/// that a SIMD batch of 8 CPU lanes (4 quads each) or 32 GPU threads (one each) read per word.
pub const BLOCK_COLS: usize = 128;

/// The output columns of a [`QuantizedWeight`]'s device tensors: `n_out` rounded up to a multiple
/// of [`BLOCK_COLS`].
pub fn padded_n_out(n_out: usize) -> usize {
    n_out.next_multiple_of(BLOCK_COLS)
}

/// `src` (`[rows, cols]`, row-major) transposed in blocks of [`BLOCK_COLS`] rows: row `r`, column
/// `c` goes to `((r / 128) * cols + c) * 128 + r % 128`, `T::default()` past `rows` up to
/// `padded_rows`. Each block is written row of `src` by row, 32 at a time (cache-sized).
fn block_transpose<T: Copy + Default>(
    src: &[T],
    rows: usize,
    cols: usize,
    padded_rows: usize,
) -> Vec<T> {
    const TILE: usize = 32;
    assert_eq!(src.len(), rows * cols);
    assert!(padded_rows >= rows && padded_rows.is_multiple_of(BLOCK_COLS));
    let mut dst = vec![T::default(); cols * padded_rows];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let base = (r / BLOCK_COLS) * cols * BLOCK_COLS + r % BLOCK_COLS;
                for c in c0..(c0 + TILE).min(cols) {
                    dst[base + c * BLOCK_COLS] = src[r * cols + c];
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_transpose_moves_every_value() {
        let (rows, cols, padded) = (301, 70, 384);
        let src: Vec<u32> = (1..=(rows * cols) as u32).collect();
        let dst = block_transpose(&src, rows, cols, padded);
        assert_eq!(dst.len(), cols * padded);
        for block in 0..padded / BLOCK_COLS {
            for c in 0..cols {
                for i in 0..BLOCK_COLS {
                    let r = block * BLOCK_COLS + i;
                    let want = if r < rows { src[r * cols + c] } else { 0 };
                    assert_eq!(dst[(block * cols + c) * BLOCK_COLS + i], want);
                }
            }
        }
    }
}
