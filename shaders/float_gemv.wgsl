// Float GEMV for CPU adapters (lavapipe): out[r, n] = sum_k x[r, k] * w[n, k] for a block of up
// to 64 activation rows per grid z, with an f32 weight. It is the quantized GEMV
// (quant_gemv.wgsl) with the codes replaced by the floats themselves: on CPU adapters, where
// barriers are costly and every storage load is a loop over the SIMD lanes, burn's tiled matmul
// gets a few GFLOP/s, and this register-blocked kernel over blocks of rows does better for the
// vision encoder's linears, the lm_head and any float weight.
//
// Bindings (group 0; cubecl appends the metadata uniform last):
//   0 x    storage, read_write  array<f32> or array<vec4<f32>> (x_vec4)  [m, k_in]
//   1 w    storage, read_write  array<vec4<f32>>  the weight transposed in blocks of 128 columns:
//          [n_pad / 128][k_in][128] (column n % 128 of block n / 128 holds output row n's values
//          down K); n_pad = n_out rounded up to 128, padding columns zero
//   2 out  storage, read_write  array<f32>  [m, n_out]
//   3      uniform  Params
// Inputs are declared read_write although only read: cubecl's memory pool packs many tensors into
// one wgpu buffer, and wgpu forbids read-only and read-write use of one buffer in a dispatch.
//
// Every thread owns QPT quads of 4 adjacent output columns, for all rows of its block, and reads
// each quad as one vec4 per k: the 8 lanes of a SIMD batch read 128 adjacent columns, one
// contiguous 512-byte row of a block, so each block is one stream down K. No workgroup memory, no
// barrier, no arrays indexed in loops (the sums are variables acc{r}_{u}).
// x shared over the subgroup (CPU adapters with subgroups of a fixed size S: lavapipe's 8): each
// lane loads one quad of a chunk of 4 S x values per row, and subgroupBroadcast from constant
// lanes hands every lane each quad, instead of every lane loading every x value lane by lane.
// Without subgroups a chunk is one quad, loaded by every lane.
//
// Template parameters: workgroup_size, quads_per_thread (QPT), rows (per block), chunk (k values
// per trip of the main loop), x_functions (gemv_x.wgsl), lane_builtin, and the code generated for
// the rows and quads: row_indices, quads, init, chunk_body, tail_body, store.

struct Params {
    m: u32,
    n_out: u32,
    k_in: u32,
    n_pad: u32,
}

const WG: u32 = {{workgroup_size}}u;
const QPT: u32 = {{quads_per_thread}}u;
const BLOCK_QUADS: u32 = {{block_quads}}u;
const CHUNK: u32 = {{chunk}}u;

@group(0) @binding(1) var<storage, read_write> w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

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
    // bounds) and writes nothing. wb{u}: the quad's value at k = 0, in vec4s; k is BLOCK_QUADS on.
{{quads}}
{{init}}
    let full_chunks = k_in / CHUNK;
    for (var c = 0u; c < full_chunks; c++) {
        let k0 = c * CHUNK;
{{chunk_body}}
    }
    // The last values of K (fewer than a chunk), x guarded; the weight index is clamped to the
    // last k, whose value meets a zero x.
    for (var k0 = full_chunks * CHUNK; k0 < k_in; k0 += 4u) {
{{tail_body}}
    }

    let base = 0u;
{{store}}
}
