//! The quantized matmul in plain burn ops: unpack the codes with integer ops, dequantize, then
//! matmul. The CPU device runs this, and it is the oracle the WGSL kernels are tested against.

use burn::tensor::kind::Basic;
use burn::tensor::{DType, Int, Tensor};

use crate::format::QuantFormat;
use crate::weight::{BLOCK_COLS, QuantizedWeight, padded_n_out};

/// The f32 weight `[n_out, k_in]` that `w` stands for.
pub fn dequantize_reference(w: &QuantizedWeight) -> Tensor<2> {
    let n_out = w.n_out;
    let tensors = w.tensors();
    let words_per_row = w.format.words_per_row(w.k_in);
    let words = unblock(tensors.words, words_per_row, n_out); // [n_out, words_per_row]
    let (bits, per_word, group) = (
        w.format.bits(),
        w.format.values_per_word(),
        w.format.group(),
    );
    let groups = w.format.groups_per_row(w.k_in);
    // [n_pad / 128 * groups, 128] (f16 or f32) -> [n_out, groups, 1] f32
    let per_group = |t: &Tensor<2>| {
        unblock(t.clone().cast(DType::F32), groups, n_out).reshape([n_out, groups, 1])
    };
    let mask = (1i64 << bits) - 1;
    // Value i of every word, for each i: [n_out, words_per_row] each.
    let codes: Vec<Tensor<2, Int>> = (0..per_word)
        .map(|i| {
            words
                .clone()
                .bitwise_right_shift_scalar((bits * i) as i64)
                .bitwise_and_scalar(mask)
        })
        .collect();
    let codes = Tensor::<2, Int>::stack::<3>(codes, 2) // [n_out, words_per_row, per_word]
        .reshape([n_out, groups, group]); // [n_out, groups, group]
    let codes = match w.format {
        // Two's complement: 0..=255 -> -128..=127.
        QuantFormat::Q8 { .. } => codes.bitwise_xor_scalar(0x80).sub_scalar(0x80),
        QuantFormat::Q4 { .. } => codes,
    };
    let mut values = codes.float(); // [n_out, groups, group]
    if let Some(zeros) = &tensors.zeros {
        values = values - per_group(zeros);
    }
    let values = values * per_group(&tensors.scales);
    values
        .reshape([n_out, groups * group]) // [n_out, k_padded]
        .slice([0..n_out, 0..w.k_in]) // [n_out, k_in]
}

/// A device tensor of a [`QuantizedWeight`] (`[n_pad / 128 * rows, 128]`: transposed in blocks of
/// 128 columns, padded) back to one row per output column: `[n_out, rows]`.
fn unblock<K: Basic>(t: Tensor<2, K>, rows: usize, n_out: usize) -> Tensor<2, K> {
    let n_pad = padded_n_out(n_out);
    t.reshape([n_pad / BLOCK_COLS, rows, BLOCK_COLS])
        .swap_dims(0, 1)
        .reshape([rows, n_pad])
        .slice([0..rows, 0..n_out])
        .transpose()
}

/// `x [m, k_in] @ dequantize(w)^T -> [m, n_out]`, in the dtype of `x`.
pub fn quant_matmul_reference(x: Tensor<2>, w: &QuantizedWeight) -> Tensor<2> {
    let weight = dequantize_reference(w).cast(x.dtype()); // [n_out, k_in]
    x.matmul(weight.transpose()) // [m, n_out]
}
