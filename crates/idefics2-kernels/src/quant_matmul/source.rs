//! The WGSL templates of the quantized matmul and the values filled into them.

use burn::backend::wgpu::{KernelSource, SourceTemplate};
use burn::cubecl::prelude::KernelId;

use crate::format::QuantFormat;

/// Output columns one GEMV thread computes (adjacent ones, read as one vec4 per packed word).
pub(crate) const GEMV_COLS: usize = 4;
/// Threads of one GEMV workgroup; a workgroup computes `GEMV_WORKGROUP * GEMV_COLS` columns.
pub(crate) const GEMV_WORKGROUP: usize = 64;
/// Most activation rows the GEMV handles; more go to the GEMM.
pub const GEMV_MAX_ROWS: usize = 8;
/// Output tile of one GEMM workgroup (rows and columns).
pub(crate) const GEMM_TILE: usize = 64;

/// GEMV for `rows` activation rows (1..=[`GEMV_MAX_ROWS`]), each thread computing
/// `quads_per_thread` quads of [`GEMV_COLS`] columns; `x_vec4` when `k_in` is a multiple of 4 (x
/// is then read as vec4s).
pub(crate) struct QuantGemv {
    pub format: QuantFormat,
    pub rows: usize,
    pub quads_per_thread: usize,
    pub x_vec4: bool,
}

/// Tiled GEMM for any number of activation rows.
pub(crate) struct QuantGemm {
    pub format: QuantFormat,
}

impl KernelSource for QuantGemv {
    fn source(&self) -> SourceTemplate {
        let (x_binding, x_quad_body) = if self.x_vec4 {
            (
                "@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;\n\
                 fn x_scalar(i: u32) -> f32 { return x[i / 4u][i % 4u]; }",
                "return x[at / 4u];",
            )
        } else {
            (
                "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
                 fn x_scalar(i: u32) -> f32 { return x[i]; }",
                "return vec4<f32>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]);",
            )
        };
        let code = GemvCode::new(self.format, self.rows, self.quads_per_thread);
        let template = SourceTemplate::new(include_str!("../../../../shaders/quant_gemv.wgsl"))
            .register("workgroup_size", GEMV_WORKGROUP.to_string())
            .register("quads_per_thread", self.quads_per_thread.to_string())
            .register("quads", code.quad_indices())
            .register("x_binding", x_binding)
            .register("x_quad_body", x_quad_body)
            .register("init", code.init())
            .register("group_init", code.group_init())
            .register("word_body", code.word_body(false))
            .register("word_body_tail", code.word_body(true))
            .register("group_end", code.group_end())
            .register("store", code.store());
        register_format(template, self.format, "vec4<f32>")
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.format, self.rows, self.quads_per_thread, self.x_vec4))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The GEMV's statements written out row by row and quad by quad: every row's sums live in their
/// own variables (`acc{r}_{u}`, `dot{r}_{u}`: vec4s over quad `u`'s 4 columns; `xsum{r}`), so
/// that no compiler has to unroll loops over arrays to keep them in registers.
struct GemvCode {
    rows: usize,
    quads: usize,
    values_per_word: usize,
    zero_point: bool,
}

const LANES: [&str; 4] = ["x", "y", "z", "w"];

impl GemvCode {
    fn new(format: QuantFormat, rows: usize, quads: usize) -> Self {
        Self {
            rows,
            quads,
            values_per_word: format.values_per_word(),
            zero_point: format.has_zero_point(),
        }
    }

