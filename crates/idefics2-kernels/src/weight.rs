//! A quantized weight on a device: the packed words, scales and zero points as burn tensors.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::caps::WgpuCaps;
use crate::error::QuantError;
use crate::format::QuantFormat;
use crate::quantize::PackedWeight;

/// A quantized `[n_out, k_in]` weight on a device: the tensors of [`PackedWeight`] transposed, so
/// that the kernels' neighbouring threads (neighbouring output columns) read neighbouring words,
/// with `n_out` padded to `n_pad` (a multiple of 4, see [`padded_n_out`]) so the GEMV can read 4
/// columns as one vec4. Padding columns hold zeros.
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    pub format: QuantFormat,
    pub n_out: usize,
    pub k_in: usize,
    /// `[words_per_row, n_pad]` packed codes (column `n` holds output row `n`'s words): the u32
    /// words' bit patterns in an i32 tensor.
    pub words: Tensor<2, Int>,
    /// `[groups_per_row, n_pad]` f32 scales.
    pub scales: Tensor<2>,
    /// `[groups_per_row, n_pad]` f32 zero points, for formats that have them.
    pub zeros: Option<Tensor<2>>,
}

/// Uploads `packed` to `device`, transposing its tensors on the way (see [`QuantizedWeight`]). On
/// a wgpu device every tensor must fit one storage binding.
pub fn upload(packed: &PackedWeight, device: &Device) -> Result<QuantizedWeight, QuantError> {
    let (n_out, k_in, format) = (packed.n_out, packed.k_in, packed.format);
    let groups = packed.groups_per_row();
    if let Some(caps) = WgpuCaps::of(device) {
        let n_pad = padded_n_out(n_out);
        let sizes = [
            ("packed words", packed.words_per_row() * n_pad),
            ("scales", groups * n_pad),
        ];
        for (what, len) in sizes {
            let bytes = 4 * len as u64;
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
    let words_per_row = packed.words_per_row();
    let n_pad = padded_n_out(n_out);
    let words: Vec<i32> = transpose_padded(&packed.words, n_out, words_per_row, n_pad)
        .into_iter()
        .map(|w| w as i32)
        .collect();
    let words = Tensor::<2, Int>::from_data(
        TensorData::new(words, [words_per_row, n_pad]),
        (device, DType::I32),
    );
    let per_group = |values: &[f32]| {
        Tensor::<2>::from_data(
            TensorData::new(
                transpose_padded(values, n_out, groups, n_pad),
                [groups, n_pad],
            ),
            (device, DType::F32),
        )
    };
    Ok(QuantizedWeight {
        format,
        n_out,
        k_in,
        words,
        scales: per_group(&packed.scales),
        zeros: format.has_zero_point().then(|| per_group(&packed.zeros)),
    })
}

/// The columns of a [`QuantizedWeight`]'s device tensors: `n_out` rounded up to a multiple of 4.
pub fn padded_n_out(n_out: usize) -> usize {
    n_out.next_multiple_of(4)
}

/// `src` (`[rows, cols]`, row-major) transposed to `[cols, padded_rows]` (`T::default()` past
/// `rows`), in cache-sized blocks.
fn transpose_padded<T: Copy + Default>(
    src: &[T],
    rows: usize,
    cols: usize,
    padded_rows: usize,
) -> Vec<T> {
    const BLOCK: usize = 32;
    assert_eq!(src.len(), rows * cols);
    let mut dst = vec![T::default(); cols * padded_rows];
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                for c in c0..(c0 + BLOCK).min(cols) {
                    dst[c * padded_rows + r] = src[r * cols + c];
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
    fn transpose_moves_every_value() {
        let (rows, cols, padded) = (37, 70, 40);
        let src: Vec<u32> = (1..=(rows * cols) as u32).collect();
        let dst = transpose_padded(&src, rows, cols, padded);
        assert_eq!(dst.len(), cols * padded);
        for c in 0..cols {
            for r in 0..padded {
                let want = if r < rows { src[r * cols + c] } else { 0 };
                assert_eq!(dst[c * padded + r], want);
            }
        }
    }
}
