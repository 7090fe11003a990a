//! The WGSL templates of the quantized matmul and the values filled into them.

use burn::backend::wgpu::{KernelSource, SourceTemplate};
use burn::cubecl::prelude::KernelId;

use crate::caps::lane_builtin;

use crate::format::QuantFormat;
use crate::weight::BLOCK_COLS;

/// Output columns one GEMV thread computes (adjacent ones, read as one vec4 per packed word).
pub(crate) const GEMV_COLS: usize = 4;
/// Threads of one GEMV workgroup; a workgroup computes `GEMV_WORKGROUP * GEMV_COLS` columns.
pub(crate) const GEMV_WORKGROUP: usize = 64;
/// Most activation rows one GEMV thread holds; more go to the tiled GEMM on GPUs and to blocks
/// of this many rows (grid z) on CPU adapters.
pub const GEMV_MAX_ROWS: usize = 8;
/// Output tile of one GEMM workgroup (rows and columns).
pub(crate) const GEMM_TILE: usize = 64;

/// GEMV for `rows` activation rows (1..=[`GEMV_MAX_ROWS`]), each thread computing
/// `quads_per_thread` quads of [`GEMV_COLS`] columns; `x_vec4` when `k_in` is a multiple of 4 (x
/// is then read as vec4s).
pub(crate) struct QuantGemv {
    pub format: QuantFormat,
    /// Scales and zero points stored as f16 (else f32).
    pub scale_f16: bool,
    pub rows: usize,
    pub quads_per_thread: usize,
    pub x_vec4: bool,
    /// The subgroup size S when x is loaded once per subgroup, 4 values per lane (a group of the
    /// format: 4 S values), and spread by broadcasts (CPU adapters with subgroups).
    pub subgroup_x: Option<usize>,
}

/// Tiled GEMM for any number of activation rows.
pub(crate) struct QuantGemm {
    pub format: QuantFormat,
    /// Scales and zero points stored as f16 (else f32).
    pub scale_f16: bool,
}

impl KernelSource for QuantGemv {
    fn source(&self) -> SourceTemplate {
        let code = GemvCode::new(
            self.format,
            self.rows,
            self.quads_per_thread,
            self.subgroup_x,
        );
        let template = SourceTemplate::new(include_str!("../../../../shaders/quant_gemv.wgsl"))
            .register("workgroup_size", GEMV_WORKGROUP.to_string())
            .register("block_quads", (BLOCK_COLS / GEMV_COLS).to_string())
            .register("quads_per_thread", self.quads_per_thread.to_string())
            .register("rows", self.rows.to_string())
            .register("row_indices", row_indices(self.rows))
            .register(
                "quads",
                quad_indices(
                    self.quads_per_thread,
                    &[
                        ("wb", "params.words_per_row"),
                        ("sb", "params.groups_per_row"),
                    ],
                ),
            )
            .register("x_functions", x_functions(self.x_vec4))
            .register("init", code.init())
            .register("group_init", code.group_init())
            .register("full_group_words", code.full_group_words())
            .register("word_body_tail", code.word_body(XSource::Guarded))
            .register("lane_builtin", lane_builtin(self.subgroup_x.is_some()))
            .register("group_end", code.group_end())
            .register("store", store(self.rows, self.quads_per_thread));
        register_format(template, self.format, self.scale_f16, true)
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((
            self.format,
            self.scale_f16,
            self.rows,
            self.quads_per_thread,
            self.x_vec4,
            self.subgroup_x,
        ))
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
    bits: usize,
    zero_point: bool,
    signed: bool,
    group_words: usize,
    subgroup_x: Option<usize>,
}

/// Where a word body takes its x quads from.
#[derive(Clone, Copy)]
enum XSource {
    /// Loaded by every lane, inside the row.
    Plain,
    /// Loaded by every lane, zeros past `k_in` (the last group).
    Guarded,
    /// Broadcast from the group's x loaded by the subgroup, this word's first quad being lane
    /// `first_lane`'s.
    Broadcast { first_lane: usize },
}

pub(crate) const LANES: [&str; 4] = ["x", "y", "z", "w"];

impl GemvCode {
    fn new(format: QuantFormat, rows: usize, quads: usize, subgroup_x: Option<usize>) -> Self {
        if let Some(lanes) = subgroup_x {
            assert_eq!(
                format.group(),
                4 * lanes,
                "x shared over the subgroup: 4 values per lane make one group of {format:?}"
            );
        }
        Self {
            rows,
            quads,
            values_per_word: format.values_per_word(),
            bits: format.bits(),
            zero_point: format.has_zero_point(),
            signed: matches!(format, QuantFormat::Q8 { .. }),
            group_words: format.group() / format.values_per_word(),
            subgroup_x,
        }
    }

