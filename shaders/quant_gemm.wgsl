// Quantized GEMM (prefill): out[m, n] = sum_k x[m, k] * w[n, k], tiled in workgroup memory, with
// w dequantized on the fly while its tile is loaded; no float copy of w is ever written to global
// memory.
//
// Bindings (group 0, in launch order; cubecl appends the metadata uniform last):
//   0 x        storage, read_write  array<f32>  [m, k_in] row-major
//   1 words    storage, read_write  array<u32>  packed codes transposed in blocks of 128 columns:
//              [n_pad / 128][words_per_row][128]; n_pad = n_out rounded up to 128
//   2 scales   storage, read_write  [n_pad / 128][groups_per_row][128], as the words: f32, or f16
//              read as array<u32> pairs (scale_binding, load_scale)
//   3 out      storage, read_write  array<f32>  [m, n_out]
//   4 zeros    storage, read_write  as the scales (formats with a zero point)
//   4 or 5     uniform              Params (see below)
// Inputs are declared read_write although only read: cubecl's memory pool packs many tensors into
// one wgpu buffer, and wgpu forbids read-only and read-write use of one buffer in a dispatch.
//
// Template parameters: bits, signed (true: two's-complement codes), group_words (words per group),
// scale_binding and zero_point_binding (declarations, the latter empty without zero points),
// load_scale (functions load_scale(at) and zero_point(at) -> f32), params_binding.
//
// Workgroup: 16 x 16 threads compute a 64 x 64 output tile, 4 x 4 outputs per thread held in
// registers (rows ty + 16 i, columns tx + 16 j, so neighbouring threads read neighbouring
// workgroup-memory words). Per step of 32 along k: the x tile [32 k][64 m] and the dequantized
// w tile [32 k][64 n] go to workgroup memory (16 KiB, WebGPU's default limit), two barriers.
// Grid: (ceil(n_out / 64), ceil(m / 64)). Every global access is bounds-checked (no robustness
// is assumed: cubecl turns wgpu's bounds checks off).

struct Params {
    m: u32,
    n_out: u32,
    k_in: u32,
    words_per_row: u32,
    groups_per_row: u32,
    grid_x: u32,
    pad0: u32,
    n_pad: u32,
}

const BLOCK_COLS: u32 = 128u;
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;
const THREADS: u32 = 256u;
const BITS: u32 = {{bits}}u;
const VALUES_PER_WORD: u32 = 32u / BITS;
const SIGNED: bool = {{signed}};
const GROUP_WORDS: u32 = {{group_words}}u;
const TILE_WORDS: u32 = BK / VALUES_PER_WORD;
// Packed words per w tile, per thread: 1 for 4-bit codes, 2 for 8-bit codes.
const W_LOADS: u32 = BN * TILE_WORDS / THREADS;
// x values per x tile, per thread.
const X_LOADS: u32 = BM * BK / THREADS;

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> words: array<u32>;
{{scale_binding}}
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
{{zero_point_binding}}
@group(0) @binding({{params_binding}}) var<uniform> params: Params;

var<workgroup> x_tile: array<f32, BK * BM>;
var<workgroup> w_tile: array<f32, BK * BN>;

fn code(word: u32, i: u32) -> f32 {
    if (SIGNED) {
        return f32(extractBits(bitcast<i32>(word), i * BITS, BITS));
    }
    return f32(extractBits(word, i * BITS, BITS));
}

{{load_scale}}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m0 = workgroup.y * BM;
    let n0 = workgroup.x * BN;
    let m = params.m;
    let n_out = params.n_out;
    let k_in = params.k_in;
    let tx = local.x;
    let ty = local.y;

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }

    let k_tiles = (k_in + BK - 1u) / BK;
    for (var kt = 0u; kt < k_tiles; kt++) {
        let k0 = kt * BK;

        // x tile, stored k-major: neighbouring threads read neighbouring k of one row.
        for (var l = 0u; l < X_LOADS; l++) {
            let idx = tid + l * THREADS;
            let row = idx / BK;
            let kk = idx % BK;
            var value = 0.0;
            if (m0 + row < m && k0 + kk < k_in) {
                value = x[(m0 + row) * k_in + k0 + kk];
            }
            x_tile[kk * BM + row] = value;
        }

        // w tile: each thread unpacks whole words (neighbouring threads read neighbouring columns
        // of the transposed words: coalesced); padding codes dequantize to exactly 0.
        for (var l = 0u; l < W_LOADS; l++) {
            let idx = tid + l * THREADS;
            let col = idx % BN;
            let tile_word = idx / BN;
            let n = n0 + col;
            let w = k0 / VALUES_PER_WORD + tile_word;
            if (n < n_out && w < params.words_per_row) {
                // column n's block starts at its first column times the rows of a block
                let block_start = (n / BLOCK_COLS) * BLOCK_COLS;
                let within = n % BLOCK_COLS;
                let word = words[block_start * params.words_per_row + w * BLOCK_COLS + within];
                let at = block_start * params.groups_per_row + (w / GROUP_WORDS) * BLOCK_COLS + within;
                let scale = load_scale(at);
                let zero = zero_point(at);
                for (var i = 0u; i < VALUES_PER_WORD; i++) {
                    w_tile[(tile_word * VALUES_PER_WORD + i) * BN + col] = (code(word, i) - zero) * scale;
                }
            } else {
                for (var i = 0u; i < VALUES_PER_WORD; i++) {
                    w_tile[(tile_word * VALUES_PER_WORD + i) * BN + col] = 0.0;
                }
            }
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = x_tile[kk * BM + ty + 16u * i];
                b[i] = w_tile[kk * BN + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + tx + 16u * j;
            if (row < m && col < n_out) {
                out[row * n_out + col] = acc[i][j];
            }
        }
    }
}
