//! The WGSL templates of the quantized matmul and the values filled into them.

use burn::backend::wgpu::{KernelSource, SourceTemplate};
use burn::cubecl::prelude::KernelId;

use crate::format::QuantFormat;

/// Output columns one GEMV workgroup computes.
pub(crate) const GEMV_COLS: usize = 4;
/// Threads of one GEMV workgroup.
pub(crate) const GEMV_WORKGROUP: usize = 64;
/// Most activation rows the GEMV handles; more go to the GEMM.
pub const GEMV_MAX_ROWS: usize = 8;
/// Output tile of one GEMM workgroup (rows and columns).
pub(crate) const GEMM_TILE: usize = 64;

/// GEMV for `rows` activation rows (1..=[`GEMV_MAX_ROWS`]).
pub(crate) struct QuantGemv {
    pub format: QuantFormat,
    pub rows: usize,
}

/// Tiled GEMM for any number of activation rows.
pub(crate) struct QuantGemm {
    pub format: QuantFormat,
}

impl KernelSource for QuantGemv {
    fn source(&self) -> SourceTemplate {
        let template = SourceTemplate::new(include_str!("../../../../shaders/quant_gemv.wgsl"))
            .register("rows", self.rows.to_string())
            .register("cols", GEMV_COLS.to_string())
            .register("workgroup_size", GEMV_WORKGROUP.to_string());
        register_format(template, self.format)
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.format, self.rows))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

impl KernelSource for QuantGemm {
    fn source(&self) -> SourceTemplate {
        let template = SourceTemplate::new(include_str!("../../../../shaders/quant_gemm.wgsl"));
        register_format(template, self.format)
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.format)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The binding of the zeros buffer when the format has one (right after `out`).
const ZEROS_BINDING: &str = "@group(0) @binding(4) var<storage, read_write> zeros: array<f32>;";

/// Fills the template parameters both kernels share: code width and sign, group size, and the
/// zero-point binding that only some formats have (which moves the metadata uniform, always the
/// last binding, from 4 to 5).
fn register_format(template: SourceTemplate, format: QuantFormat) -> SourceTemplate {
    let (zero_point_binding, zero_point, params_binding) = if format.has_zero_point() {
        (ZEROS_BINDING, "zeros[at]", "5")
    } else {
        ("", "0.0", "4")
    };
    template
        .register("bits", format.bits().to_string())
        .register(
            "signed",
            matches!(format, QuantFormat::Q8 { .. }).to_string(),
        )
        .register(
            "group_words",
            (format.group() / format.values_per_word()).to_string(),
        )
        .register("zero_point_binding", zero_point_binding)
        .register("zero_point", zero_point)
        .register("params_binding", params_binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A placeholder the template forgets to fill turns silently into an empty string, so every
    /// `{{name}}` must be gone and the values must be where the shader expects them.
    #[test]
    fn templates_are_filled_completely() {
        for format in [QuantFormat::Q8_32, QuantFormat::Q4 { group: 128 }] {
            let gemv = QuantGemv { format, rows: 3 }.source().complete();
            let gemm = QuantGemm { format }.source().complete();
            for source in [&gemv, &gemm] {
                assert!(!source.contains("{{"), "unfilled placeholder in\n{source}");
                assert!(source.contains("fn main("));
                assert_eq!(
                    source.contains("var<storage, read_write> zeros"),
                    format.has_zero_point()
                );
            }
            assert!(gemv.contains("const ROWS: u32 = 3u;"));
            let group_words = format.group() / format.values_per_word();
            assert!(gemm.contains(&format!("const GROUP_WORDS: u32 = {group_words}u;")));
        }
    }
}