    /// The words of a group that lies wholly before `k_in`: a loop over its words, each loading
    /// its x; or, with x shared over the subgroup, the group's x loaded once (one quad per lane)
    /// and its words written out (no loop: llvmpipe runs the broadcasts of even a one-trip loop
    /// 30% slower), each taking its x quads from constant lanes.
    fn full_group_words(&self) -> String {
        if self.subgroup_x.is_none() {
            return format!(
                "        for (var gw = 0u; gw < GROUP_WORDS; gw++) {{\n            \
                 let w = g * GROUP_WORDS + gw;\n            \
                 let k0 = w * VALUES_PER_WORD;\n{}\n        }}",
                self.word_body(XSource::Plain)
            );
        }
        let mut out: Vec<String> = (0..self.rows)
            .map(|r| {
                format!(
                    "        let xt{r} = x_quad(row{r}, g * GROUP_WORDS * VALUES_PER_WORD + 4u * lane);"
                )
            })
            .collect();
        for gw in 0..self.group_words {
            out.push(format!(
                "        {{\n            let w = g * GROUP_WORDS + {gw}u;\n{}\n        }}",
                self.word_body(XSource::Broadcast {
                    first_lane: gw * self.values_per_word / 4
                })
            ));
        }
        out.join("\n")
    }

