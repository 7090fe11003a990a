// Plain copy, out[i] = x[i], four floats per thread and step: the bandwidth yardstick the
// benchmark sets the quantized GEMV beside (bytes read + written per second).
//
// Bindings (group 0, in launch order; cubecl appends the metadata uniform last):
//   0 x      storage, read_write  array<vec4<f32>>  [n_vec4]
//   1 out    storage, read_write  array<vec4<f32>>  [n_vec4]
//   2        uniform              Params
// Workgroup: 256 threads; the grid strides over the array (grid_x * 256 threads in all).

struct Params {
    n_vec4: u32,
    grid_x: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let stride = params.grid_x * 256u;
    var i = gid.x;
    loop {
        if (i >= params.n_vec4) {
            break;
        }
        out[i] = x[i];
        i = i + stride;
    }
}
