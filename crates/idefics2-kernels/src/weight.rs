//! A quantized weight on a device: the packed words, scales and zero points as burn tensors.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::caps::WgpuCaps;
use crate::error::QuantError;
use crate::format::QuantFormat;
use crate::quantize::PackedWeight;

/// A quantized `[n_out, k_in]` weight on a device, laid out as [`PackedWeight`].
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    pub format: QuantFormat,
    pub n_out: usize,
    pub k_in: usize,
    /// `[n_out, words_per_row]` packed codes: the u32 words' bit patterns in an i32 tensor.
    pub words: Tensor<2, Int>,
    /// `[n_out, groups_per_row]` f32.
    pub scales: Tensor<2>,
    /// `[n_out, groups_per_row]` f32 zero points, for formats that have them.
    pub zeros: Option<Tensor<2>>,
}

/// Uploads `packed` to `device`. On a wgpu device every tensor must fit one storage binding.
pub fn upload(packed: &PackedWeight, device: &Device) -> Result<QuantizedWeight, QuantError> {
    let (n_out, k_in, format) = (packed.n_out, packed.k_in, packed.format);
    let groups = packed.groups_per_row();
    if let Some(caps) = WgpuCaps::of(device) {
        let sizes = [
            ("packed words", packed.words.len()),
            ("scales", packed.scales.len()),
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
    let words: Vec<i32> = packed.words.iter().map(|w| *w as i32).collect();
    let words = Tensor::<2, Int>::from_data(
        TensorData::new(words, [n_out, packed.words_per_row()]),
        (device, DType::I32),
    );
    let per_group = |values: &[f32]| {
        Tensor::<2>::from_data(
            TensorData::new(values.to_vec(), [n_out, groups]),
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
