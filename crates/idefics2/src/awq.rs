//! AutoAWQ checkpoints (`quant_method: "awq"`, the GEMM layout of `HuggingFaceM4/idefics2-8b-AWQ`)
//! read into our Q4 format without loss: the same groups, integer codes, zero points and f16
//! scales, only laid out as the kernels read them.
//!
//! AWQ stores a linear layer with K inputs and N outputs input-major: `qweight` I32 `[K, N/8]`,
//! `qzeros` I32 `[K/G, N/8]`, `scales` F16 `[K/G, N]`, eight 4-bit values of consecutive output
//! columns per word, nibble `i` holding column `8c + [0, 2, 4, 6, 1, 3, 5, 7][i]`; the weight is
//! `W[k, n] = (q[k, n] - z[k / G, n]) * s[k / G, n]` and `y = x W`. Our format is output-major:
//! row `n` holds its K codes in order, 8 per word, nibble `k % 8`.

use crate::quant::{PackedWeight, QuantFormat};

/// The `quant_method` of AutoAWQ's checkpoints.
pub const AWQ_METHOD: &str = "awq";

/// `REVERSE_ORDER[j]`: the nibble of a word that holds column `8c + j`.
const REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Which layers an AWQ checkpoint quantizes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwqLayout {
    /// Inputs sharing one scale and zero point (128 on the hub).
    pub group: usize,
    /// `modules_to_not_convert`: a linear layer whose path contains one of these stays float.
    pub not_convert: Vec<String>,
}

impl AwqLayout {
    /// Our format for the layers: 4 bits, the checkpoint's group.
    pub fn format(&self) -> QuantFormat {
        QuantFormat::Q4 { group: self.group }
    }

    /// Whether linear layer `prefix` (its hub path without `.weight`) is stored quantized: every
    /// linear layer but the lm_head and those `modules_to_not_convert` names, as transformers
    /// replaces them (names matched as substrings of the path).
    pub fn quantizes(&self, prefix: &str) -> bool {
        prefix != "lm_head" && !self.not_convert.iter().any(|m| prefix.contains(m.as_str()))
    }

    /// Why a layer of `n_out` outputs and `k_in` inputs cannot be an AWQ layer, if it cannot.
    pub fn check_shape(&self, n_out: usize, k_in: usize) -> Result<(), String> {
        if !n_out.is_multiple_of(8) || !k_in.is_multiple_of(self.group) {
            return Err(format!(
                "an AWQ layer packs 8 outputs per word and groups of {} inputs, which {n_out} \
                 outputs and {k_in} inputs do not fill",
                self.group
            ));
        }
        Ok(())
    }

