//! The WGSL template of the flash attention and the code generated into it.

use burn::backend::wgpu::{KernelSource, SourceTemplate};
use burn::cubecl::prelude::KernelId;

use crate::caps::lane_builtin;

/// Keys one step of the online softmax takes: the running max and the accumulator are rescaled
/// once per chunk, not once per key.
pub(crate) const CHUNK: usize = 4;
/// Most threads of one workgroup (fewer when the query is shorter).
pub(crate) const MAX_THREADS: usize = 64;

/// Flash attention for one head size: `threads` per workgroup holding `rows_per_thread` query
/// rows each, `split` when the keys are cut into slices whose partial results a reduction
/// combines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlashAttention {
    pub head_dim: usize,
    pub threads: usize,
    pub rows_per_thread: usize,
    pub split: bool,
    /// The subgroup size S when the K/V vec4s are loaded once per subgroup (lane l loads vec4s
    /// l, l + S, ...) and spread by broadcasts: CPU adapters with subgroups, S threads per
    /// workgroup, D / 4 a multiple of S.
    pub subgroup_kv: Option<usize>,
}

impl KernelSource for FlashAttention {
    fn source(&self) -> SourceTemplate {
        let code = Code {
            d4: self.head_dim / 4,
            rows: self.rows_per_thread,
            lanes: self.subgroup_kv,
        };
        SourceTemplate::new(include_str!("../../../../shaders/flash_attention.wgsl"))
            .register("workgroup_size", self.threads.to_string())
            .register("rows_per_thread", self.rows_per_thread.to_string())
            .register("d4", code.d4.to_string())
            .register("split", self.split.to_string())
            .register("chunk", CHUNK.to_string())
            .register("rows", code.rows())
            .register("q_load", code.q_load())
            .register("o_init", code.o_init())
            .register("chunk_body", code.chunk_body())
            .register("store", code.store())
            .register("lane_builtin", lane_builtin(self.subgroup_kv.is_some()))
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(*self)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Statements written out row by row (`r`), vec4 by vec4 (`i`) and key by key (`c`): `q{r}_{i}`,
/// `o{r}_{i}`, `s{r}_{c}`..., so that no compiler has to unroll loops over arrays to keep them in
/// registers.
struct Code {
    d4: usize,
    rows: usize,
    /// The subgroup size when the K/V loads are shared over the subgroup.
    lanes: Option<usize>,
}

impl Code {
    fn join(lines: impl IntoIterator<Item = String>, indent: &str) -> String {
        lines
            .into_iter()
            .map(|line| format!("{indent}{line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Each row's index (`row{r}_u` unclamped for the store, `row{r}` clamped) and position.
    fn rows(&self) -> String {
        Self::join(
            (0..self.rows).flat_map(|r| {
                [
                    format!("let row{r}_u = first_row + tid + {r}u * WG;"),
                    format!("let row{r} = min(row{r}_u, q_len - 1u);"),
                    format!("let pos{r} = row{r} + offset;"),
                ]
            }),
            "    ",
        )
    }

    fn q_load(&self) -> String {
        Self::join(
            (0..self.rows).flat_map(|r| {
                std::iter::once(format!("let qb{r} = (bh * q_len + row{r}) * D4;"))
                    .chain((0..self.d4).map(move |i| format!("let q{r}_{i} = q[qb{r} + {i}u];")))
            }),
            "    ",
        )
    }

    fn o_init(&self) -> String {
        Self::join(
            (0..self.rows).flat_map(|r| {
                (0..self.d4)
                    .map(move |i| format!("var o{r}_{i} = vec4<f32>(0.0);"))
                    .chain([format!("var m{r} = FAR;"), format!("var l{r} = 0.0;")])
            }),
            "    ",
        )
    }

    /// One chunk of [`CHUNK`] keys from `j`: scores (each K vec4 loaded once for all rows), each
    /// row's new running max, and the rescaled sums (each V vec4 loaded once for all rows). With
    /// `lanes`, each lane loads every `lanes`-th vec4 of a key row (`kt{c}_{i}`, `vt{c}_{i}`) and
    /// the others come by broadcast.
    fn chunk_body(&self) -> String {
        let (rows, d4) = (self.rows, self.d4);
        let mut out = Vec::new();
        for c in 0..CHUNK {
            out.push(format!("let j{c} = j + {c}u;"));
            out.push(format!(
                "let kj{c} = (kv_base + min(j{c}, kv_len - 1u)) * D4;"
            ));
            out.push(format!("let b{c} = key_bias(j{c}, hi, bias_row);"));
            for r in 0..rows {
                out.push(format!("var a{r}_{c} = vec4<f32>(0.0);"));
            }
            for i in 0..d4 {
                let load = self.kv_load("k", c, i, &mut out);
                let mut block = format!("{{ let kv = {load};");
                for r in 0..rows {
                    block += &format!(" a{r}_{c} = fma(q{r}_{i}, kv, a{r}_{c});");
                }
                out.push(block + " }");
            }
            for r in 0..rows {
                out.push(format!(
                    "let s{r}_{c} = score(a{r}_{c}.x + a{r}_{c}.y + a{r}_{c}.z + a{r}_{c}.w, j{c}, pos{r}, b{c}, scale);"
                ));
            }
        }
        for r in 0..rows {
            let scores: Vec<String> = (0..CHUNK).map(|c| format!("s{r}_{c}")).collect();
            out.push(format!("let m_new{r} = max(m{r}, {});", max_tree(&scores)));
            out.push(format!("let alpha{r} = exp(m{r} - m_new{r});"));
            for c in 0..CHUNK {
                out.push(format!("let p{r}_{c} = exp(s{r}_{c} - m_new{r});"));
            }
            let p_sum = (0..CHUNK)
                .map(|c| format!("p{r}_{c}"))
                .collect::<Vec<_>>()
                .join(" + ");
            out.push(format!("l{r} = l{r} * alpha{r} + ({p_sum});"));
            out.push(format!("m{r} = m_new{r};"));
        }
        for i in 0..d4 {
            let mut block = String::from("{");
            for c in 0..CHUNK {
                block += &format!(" let v{c} = {};", self.kv_load("v", c, i, &mut out));
            }
            for r in 0..rows {
                let mut acc = format!("o{r}_{i} * alpha{r}");
                for c in 0..CHUNK {
                    acc = format!("fma(vec4<f32>(p{r}_{c}), v{c}, {acc})");
                }
                block += &format!(" o{r}_{i} = {acc};");
            }
            out.push(block + " }");
        }
        Self::join(out, "        ")
    }

    /// The expression for vec4 `i` of key `c`'s row in `buffer` (`k` or `v`): a load, or with
    /// `lanes` a broadcast from the lane that loaded it, whose load (`kt{c}_{i}` / `vt{c}_{i}`,
    /// lane l taking vec4 `i + l` of every `lanes`) goes into `out` before the first use.
    fn kv_load(&self, buffer: &str, c: usize, i: usize, out: &mut Vec<String>) -> String {
        let Some(lanes) = self.lanes else {
            return format!("{buffer}[kj{c} + {i}u]");
        };
        let (first, lane) = (i - i % lanes, i % lanes);
        if lane == 0 {
            out.push(format!(
                "let {buffer}t{c}_{i} = {buffer}[kj{c} + {i}u + lane];"
            ));
        }
        format!("subgroupBroadcast({buffer}t{c}_{first}, {lane}u)")
    }

    /// Each row in range writes its output: normalized into `[batch, q_len, heads, D]`, or as a
    /// slice's partial sums followed by (max, sum, 0, 0).
    fn store(&self) -> String {
        let mut out = Vec::new();
        for r in 0..self.rows {
            out.push(format!("if (row{r}_u < q_len) {{"));
            out.push("    if (SPLIT) {".into());
            out.push(format!(
                "        let at = (((split * params.batch + b) * params.heads + h) * q_len + row{r}) * (D4 + 1u);"
            ));
            for i in 0..self.d4 {
                out.push(format!("        out[at + {i}u] = o{r}_{i};"));
            }
            out.push(format!(
                "        out[at + D4] = vec4<f32>(m{r}, l{r}, 0.0, 0.0);"
            ));
            out.push("    } else {".into());
            out.push(format!("        let inv = 1.0 / l{r};"));
            out.push(format!(
                "        let at = ((b * q_len + row{r}) * params.heads + h) * D4;"
            ));
            for i in 0..self.d4 {
                out.push(format!("        out[at + {i}u] = o{r}_{i} * inv;"));
            }
            out.push("    }".into());
            out.push("}".into());
        }
        Self::join(out, "    ")
    }
}

/// `max(max(a, b), max(c, d))`, pairwise.
fn max_tree(values: &[String]) -> String {
    match values {
        [one] => one.clone(),
        _ => {
            let (left, right) = values.split_at(values.len() / 2);
            format!("max({}, {})", max_tree(left), max_tree(right))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A placeholder the template forgets to fill turns silently into an empty string.
    #[test]
    fn template_is_filled_completely() {
        for (head_dim, rows, split, lanes) in [
            (72, 1, false, None),
            (128, 4, true, Some(8)),
            (4, 2, false, None),
        ] {
            let source = FlashAttention {
                head_dim,
                threads: 64,
                rows_per_thread: rows,
                split,
                subgroup_kv: lanes,
            }
            .source()
            .complete();
            assert!(!source.contains("{{"), "unfilled placeholder in\n{source}");
            let (d4, r) = (head_dim / 4, rows - 1);
            assert!(source.contains(&format!("let q{r}_{} = ", d4 - 1)));
            assert!(!source.contains(&format!("let q{r}_{d4} = ")));
            assert!(!source.contains(&format!("let q{rows}_0 = ")));
            assert!(source.contains(&format!("const SPLIT: bool = {split};")));
            assert!(source.contains(&format!("let s{r}_3 = score(")));
            assert_eq!(
                source.contains("subgroupBroadcast(kt3_24, 7u)"),
                lanes.is_some()
            );
        }
        assert_eq!(
            max_tree(&["s0".into(), "s1".into(), "s2".into(), "s3".into()]),
            "max(max(s0, s1), max(s2, s3))"
        );
    }
}
