// Quantized GEMV (decode): out[r, n] = sum_k x[r, k] * w[n, k] for a few activation rows,
// with w dequantized in registers from packed words; no float copy of w is ever written.
//
// Bindings (group 0, in launch order; cubecl appends the metadata uniform last):
//   0 x        storage, read_write  array<f32> or array<vec4<f32>> (x_vec4)  [rows, k_in]
//   1 words    storage, read_write  array<vec4<u32>>  packed codes transposed in blocks of 128
//              columns: [n_pad / 128][words_per_row][128] (column n % 128 of block n / 128 holds
//              output row n's words); n_pad = n_out rounded up to 128
//   2 scales   storage, read_write  [n_pad / 128][groups_per_row][128], as the words:
//              array<vec4<f32>>, or f16 (where the adapter has shader-f16) read as
//              array<vec2<u32>> pairs and unpacked with unpack2x16float, which needs no f16
//              extension (load_scales)
//   3 out      storage, read_write  array<f32>        [splits, rows, n_out] partial sums
//   4 zeros    storage, read_write  as the scales (formats with a zero point)
//   4 or 5     uniform              Params (see below)
// Inputs are declared read_write although only read: cubecl's memory pool packs many tensors into
// one wgpu buffer, and wgpu forbids read-only and read-write use of one buffer in a dispatch.
//
// Template parameters: scale_binding, zero_point_binding and load_scales (the declarations of scales
// and zero points, and load_scales(i) / load_zeros(i) -> vec4<f32> for 4 columns), workgroup_size,
// block_quads (column quads per block of the words and scales), bits, group_words
// (words per group), quads_per_thread (QPT), x_functions (gemv_x.wgsl: x read as vec4s when k_in
// is a multiple of 4, else as floats), zero_point_binding (the zeros declaration or nothing), and
// the code generated for the numbers of rows and quads: rows (per thread), row_indices (the
// block's rows, clamped for loads), quads (the thread's quad indices), init
// (accumulators), group_init, full_group_words (the words of a group whose x lies before k_in:
// a loop of word bodies, or the words written out with x shared over the subgroup, below),
// word_body_tail (a word of the last group, which may run past k_in), group_end (scales and zero
// points), store; lane_builtin declares the subgroup lane where x is shared.
//
// No workgroup memory, no barrier (barriers are very expensive on CPU implementations such as
// lavapipe), no arrays indexed in loops (CPU compilers spill those): every thread owns QPT quads
// of 4 adjacent output columns, for all rows, and reads each quad as one vec4 per packed word.
// GPUs take QPT = 1, so neighbouring threads read neighbouring 16-byte words (coalesced); CPU
// implementations, which load buffers lane by lane, take QPT = 4, so each x value a thread loads
// serves 16 columns instead of 4. A block of 32 quads is what 32 GPU threads or 8 CPU lanes read
// per word: each block is one contiguous stream down K. A thread walks its slice of K
// (groups_per_split groups) keeping the sums in registers;
// per group it takes the dot products of the integer codes with x, then applies the scale and the
// zero point once:  sum_k x_k (q_k - zero) scale = scale (sum_k x_k q_k - zero sum_k x_k).
// Unsigned codes skip the shift (codes_in_place): x is pre-scaled by 2^(-BITS i) instead, once per
// word for all the thread's columns.
// x shared over the subgroup (CPU adapters offering subgroups of one fixed size S, lavapipe's 8,
// with groups of 4 S values): all lanes need the same x, and llvmpipe loads every storage value
// lane by lane (a branchy loop over the 8 lanes per vec4, a bounds check per component), so a q4
// word's 2 x quads cost half what its 4 quads of codes do. Instead each lane loads one quad of
// the group's x, and subgroupBroadcast from a constant lane (an extract and a splat) hands every
// lane each quad (q4 GEMV 20-25% faster on lavapipe). The group's words are then written out:
// llvmpipe runs these broadcasts 30% slower inside even a one-trip loop.
// Grid: (column quads / (workgroup_size QPT), splits, row blocks); slice s writes out[s, r, n], and
// the launcher adds the slices up when there is more than one. More rows than a thread holds (a
// prefill on CPU adapters, where this register-blocked kernel beats the tiled GEMM's barriers) take
// one block of rows per grid z.

struct Params {
    m: u32,
    n_out: u32,
    k_in: u32,
    words_per_row: u32,
    groups_per_row: u32,
    grid_x: u32,
    groups_per_split: u32,
    n_pad: u32,
}

const WG: u32 = {{workgroup_size}}u;
const BITS: u32 = {{bits}}u;
const VALUES_PER_WORD: u32 = 32u / BITS;
const GROUP_WORDS: u32 = {{group_words}}u;
const QPT: u32 = {{quads_per_thread}}u;
const BLOCK_QUADS: u32 = {{block_quads}}u;

@group(0) @binding(1) var<storage, read_write> words: array<vec4<u32>>;
{{scale_binding}}
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
{{zero_point_binding}}
@group(0) @binding({{params_binding}}) var<uniform> params: Params;

{{load_scale}}

// Signed (two's-complement) code i of each of 4 words, as floats.
fn codes(w: vec4<u32>, i: u32) -> vec4<f32> {
    let shifted = bitcast<vec4<i32>>(w << vec4<u32>(32u - BITS * (i + 1u)));
    return vec4<f32>(shifted >> vec4<u32>(32u - BITS));
}

// Unsigned code i of each of 4 words times 2^(BITS i), as floats, left in place: one AND instead of
// a shift and an AND (the x value it multiplies was scaled by 2^(-BITS i) once for all columns, so
// the product is exact). Only for i below the last, whose bits would make the i32 negative: that
// one is shifted down instead (codes_high).
fn codes_in_place(w: vec4<u32>, i: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(w & vec4<u32>(((1u << BITS) - 1u) << (BITS * i))));
}

fn codes_high(w: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(w >> vec4<u32>(32u - BITS)));
}

{{x_functions}}

@compute @workgroup_size({{workgroup_size}}, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
{{lane_builtin}}
) {
    let n_out = params.n_out;
    let k_in = params.k_in;
    let quads = params.n_pad / 4u;
    let thread = workgroup.x * WG + tid;
    // The block of rows this workgroup computes (rows past m read the last row, store nothing).
    let block_row = workgroup.z * {{rows}}u;
{{row_indices}}
    // The thread's column quads qd0.. (QPT of them); past the last quad it reads the last one (in
    // bounds) and writes nothing.
{{quads}}
    let split = workgroup.y;
    let g_begin = split * params.groups_per_split;
    let g_end = min(g_begin + params.groups_per_split, params.groups_per_row);
    // Groups whose values all lie before k_in take x unguarded; the last one may not.
    let full_groups = k_in / (GROUP_WORDS * VALUES_PER_WORD);

{{init}}
    for (var g = g_begin; g < min(g_end, full_groups); g++) {
{{group_init}}
{{full_group_words}}
{{group_end}}
    }
    for (var g = max(g_begin, full_groups); g < g_end; g++) {
{{group_init}}
        for (var gw = 0u; gw < GROUP_WORDS; gw++) {
            let w = g * GROUP_WORDS + gw;
            let k0 = w * VALUES_PER_WORD;
{{word_body_tail}}
        }
{{group_end}}
    }

    let base = split * params.m * n_out;
{{store}}
}