    /// The AWQ tensors of one layer (`qweight` `[k_in, n_out / 8]` and `qzeros`
    /// `[k_in / group, n_out / 8]` as u32 bit patterns, `scales` `[k_in / group, n_out]` as f32
    /// holding the stored f16 values) in our layout. The shape must pass
    /// [`check_shape`](Self::check_shape) and the slices must have those lengths.
    pub fn to_packed(
        &self,
        qweight: &[u32],
        qzeros: &[u32],
        scales: &[f32],
        n_out: usize,
        k_in: usize,
    ) -> PackedWeight {
        let format = self.format();
        let groups = k_in / self.group;
        let words_in = n_out / 8;
        let words_per_row = format.words_per_row(k_in); // k_in / 8
        assert_eq!(qweight.len(), k_in * words_in, "qweight length");
        assert_eq!(qzeros.len(), groups * words_in, "qzeros length");
        assert_eq!(scales.len(), groups * n_out, "scales length");
        let mut words = vec![0u32; n_out * words_per_row];
        for k in 0..k_in {
            let shift = 4 * (k % 8);
            for c in 0..words_in {
                let word = qweight[k * words_in + c];
                for (j, nibble) in REVERSE_ORDER.iter().enumerate() {
                    let code = (word >> (4 * nibble)) & 0xF;
                    words[(8 * c + j) * words_per_row + k / 8] |= code << shift;
                }
            }
        }
        let mut zeros = vec![0u8; n_out * groups];
        let mut row_scales = vec![0f32; n_out * groups];
        for g in 0..groups {
            for c in 0..words_in {
                let word = qzeros[g * words_in + c];
                for (j, nibble) in REVERSE_ORDER.iter().enumerate() {
                    zeros[(8 * c + j) * groups + g] = ((word >> (4 * nibble)) & 0xF) as u8;
                }
            }
            for n in 0..n_out {
                row_scales[n * groups + g] = scales[g * n_out + n];
            }
        }
        PackedWeight {
            format,
            n_out,
            k_in,
            words,
            scales: row_scales,
            zeros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AutoAWQ's packing, written from its rule: nibble i of word c holds column 8c + ORDER[i].
    fn pack_awq(codes: &[u32], rows: usize, cols: usize) -> Vec<u32> {
        const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
        let mut words = vec![0u32; rows * cols / 8];
        for r in 0..rows {
            for c in 0..cols / 8 {
                for (i, col) in ORDER.iter().enumerate() {
                    words[r * cols / 8 + c] |= codes[r * cols + 8 * c + col] << (4 * i);
                }
            }
        }
        words
    }

    #[test]
    fn the_published_example_unpacks() {
        // AutoAWQ: the codes 0..7 of columns 0..7 pack to 0x75316420.
        assert_eq!(pack_awq(&[0, 1, 2, 3, 4, 5, 6, 7], 1, 8), vec![0x7531_6420]);
        let layout = AwqLayout {
            group: 8,
            not_convert: Vec::new(),
        };
        // One input row of 8 (k_in = 8 would need 8 rows: use the zeros, one group of 8 columns).
        let qweight = vec![0x7531_6420; 8]; // every input k: column n has code n
        let packed = layout.to_packed(&qweight, &[0x7531_6420], &[1.0; 8], 8, 8);
        for n in 0..8 {
            assert_eq!(packed.zeros[n], n as u8, "zero of column {n}");
            assert_eq!(
                packed.words[n],
                n as u32 * 0x1111_1111,
                "codes of column {n}"
            );
        }
        // (q - z) * s = 0 everywhere here.
        assert!(packed.dequantize().iter().all(|&w| w == 0.0));
    }

    #[test]
    fn awq_and_our_layout_stand_for_the_same_weight() {
        let (n_out, k_in, group) = (24, 48, 16);
        let groups = k_in / group;
        // Codes, zeros and scales in AWQ's [K, N] / [K/G, N] orientation, from a simple hash.
        let hash = |i: usize| ((i.wrapping_mul(2654435761) >> 7) % 16) as u32;
        let codes: Vec<u32> = (0..k_in * n_out).map(hash).collect();
        let zeros: Vec<u32> = (0..groups * n_out).map(|i| hash(i + 7)).collect();
        let scales: Vec<f32> = (0..groups * n_out)
            .map(|i| f32::from(half::f16::from_f32(0.001 * (1 + i % 13) as f32)))
            .collect();
        let layout = AwqLayout {
            group,
            not_convert: Vec::new(),
        };
        let packed = layout.to_packed(
            &pack_awq(&codes, k_in, n_out),
            &pack_awq(&zeros, groups, n_out),
            &scales,
            n_out,
            k_in,
        );
        let weight = packed.dequantize(); // [n_out, k_in]
        for n in 0..n_out {
            for k in 0..k_in {
                let at = (k / group) * n_out + n;
                let want = (codes[k * n_out + n] as f32 - zeros[at] as f32) * scales[at];
                assert_eq!(weight[n * k_in + k], want, "W[{k}, {n}]");
            }
        }
    }

    #[test]
    fn which_layers_are_quantized() {
        let layout = AwqLayout {
            group: 128,
            not_convert: vec!["vision_model".into(), "perceiver_resampler".into()],
        };
        assert!(layout.quantizes("model.text_model.layers.3.mlp.down_proj"));
        assert!(layout.quantizes("model.connector.modality_projection.up_proj"));
        assert!(!layout.quantizes("model.vision_model.encoder.layers.0.mlp.fc1"));
        assert!(!layout.quantizes("model.connector.perceiver_resampler.layers.0.self_attn.q_proj"));
        assert!(!layout.quantizes("lm_head"));
        assert!(layout.check_shape(1024, 4096).is_ok());
        assert!(layout.check_shape(1020, 4096).is_err());
        assert!(layout.check_shape(1024, 4000).is_err());
    }
}
