// Flash attention: out = softmax(q k^T * scale + mask) v, one pass over the keys with an online
// softmax, never materializing the [q_len, kv_len] scores.
//
// Bindings (group 0, in launch order; cubecl appends the metadata uniform last):
//   0 q      storage, read_write  array<vec4<f32>>  [batch, heads, q_len, D]
//   1 k      storage, read_write  array<vec4<f32>>  [batch, kv_heads, kv_len, D]
//   2 v      storage, read_write  array<vec4<f32>>  [batch, kv_heads, kv_len, D]
//   3 bias   storage, read_write  array<f32>        [batch, kv_len] additive per key (0 or
//            MASKED: padding)
//   4 out    storage, read_write  array<vec4<f32>>
//            one slice of keys: [batch, q_len, heads, D], normalized, heads already merged;
//            split keys (SPLIT): [splits, batch, heads, q_len, D + 4], unnormalized, the last
//            vec4 of a row holding (running max, sum of exponentials, 0, 0) for the reduction
//   5        uniform              Params
// Inputs are declared read_write although only read (see quant_gemv.wgsl: cubecl's memory pool).
//
// Template parameters: workgroup_size (WG), rows_per_thread (R), d4 (D / 4), split (bool), chunk
// (keys per step) and the code generated for them: rows (each thread's row indices), q_load,
// o_init, chunk_body, store; lane_builtin declares the subgroup lane where K/V loads are shared.
//
// A thread holds R query rows (first_row + tid + r WG) of one (batch, head); a workgroup holds
// WG R consecutive rows, and all its threads walk the same keys, so every K/V load is uniform
// across the workgroup (an L1 broadcast on GPUs). Each K/V vec4 a thread loads serves its R rows:
// CPU implementations such as lavapipe load buffers lane by lane, so R = 8 there (register
// blocking) divides their load work; GPUs take R = 1 and keep their registers. No workgroup memory and no
// barrier: barriers are very expensive on lavapipe. q and the output accumulators live in vec4
// variables named one by one (q0_0.., o0_0..), never in arrays indexed in loops, which CPU
// compilers spill. Grouped-query heads read their key/value head (head / (heads / kv_heads))
// without any copy of K/V.
//
// K/V shared over the subgroup (CPU adapters offering subgroups of one fixed size S, lavapipe's 8,
// when the workgroup is one subgroup of S threads and D / 4 a multiple of S): every lane needs the
// same K/V vec4s, and llvmpipe loads each one lane by lane (see quant_gemv.wgsl). Lane l loads
// vec4s l, l + S, ... of a key row (kt/vt), and subgroupBroadcast from constant lanes hands every
// lane each vec4: 2x as fast on lavapipe at 1k tokens.
//
// Masks: a key j is allowed for the query at cache position pos = row + kv_len - q_len when
// (not causal or j <= pos) and (no window or j + window > pos); its score then gets bias[b, j]
// added. Disallowed keys score MASKED, like the additive masks of the reference, so a row whose
// keys are all masked stays finite. Key chunks past the workgroup's causal/window range are
// skipped, which is exact for every row with at least one allowed key. The keys past the end of
// the range in the last chunk score FAR and never count.
//
// Grid: (ceil(q_len / (WG R)), batch * heads, splits); slice s of the keys is
// [s * keys_per_split, (s + 1) * keys_per_split).

struct Params {
    batch: u32,
    heads: u32,
    kv_heads: u32,
    q_len: u32,
    kv_len: u32,
    causal: u32,
    window: u32,
    splits: u32,
    keys_per_split: u32,
    scale_bits: u32,
}

const WG: u32 = {{workgroup_size}}u;
const R: u32 = {{rows_per_thread}}u;
const D4: u32 = {{d4}}u;
const SPLIT: bool = {{split}};
const MASKED: f32 = -1.0e9;
const FAR: f32 = -1.0e30;

@group(0) @binding(0) var<storage, read_write> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> params: Params;

// The bias of key j for every row: FAR past the end of the slice (not a key of it).
fn key_bias(j: u32, end: u32, bias_row: u32) -> f32 {
    if (j >= end) {
        return FAR;
    }
    return bias[bias_row + j];
}

// The score of key j (raw dot product `raw`, bias `b` from key_bias) for the query at `pos`.
fn score(raw: f32, j: u32, pos: u32, b: f32, scale: f32) -> f32 {
    if (b == FAR) {
        return FAR;
    }
    let causal_ok = params.causal == 0u || j <= pos;
    let window_ok = params.window == 0u || j + params.window > pos;
    if (!(causal_ok && window_ok)) {
        return MASKED;
    }
    return raw * scale + b;
}

@compute @workgroup_size({{workgroup_size}}, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
{{lane_builtin}}
) {
    let q_len = params.q_len;
    let kv_len = params.kv_len;
    let scale = bitcast<f32>(params.scale_bits);
    let bh = workgroup.y;
    let b = bh / params.heads;
    let h = bh % params.heads;
    let kv_h = h / (params.heads / params.kv_heads);
    let first_row = workgroup.x * WG * R;
    let last_row = min(first_row + WG * R, q_len) - 1u;
    let offset = kv_len - q_len;
    // Rows past q_len compute the last row again and store nothing.
{{rows}}

    // The keys any row of this workgroup may attend to (uniform across the workgroup).
    var lo = 0u;
    var hi = kv_len;
    if (params.causal != 0u) {
        hi = min(kv_len, last_row + offset + 1u);
    }
    if (params.window != 0u && first_row + offset + 1u > params.window) {
        lo = first_row + offset + 1u - params.window;
    }
    let split = workgroup.z;
    lo = max(lo, split * params.keys_per_split);
    hi = min(hi, (split + 1u) * params.keys_per_split);

{{q_load}}
{{o_init}}
    let kv_base = (b * params.kv_heads + kv_h) * kv_len;
    let bias_row = b * kv_len;
    for (var j = lo; j < hi; j += {{chunk}}u) {
{{chunk_body}}
    }

{{store}}
}