    /// One line per (row, quad).
    fn lines(&self, indent: &str, line: impl Fn(usize, usize) -> String) -> String {
        row_quad_lines(self.rows, self.quads, indent, line)
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
    /// quads), their sums (for the zero point), the codes, and the products. Unsigned codes are
    /// taken in place (`codes_in_place`, value `i` times `2^(bits i)`) against x values scaled by
    /// `2^(-bits i)`; the last value of the word is shifted down (`codes_high`), its x unscaled.
    fn word_body(&self, x_source: XSource) -> String {
        let indent = "            ";
        let x_quads = self.values_per_word / 4;
        let mut out = Vec::new();
        for u in 0..self.quads {
            out.push(format!(
                "{indent}let word{u} = words[wb{u} + w * BLOCK_QUADS];"
            ));
        }
        for r in 0..self.rows {
            for j in 0..x_quads {
                let quad = match x_source {
                    XSource::Plain => format!("x_quad(row{r}, k0 + {}u)", 4 * j),
                    XSource::Guarded => format!("x_quad_guarded(row{r}, k0 + {}u)", 4 * j),
                    XSource::Broadcast { first_lane } => {
                        format!("subgroupBroadcast(xt{r}, {}u)", first_lane + j)
                    }
                };
                out.push(format!("{indent}let x{r}_{j} = {quad};"));
            }
            if self.zero_point {
                let sum = (0..x_quads)
                    .map(|j| format!("x{r}_{j}"))
                    .collect::<Vec<_>>()
                    .join(" + ");
                out.push(format!("{indent}xsum{r} += dot({sum}, vec4<f32>(1.0));"));
            }
            if !self.signed {
                for j in 0..x_quads {
                    out.push(format!(
                        "{indent}let xs{r}_{j} = x{r}_{j} * {};",
                        self.x_scales(j)
                    ));
                }
            }
        }
        let x_name = if self.signed { "x" } else { "xs" };
        for i in 0..self.values_per_word {
            for u in 0..self.quads {
                let code = if self.signed {
                    format!("codes(word{u}, {i}u)")
                } else if i + 1 == self.values_per_word {
                    format!("codes_high(word{u})")
                } else {
                    format!("codes_in_place(word{u}, {i}u)")
                };
                out.push(format!("{indent}let c{u}_{i} = {code};"));
                for r in 0..self.rows {
                    out.push(format!(
                        "{indent}dot{r}_{u} += {x_name}{r}_{}.{} * c{u}_{i};",
                        i / 4,
                        LANES[i % 4]
                    ));
                }
            }
        }
        out.join("\n")
    }

    /// The factors `2^(-bits i)` for values `4 j .. 4 j + 4` of a word (1 for the last value,
    /// which `codes_high` shifts down), as a WGSL vec4 literal.
    fn x_scales(&self, j: usize) -> String {
        let factors = (4 * j..4 * j + 4)
            .map(|i| {
                let exponent = if i + 1 == self.values_per_word {
                    0
                } else {
                    (self.bits * i) as i32
                };
                format!("{:e}", 2f64.powi(-exponent))
            })
            .collect::<Vec<_>>();
        format!("vec4<f32>({})", factors.join(", "))
    }

    /// Each quad's scale (and zero point) applied to the group's sums.
    fn group_end(&self) -> String {
        let indent = "        ";
        let mut out = Vec::new();
        for u in 0..self.quads {
            out.push(format!(
                "{indent}let scale{u} = load_scales(sb{u} + g * BLOCK_QUADS);"
            ));
            if self.zero_point {
                out.push(format!(
                    "{indent}let zero{u} = load_zeros(sb{u} + g * BLOCK_QUADS);"
                ));
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
}

/// The GEMVs' x: its binding and `x_quad` / `x_quad_guarded` / `x_scalar` (`shaders/gemv_x.wgsl`),
/// read as vec4s when `k_in` is a multiple of 4 (`x_vec4`), else as floats.
pub(crate) fn x_functions(x_vec4: bool) -> String {
    let (binding, body) = if x_vec4 {
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
    include_str!("../../../../shaders/gemv_x.wgsl")
        .replace("{{x_binding}}", binding)
        .replace("{{x_quad_body}}", body)
}

/// Lines `line(r, u)` for every row `r` and column quad `u` of a GEMV thread, indented.
pub(crate) fn row_quad_lines(
    rows: usize,
    quads: usize,
    indent: &str,
    line: impl Fn(usize, usize) -> String,
) -> String {
    (0..rows)
        .flat_map(|r| (0..quads).map(move |u| (r, u)))
        .map(|(r, u)| format!("{indent}{}", line(r, u)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A GEMV thread's quads: `qd{u}` (may lie past the last quad: nothing is stored then), `q{u}`
/// (clamped, for loads) and where the quad starts in each column-blocked array, in vec4 units:
/// `{name}{u}` for every `(name, rows per block)` of `arrays` (the next row is `BLOCK_QUADS` on).
pub(crate) fn quad_indices(quads: usize, arrays: &[(&str, &str)]) -> String {
    (0..quads)
        .map(|u| {
            let mut out = format!(
                "    let qd{u} = thread * QPT + {u}u;\n    let q{u} = min(qd{u}, quads - 1u);"
            );
            for (name, rows) in arrays {
                out += &format!(
                    "\n    let {name}{u} = (q{u} / BLOCK_QUADS) * {rows} * BLOCK_QUADS + q{u} % BLOCK_QUADS;"
                );
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A GEMV block's rows: `row{r}`, clamped to the last row of x for loads (rows past `m` store
/// nothing).
pub(crate) fn row_indices(rows: usize) -> String {
    (0..rows)
        .map(|r| format!("    let row{r} = min(block_row + {r}u, params.m - 1u);"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A GEMV thread's stores: `acc{r}_{u}` (4 columns of quad `u`, row `r`) to `out[base + row
/// n_out + column]`, for the quads, rows and columns that exist.
pub(crate) fn store(rows: usize, quads: usize) -> String {
    let mut out = Vec::new();
    for u in 0..quads {
        out.push(format!("    if (qd{u} < quads) {{"));
        out.push(format!("        let n0 = 4u * qd{u};"));
        for r in 0..rows {
            out.push(format!("        if (block_row + {r}u < params.m) {{"));
            for (c, lane) in LANES.iter().enumerate() {
                out.push(format!(
                    "            if (n0 + {c}u < n_out) {{ out[base + row{r} * n_out + n0 + {c}u] = acc{r}_{u}.{lane}; }}"
                ));
            }
            out.push("        }".into());
        }
        out.push("    }".into());
    }
    out.join("\n")
}

impl KernelSource for QuantGemm {
    fn source(&self) -> SourceTemplate {
        let template = SourceTemplate::new(include_str!("../../../../shaders/quant_gemm.wgsl"));
        register_format(template, self.format, self.scale_f16, false)
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.format, self.scale_f16))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Fills the template parameters both kernels share: code width and sign, group size, the
/// declarations of scales and zero points with the functions that read them as f32
/// (`load_scale`), and the zero point that only some formats have (whose binding moves the
/// metadata uniform, always the last binding, from 4 to 5). f16 scales and zero points are read
/// as pairs in u32 words and unpacked with `unpack2x16float` (core WGSL: no `enable f16`, no
/// shader-f16 needed to run the kernel). `vec4`: the GEMV reads 4 columns at a time.
fn register_format(
    template: SourceTemplate,
    format: QuantFormat,
    scale_f16: bool,
    vec4: bool,
) -> SourceTemplate {
    let zero_point = format.has_zero_point();
    let element = match (scale_f16, vec4) {
        (false, false) => "f32",
        (false, true) => "vec4<f32>",
        (true, false) => "u32",
        (true, true) => "vec2<u32>",
    };
    let declare = |binding: usize, name: &str| {
        format!("@group(0) @binding({binding}) var<storage, read_write> {name}: array<{element}>;")
    };
    let read = |name: &str| match (scale_f16, vec4) {
        (false, _) => format!("return {name}[at];"),
        (true, false) => format!("return unpack2x16float({name}[at / 2u])[at % 2u];"),
        (true, true) => format!(
            "let pair = {name}[at];\n    return vec4<f32>(unpack2x16float(pair.x), unpack2x16float(pair.y));"
        ),
    };
    let result = if vec4 { "vec4<f32>" } else { "f32" };
    let (load_scale, load_zero) = if vec4 {
        ("load_scales", "load_zeros")
    } else {
        ("load_scale", "zero_point")
    };
    let mut functions = format!(
        "fn {load_scale}(at: u32) -> {result} {{\n    {}\n}}",
        read("scales")
    );
    functions += &format!("\n\nfn {load_zero}(at: u32) -> {result} {{\n    ");
    functions += &if zero_point {
        read("zeros")
    } else {
        format!("return {result}(0.0);")
    };
    functions += "\n}";
    template
        .register("scale_binding", declare(2, "scales"))
        // Right after `out`.
        .register(
            "zero_point_binding",
            if zero_point {
                declare(4, "zeros")
            } else {
                String::new()
            },
        )
        .register("load_scale", functions)
        .register("params_binding", if zero_point { "5" } else { "4" })
        .register("bits", format.bits().to_string())
        .register(
            "signed",
            matches!(format, QuantFormat::Q8 { .. }).to_string(),
        )
        .register(
            "group_words",
            (format.group() / format.values_per_word()).to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A placeholder the template forgets to fill turns silently into an empty string, so every
    /// `{{name}}` must be gone and the values must be where the shader expects them.
    #[test]
    fn templates_are_filled_completely() {
        for (format, scale_f16) in [
            (QuantFormat::Q8_32, false),
            (QuantFormat::Q4 { group: 128 }, true),
        ] {
            let subgroup_x = (format.group() == 32).then_some(8);
            let gemv = QuantGemv {
                format,
                scale_f16,
                rows: 3,
                quads_per_thread: 2,
                x_vec4: true,
                subgroup_x,
            }
            .source()
            .complete();
            let gemm = QuantGemm { format, scale_f16 }.source().complete();
            for source in [&gemv, &gemm] {
                assert!(!source.contains("{{"), "unfilled placeholder in\n{source}");
                assert!(source.contains("fn main("));
                assert_eq!(
                    source.contains("var<storage, read_write> zeros"),
                    format.has_zero_point()
                );
                assert_eq!(source.contains("unpack2x16float("), scale_f16);
                assert!(!source.contains("enable f16"));
            }
            assert!(gemv.contains("acc2_1") && !gemv.contains("acc3_") && !gemv.contains("acc0_2"));
            let group_words = format.group() / format.values_per_word();
            assert!(gemm.contains(&format!("const GROUP_WORDS: u32 = {group_words}u;")));
        }
    }
}
