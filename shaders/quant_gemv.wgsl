// Quantized GEMV (decode): out[r, n] = sum_k x[r, k] * w[n, k] for a few activation rows,
// with w dequantized in registers from packed words; no float copy of w is ever written.
//
// Bindings (group 0, in launch order; cubecl appends the metadata uniform last):
//   0 x        storage, read_write  array<f32>  [rows, k_in] row-major
//   1 words    storage, read_write  array<u32>  [n_out, words_per_row] packed codes
//   2 scales   storage, read_write  array<f32>  [n_out, groups_per_row]
//   3 out      storage, read_write  array<f32>  [rows, n_out]
//   4 zeros    storage, read_write  array<f32>  [n_out, groups_per_row]   (formats with a zero point)
//   4 or 5     uniform              Params (see below)
// Inputs are declared read_write although only read: cubecl's memory pool packs many tensors into
// one wgpu buffer, and wgpu forbids read-only and read-write use of one buffer in a dispatch.
//
// Template parameters: rows (activation rows, 1..=8), cols (output columns per workgroup),
// workgroup_size, bits, signed (true: two's-complement codes), group_words (words per group),
// zero_point_binding (the zeros declaration or nothing), zero_point (expression for the zero point
// at index `at`), params_binding.
//
// Workgroup: workgroup_size threads share `cols` output columns. Each thread walks the words of
// those weight rows with a stride of workgroup_size (adjacent threads read adjacent words): it
// loads the word's x values once for all columns, takes integer-code dot products and applies the
// scale and zero point once per word, keeping rows x cols partial sums in registers; one barrier,
// then rows x cols threads add up the partials.
// Only the 1-D grid index matters: workgroups are numbered x + y * params.grid_x.

struct Params {
    m: u32,
    n_out: u32,
    k_in: u32,
    words_per_row: u32,
    groups_per_row: u32,
    grid_x: u32,
    pad0: u32,
    pad1: u32,
}

const ROWS: u32 = {{rows}}u;
const COLS: u32 = {{cols}}u;
const WG: u32 = {{workgroup_size}}u;
const BITS: u32 = {{bits}}u;
const VALUES_PER_WORD: u32 = 32u / BITS;
const SIGNED: bool = {{signed}};
const GROUP_WORDS: u32 = {{group_words}}u;

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> words: array<u32>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
{{zero_point_binding}}
@group(0) @binding({{params_binding}}) var<uniform> params: Params;

var<workgroup> partial: array<f32, ROWS * COLS * WG>;

fn code(word: u32, i: u32) -> f32 {
    if (SIGNED) {
        return f32(extractBits(bitcast<i32>(word), i * BITS, BITS));
    }
    return f32(extractBits(word, i * BITS, BITS));
}

fn zero_point(at: u32) -> f32 {
    return {{zero_point}};
}

@compute @workgroup_size({{workgroup_size}}, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let n0 = (workgroup.x + workgroup.y * params.grid_x) * COLS;
    let k_in = params.k_in;
    let words_used = (k_in + VALUES_PER_WORD - 1u) / VALUES_PER_WORD;

    var acc: array<array<f32, ROWS>, COLS>;
    for (var c = 0u; c < COLS; c++) {
        for (var r = 0u; r < ROWS; r++) {
            acc[c][r] = 0.0;
        }
    }

    for (var w = tid; w < words_used; w += WG) {
        // The x values this word multiplies, per row (0 past k_in), and their sums.
        let k0 = w * VALUES_PER_WORD;
        let valid = min(VALUES_PER_WORD, k_in - k0);
        var xs: array<array<f32, VALUES_PER_WORD>, ROWS>;
        var x_sum: array<f32, ROWS>;
        for (var r = 0u; r < ROWS; r++) {
            x_sum[r] = 0.0;
            for (var i = 0u; i < VALUES_PER_WORD; i++) {
                var value = 0.0;
                if (i < valid) {
                    value = x[r * k_in + k0 + i];
                }
                xs[r][i] = value;
                x_sum[r] += value;
            }
        }
        // sum_i x_i (q_i - zero) scale = scale (sum_i x_i q_i - zero sum_i x_i)
        let group = w / GROUP_WORDS;
        for (var c = 0u; c < COLS; c++) {
            let n = n0 + c;
            if (n < params.n_out) {
                let word = words[n * params.words_per_row + w];
                var dots: array<f32, ROWS>;
                for (var r = 0u; r < ROWS; r++) {
                    dots[r] = 0.0;
                }
                for (var i = 0u; i < VALUES_PER_WORD; i++) {
                    let q = code(word, i);
                    for (var r = 0u; r < ROWS; r++) {
                        dots[r] += xs[r][i] * q;
                    }
                }
                let at = n * params.groups_per_row + group;
                let scale = scales[at];
                let zero = zero_point(at);
                for (var r = 0u; r < ROWS; r++) {
                    acc[c][r] += scale * (dots[r] - zero * x_sum[r]);
                }
            }
        }
    }

    for (var c = 0u; c < COLS; c++) {
        for (var r = 0u; r < ROWS; r++) {
            partial[(c * ROWS + r) * WG + tid] = acc[c][r];
        }
    }
    workgroupBarrier();

    if (tid < ROWS * COLS) {
        let c = tid / ROWS;
        let r = tid % ROWS;
        let n = n0 + c;
        if (n < params.n_out) {
            var sum = 0.0;
            for (var t = 0u; t < WG; t++) {
                sum += partial[tid * WG + t];
            }
            out[r * params.n_out + n] = sum;
        }
    }
}
