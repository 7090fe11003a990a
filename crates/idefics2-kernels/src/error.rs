//! Errors raised where data enters the crate (quantization, upload); the matmul itself stays
//! infallible once its inputs are checked.

use crate::format::QuantFormat;

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("bad quantization format: {0}")]
    Format(String),
    #[error("weight has {got} values, expected n_out {n_out} x k_in {k_in}")]
    WeightLen {
        n_out: usize,
        k_in: usize,
        got: usize,
    },
    #[error(
        "row {row}, group {group}: scale {scale} is out of f16's range (weight values too large \
         or not finite)"
    )]
    ScaleOutOfRange {
        row: usize,
        group: usize,
        scale: f32,
    },
    #[error(
        "{format:?} weight [{n_out}, {k_in}]: the {what} takes {bytes} bytes, over the \
         device's {limit}-byte storage binding limit"
    )]
    BindingTooLarge {
        format: QuantFormat,
        n_out: usize,
        k_in: usize,
        what: &'static str,
        bytes: u64,
        limit: u64,
    },
}
