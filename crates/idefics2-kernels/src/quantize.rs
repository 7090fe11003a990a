//! Host-side quantization of an f32 weight `[n_out, k_in]` (row-major, like `nn.Linear`'s) into
//! packed words and per-group scales (and zero points), and the inverse for checks.

use crate::error::QuantError;
use crate::format::QuantFormat;

/// A quantized weight on the host, in the layout the kernels read.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeight {
    pub format: QuantFormat,
    /// Output features (rows of the weight).
    pub n_out: usize,
    /// Input features (columns of the weight), before padding to a whole group.
    pub k_in: usize,
    /// `[n_out, words_per_row]` packed values; padding values dequantize to exactly 0.
    pub words: Vec<u32>,
    /// `[n_out, groups_per_row]` scales: f16 values held in f32 (see [`f16_scale`]), so a device
    /// may store them in either type and compute the same products.
    pub scales: Vec<f32>,
    /// `[n_out, groups_per_row]` zero points (0..=15) for [`QuantFormat::Q4`]; empty for
    /// [`QuantFormat::Q8`]. Bytes: the CPU device streams them with the codes at every decode step.
    pub zeros: Vec<u8>,
}

/// Quantizes `weight` (`[n_out, k_in]`, row-major f32) group by group along `k_in`.
///
/// - Q8: `scale = max|w| / 127`, `q = round(w / scale)` in -127..=127.
/// - Q4: the range `[min(w, 0), max(w, 0)]` maps onto 0..=15: `scale = (max - min) / 15`,
///   `zero = round(-min / scale)`, `q = clamp(round(w / scale) + zero, 0, 15)`.
///
/// The scale is first rounded up to an f16 value ([`f16_scale`]), then the codes are taken with it,
/// so either way each value comes back within `scale / 2` of itself.
pub fn quantize(
    weight: &[f32],
    n_out: usize,
    k_in: usize,
    format: QuantFormat,
) -> Result<PackedWeight, QuantError> {
    format.validate().map_err(QuantError::Format)?;
    if weight.len() != n_out * k_in {
        return Err(QuantError::WeightLen {
            n_out,
            k_in,
            got: weight.len(),
        });
    }
    let group = format.group();
    let groups = format.groups_per_row(k_in);
    let words_per_row = format.words_per_row(k_in);
    let per_word = format.values_per_word();
    let bits = format.bits();
    let mut packed = PackedWeight {
        format,
        n_out,
        k_in,
        words: vec![0; n_out * words_per_row],
        scales: vec![0.0; n_out * groups],
        zeros: if format.has_zero_point() {
            vec![0; n_out * groups]
        } else {
            Vec::new()
        },
    };
    let mut codes = vec![0u32; group];
    for row in 0..n_out {
        let row_values = &weight[row * k_in..(row + 1) * k_in];
        for g in 0..groups {
            let values = &row_values[g * group..((g + 1) * group).min(k_in)];
            let (scale, zero) = match format {
                QuantFormat::Q8 { .. } => quantize_q8(values, &mut codes).map(|s| (s, 0)),
                QuantFormat::Q4 { .. } => quantize_q4(values, &mut codes),
            }
            .map_err(|scale| QuantError::ScaleOutOfRange {
                row,
                group: g,
                scale,
            })?;
            packed.scales[row * groups + g] = scale;
            if format.has_zero_point() {
                packed.zeros[row * groups + g] = zero;
            }
            let first_word = row * words_per_row + g * group / per_word;
            for (i, code) in codes.iter().enumerate() {
                packed.words[first_word + i / per_word] |= code << (bits * (i % per_word));
            }
        }
    }
    Ok(packed)
}

/// `scale` rounded up to the nearest f16 value, and at least f16's smallest normal number (GPUs
/// may flush f16 subnormals to zero); 0 stays 0. Rounding up keeps every code in range. Err with
/// the scale when it is too large for f16 (or not finite).
pub fn f16_scale(scale: f32) -> Result<f32, f32> {
    if scale == 0.0 {
        return Ok(0.0);
    }
    if !scale.is_finite() || scale > f32::from(half::f16::MAX) {
        return Err(scale);
    }
    let mut rounded = half::f16::from_f32(scale.max(f32::from(half::f16::MIN_POSITIVE)));
    if f32::from(rounded) < scale {
        rounded = half::f16::from_bits(rounded.to_bits() + 1);
    }
    Ok(f32::from(rounded))
}

