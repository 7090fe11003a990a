// x of the GEMVs (quant_gemv.wgsl, float_gemv.wgsl), filled into each in place of x_functions:
// binding 0, read as vec4s when k_in is a multiple of 4, else as floats (the Rust side fills the
// binding and the body of x_quad). Needs `params` with m and k_in.
{{x_binding}}

// x[r, k..k + 4] for k a multiple of 4 inside the row (r: the row of x, not of the block).
fn x_quad(r: u32, k: u32) -> vec4<f32> {
    let at = r * params.k_in + k;
    {{x_quad_body}}
}

// x[r, k..k + 4] with zeros past k_in (and no read past the end of x).
fn x_quad_guarded(r: u32, k: u32) -> vec4<f32> {
    let k_in = params.k_in;
    if (k + 4u <= k_in) {
        return x_quad(r, k);
    }
    let last = params.m * k_in - 1u;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (k + i < k_in) {
            v[i] = x_scalar(min(r * k_in + k + i, last));
        }
    }
    return v;
}
