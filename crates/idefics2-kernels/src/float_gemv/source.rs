//! The WGSL template of the float GEMV and the code generated into it.

use burn::backend::wgpu::{KernelSource, SourceTemplate};
use burn::cubecl::prelude::KernelId;

use crate::caps::lane_builtin;
use crate::quant_matmul::source::{
    LANES, quad_indices, row_indices, row_quad_lines, store, x_functions,
};
use crate::weight::BLOCK_COLS;

/// Threads of one workgroup.
pub(crate) const WORKGROUP: usize = 64;

/// The float GEMV for `rows` activation rows per block (1 to 64).
pub(crate) struct FloatGemv {
    pub rows: usize,
    /// Column quads (of 4 columns) one thread computes.
    pub quads: usize,
    /// x read as vec4s (`k_in` a multiple of 4).
    pub x_vec4: bool,
    /// The subgroup size S over which x is shared, in chunks of 4 S values (CPU adapters with
    /// subgroups); `None`: every lane loads its x.
    pub subgroup_x: Option<usize>,
}

impl FloatGemv {
    /// K values per trip of the main loop.
    fn chunk(&self) -> usize {
        4 * self.subgroup_x.unwrap_or(1)
    }

    /// The products of one quad of x per row (`{x}{r}`, values k0 + 4 j .. k0 + 4 j + 4) with the
    /// weight's 4 values of K at each of the thread's quads; `clamp`: the weight's k clamped to
    /// the last one (the tail, whose x past k_in is zero).
    fn quad_products(&self, x: &str, j: usize, clamp: bool) -> String {
        let indent = "        ";
        let mut out = Vec::new();
        for (i, lane) in LANES.iter().enumerate() {
            let k = format!("k0 + {}u", 4 * j + i);
            let k = if clamp {
                format!("min({k}, k_in - 1u)")
            } else {
                k
            };
            for u in 0..self.quads {
                out.push(format!(
                    "{indent}let w{u}_{i} = w[wb{u} + ({k}) * BLOCK_QUADS];"
                ));
            }
            for r in 0..self.rows {
                for u in 0..self.quads {
                    out.push(format!("{indent}acc{r}_{u} += {x}{r}.{lane} * w{u}_{i};"));
                }
            }
        }
        out.join("\n")
    }

    /// A full chunk: with x shared, each lane loads quad `lane` of the chunk per row and the
    /// chunk's quads are broadcast from constant lanes (written out: llvmpipe runs broadcasts
    /// slower inside loops); else one quad per row loaded by every lane.
    fn chunk_body(&self) -> String {
        let indent = "        ";
        let Some(lanes) = self.subgroup_x else {
            let mut out: Vec<String> = (0..self.rows)
                .map(|r| format!("{indent}let x{r} = x_quad(row{r}, k0);"))
                .collect();
            out.push(self.quad_products("x", 0, false));
            return out.join("\n");
        };
        let mut out: Vec<String> = (0..self.rows)
            .map(|r| format!("{indent}let xt{r} = x_quad(row{r}, k0 + 4u * lane);"))
            .collect();
        for j in 0..lanes {
            out.push(format!("{indent}{{"));
            for r in 0..self.rows {
                out.push(format!(
                    "{indent}let xb{r} = subgroupBroadcast(xt{r}, {j}u);"
                ));
            }
            out.push(self.quad_products("xb", j, false));
            out.push(format!("{indent}}}"));
        }
        out.join("\n")
    }

    fn tail_body(&self) -> String {
        let mut out: Vec<String> = (0..self.rows)
            .map(|r| format!("        let x{r} = x_quad_guarded(row{r}, k0);"))
            .collect();
        out.push(self.quad_products("x", 0, true));
        out.join("\n")
    }
}

impl KernelSource for FloatGemv {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(include_str!("../../../../shaders/float_gemv.wgsl"))
            .register("workgroup_size", WORKGROUP.to_string())
            .register("quads_per_thread", self.quads.to_string())
            .register("block_quads", (BLOCK_COLS / 4).to_string())
            .register("chunk", self.chunk().to_string())
            .register("rows", self.rows.to_string())
            .register("x_functions", x_functions(self.x_vec4))
            .register("lane_builtin", lane_builtin(self.subgroup_x.is_some()))
            .register("row_indices", row_indices(self.rows))
            .register("quads", quad_indices(self.quads, &[("wb", "k_in")]))
            .register(
                "init",
                row_quad_lines(self.rows, self.quads, "    ", |r, u| {
                    format!("var acc{r}_{u} = vec4<f32>(0.0);")
                }),
            )
            .register("chunk_body", self.chunk_body())
            .register("tail_body", self.tail_body())
            .register("store", store(self.rows, self.quads))
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.rows, self.quads, self.x_vec4, self.subgroup_x))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placeholder filled, the sums and broadcasts where they belong.
    #[test]
    fn template_is_filled_completely() {
        for (rows, x_vec4, subgroup_x) in [(3, true, Some(8)), (8, false, None)] {
            let source = FloatGemv {
                rows,
                quads: 4,
                x_vec4,
                subgroup_x,
            }
            .source()
            .complete();
            assert!(!source.contains("{{"), "unfilled placeholder in\n{source}");
            assert!(source.contains("fn main("));
            let last = rows - 1;
            assert!(
                source.contains(&format!("acc{last}_3"))
                    && !source.contains(&format!("acc{rows}_"))
            );
            assert_eq!(
                source.contains("subgroupBroadcast(xt0, 7u)"),
                subgroup_x.is_some()
            );
            let chunk = 4 * subgroup_x.unwrap_or(1);
            assert!(source.contains(&format!("const CHUNK: u32 = {chunk}u;")));
        }
    }
}