/// Fills `codes` (a whole group, padding included) with the 8-bit two's-complement codes of
/// `values` and returns the scale (Err: the scale f16 cannot hold).
fn quantize_q8(values: &[f32], codes: &mut [u32]) -> Result<f32, f32> {
    let max_abs = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = f16_scale(max_abs / 127.0)?;
    codes.fill(0);
    if scale > 0.0 {
        for (code, v) in codes.iter_mut().zip(values) {
            let q = (v / scale).round().clamp(-127.0, 127.0) as i8;
            *code = u32::from(q as u8);
        }
    }
    Ok(scale)
}

/// Fills `codes` (a whole group, padding included) with 4-bit codes of `values` and returns
/// `(scale, zero)`; padding gets the zero point, so it dequantizes to exactly 0 (Err: the scale
/// f16 cannot hold).
fn quantize_q4(values: &[f32], codes: &mut [u32]) -> Result<(f32, u8), f32> {
    let (min, max) = values
        .iter()
        .fold((0.0f32, 0.0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let scale = f16_scale((max - min) / 15.0)?;
    if scale == 0.0 {
        codes.fill(0);
        return Ok((0.0, 0));
    }
    let zero = (-min / scale).round().clamp(0.0, 15.0);
    codes.fill(zero as u32);
    for (code, v) in codes.iter_mut().zip(values) {
        *code = ((v / scale).round() + zero).clamp(0.0, 15.0) as u32;
    }
    // A whole number in 0..=15, clamped above.
    Ok((scale, zero as u8))
}

impl PackedWeight {
    /// Groups per row of this weight.
    pub fn groups_per_row(&self) -> usize {
        self.format.groups_per_row(self.k_in)
    }

    /// The zero points as f32 (the type devices and saved checkpoints hold them in).
    pub fn zeros_f32(&self) -> Vec<f32> {
        self.zeros.iter().map(|&z| f32::from(z)).collect()
    }

    /// Packed words per row of this weight.
    pub fn words_per_row(&self) -> usize {
        self.format.words_per_row(self.k_in)
    }

    /// The f32 weight `[n_out, k_in]` these codes stand for (padding dropped).
    pub fn dequantize(&self) -> Vec<f32> {
        let group = self.format.group();
        let groups = self.groups_per_row();
        let words_per_row = self.words_per_row();
        let per_word = self.format.values_per_word();
        let bits = self.format.bits();
        let mut out = Vec::with_capacity(self.n_out * self.k_in);
        for row in 0..self.n_out {
            for col in 0..self.k_in {
                let word = self.words[row * words_per_row + col / per_word];
                let code = (word >> (bits * (col % per_word))) & ((1 << bits) - 1);
                let at = row * groups + col / group;
                let scale = self.scales[at];
                out.push(match self.format {
                    QuantFormat::Q8 { .. } => f32::from(code as u8 as i8) * scale,
                    QuantFormat::Q4 { .. } => (code as f32 - f32::from(self.zeros[at])) * scale,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_land_where_the_layout_says() {
        // One row, k_in = 9: two q8 words (+ padding to a group of 8), two q4 words.
        let w: Vec<f32> = (0..9).map(|i| i as f32 - 4.0).collect();
        let q8 = quantize(&w, 1, 9, QuantFormat::Q8 { group: 8 }).expect("valid");
        assert_eq!(q8.words.len(), 4);
        let scale = f16_scale(4.0 / 127.0).expect("in range");
        assert_eq!(q8.scales, vec![scale, scale]);
        assert_eq!(q8.words[0] & 0xFF, (-127i8) as u8 as u32);
        assert_eq!(q8.words[2] & 0xFF, 127);
        assert_eq!(q8.words[3], 0, "padding is zero");
        let q4 = quantize(&w, 1, 9, QuantFormat::Q4 { group: 8 }).expect("valid");
        assert_eq!(q4.words.len(), 2);
        let zero = q4.zeros[1] as u32;
        assert_eq!(
            q4.words[1] >> 4,
            zero * 0x111_1111,
            "padding holds the zero point"
        );
        for (a, b) in q4.dequantize().iter().zip(&w) {
            assert!((a - b).abs() <= q4.scales[0] / 2.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(quantize(&[0.0; 5], 2, 3, QuantFormat::Q8_32).is_err());
        assert!(quantize(&[0.0; 6], 2, 3, QuantFormat::Q4 { group: 4 }).is_err());
    }
}