    /// One line per (row, quad).
    fn lines(&self, indent: &str, line: impl Fn(usize, usize) -> String) -> String {
        (0..self.rows)
            .flat_map(|r| (0..self.quads).map(move |u| (r, u)))
            .map(|(r, u)| format!("{indent}{}", line(r, u)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The thread's quads: `qd{u}` (may lie past the last quad: nothing is stored then) and
    /// `q{u}` (clamped, for loads).
    fn quad_indices(&self) -> String {
        (0..self.quads)
            .map(|u| {
                format!(
                    "    let qd{u} = thread * QPT + {u}u;\n    let q{u} = min(qd{u}, quads - 1u);"
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn init(&self) -> String {
        self.lines("    ", |r, u| format!("var acc{r}_{u} = vec4<f32>(0.0);"))
    }

    fn group_init(&self) -> String {
        let mut out = self.lines("        ", |r, u| {
            format!("var dot{r}_{u} = vec4<f32>(0.0);")
        });
        if self.zero_point {
            for r in 0..self.rows {
                out += &format!("\n        var xsum{r} = 0.0;");
            }
        }
        out
    }

    /// One packed word per quad (starting at `k0`): the x values per row (loaded once for all
    /// quads), their sums (for the zero point), the codes, and the products.
    fn word_body(&self, guarded: bool) -> String {
        let indent = "            ";
        let x_quads = self.values_per_word / 4;
        let load = if guarded { "x_quad_guarded" } else { "x_quad" };
        let mut out = Vec::new();
        for u in 0..self.quads {
            out.push(format!("{indent}let word{u} = words[w * quads + q{u}];"));
        }
        for r in 0..self.rows {
            for j in 0..x_quads {
                out.push(format!(
                    "{indent}let x{r}_{j} = {load}({r}u, k0 + {}u);",
                    4 * j
                ));
            }
            if self.zero_point {
                let sum = (0..x_quads)
                    .map(|j| format!("x{r}_{j}"))
                    .collect::<Vec<_>>()
                    .join(" + ");
                out.push(format!("{indent}xsum{r} += dot({sum}, vec4<f32>(1.0));"));
            }
        }
        for i in 0..self.values_per_word {
            for u in 0..self.quads {
                out.push(format!("{indent}let c{u}_{i} = codes(word{u}, {i}u);"));
                for r in 0..self.rows {
                    out.push(format!(
                        "{indent}dot{r}_{u} += x{r}_{}.{} * c{u}_{i};",
                        i / 4,
                        LANES[i % 4]
                    ));
                }
            }
        }
        out.join("\n")
    }

    /// Each quad's scale (and zero point) applied to the group's sums.
    fn group_end(&self) -> String {
        let indent = "        ";
        let mut out = Vec::new();
        for u in 0..self.quads {
            out.push(format!("{indent}let scale{u} = scales[g * quads + q{u}];"));
            if self.zero_point {
                out.push(format!("{indent}let zero{u} = zeros[g * quads + q{u}];"));
            }
        }
        out.push(self.lines(indent, |r, u| {
            if self.zero_point {
                format!("acc{r}_{u} += scale{u} * (dot{r}_{u} - zero{u} * xsum{r});")
            } else {
                format!("acc{r}_{u} += scale{u} * dot{r}_{u};")
            }
        }));
        out.join("\n")
    }

    fn store(&self) -> String {
        let mut out = Vec::new();
        for u in 0..self.quads {
            out.push(format!("    if (qd{u} < quads) {{"));
            out.push(format!("        let n0 = 4u * qd{u};"));
            for r in 0..self.rows {
                for (c, lane) in LANES.iter().enumerate() {
                    out.push(format!(
                        "        if (n0 + {c}u < n_out) {{ out[base + {r}u * n_out + n0 + {c}u] = acc{r}_{u}.{lane}; }}"
                    ));
                }
            }
            out.push("    }".into());
        }
        out.join("\n")
    }
}

impl KernelSource for QuantGemm {
    fn source(&self) -> SourceTemplate {
        let template = SourceTemplate::new(include_str!("../../../../shaders/quant_gemm.wgsl"));
        register_format(template, self.format, "f32")
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.format)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Fills the template parameters both kernels share: code width and sign, group size, and the
/// zero point that only some formats have (whose binding moves the metadata uniform, always the
/// last binding, from 4 to 5).
/// `zeros_element` is the element type of the zeros array (`f32`, or `vec4<f32>` for the GEMV).
fn register_format(
    template: SourceTemplate,
    format: QuantFormat,
    zeros_element: &str,
) -> SourceTemplate {
    let (zero_point_binding, zero_point, params_binding) = if format.has_zero_point() {
        (
            // Right after `out`.
            format!(
                "@group(0) @binding(4) var<storage, read_write> zeros: array<{zeros_element}>;"
            ),
            "zeros[at]",
            "5",
        )
    } else {
        (String::new(), "0.0", "4")
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
            let gemv = QuantGemv {
                format,
                rows: 3,
                quads_per_thread: 2,
                x_vec4: true,
            }
            .source()
            .complete();
            let gemm = QuantGemm { format }.source().complete();
            for source in [&gemv, &gemm] {
                assert!(!source.contains("{{"), "unfilled placeholder in\n{source}");
                assert!(source.contains("fn main("));
                assert_eq!(
                    source.contains("var<storage, read_write> zeros"),
                    format.has_zero_point()
                );
            }
            assert!(gemv.contains("acc2_1") && !gemv.contains("acc3_") && !gemv.contains("acc0_2"));
            let group_words = format.group() / format.values_per_word();
            assert!(gemm.contains(&format!("const GROUP_WORDS: u32 = {group_words}u;")));
        }
    }
}
