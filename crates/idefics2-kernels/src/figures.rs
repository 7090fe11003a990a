//! Kernel figures for `idefics2 bench`: the copy kernel's bandwidth, the quantized GEMV's
//! effective bandwidth beside it, GEMM throughput, each next to burn's own f32 matmul on the same
//! adapter, and the flash attention next to attention in burn ops (matmul, softmax, matmul).
//! Times are wall-clock over several launches closed by one device sync.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use serde_json::{Value, json};

use crate::attention::{AttentionMask, attention_kernel, attention_reference};
use crate::copy::copy_kernel;
use crate::format::QuantFormat;
use crate::quant_matmul::quant_matmul;
use crate::quantize::quantize;
use crate::weight::upload;

/// One measured kernel.
#[derive(Debug, Clone)]
pub struct KernelFigure {
    pub kernel: String,
    pub shape: String,
    pub milliseconds: f64,
    /// Bytes read and written per second (memory-bound kernels).
    pub gb_per_s: Option<f64>,
    /// Floating-point operations per second (GEMMs).
    pub gflop_per_s: Option<f64>,
}

impl KernelFigure {
    pub fn to_json(&self) -> Value {
        json!({"kernel": self.kernel, "shape": self.shape, "ms": self.milliseconds,
               "gb_per_s": self.gb_per_s, "gflop_per_s": self.gflop_per_s})
    }
}

/// Shapes of the measurements: Mistral-7B's MLP projection for the GEMVs, a prefill of
/// `gemm_rows` tokens through a 4096x4096 projection for the GEMMs, and causal prefill attention
/// of one Mistral-7B layer (32 query heads over 8 key/value heads of 128) for each length in
/// `attention_tokens`.
#[derive(Debug, Clone)]
pub struct FigureShapes {
    pub gemv_n: usize,
    pub gemv_k: usize,
    pub gemm_rows: usize,
    pub gemm_nk: usize,
    pub copy_floats: usize,
    pub attention_tokens: Vec<usize>,
    pub attention_heads: usize,
    pub attention_kv_heads: usize,
    pub attention_head_dim: usize,
}

impl Default for FigureShapes {
    fn default() -> Self {
        Self {
            gemv_n: 14336,
            gemv_k: 4096,
            gemm_rows: 256,
            gemm_nk: 4096,
            copy_floats: 16 << 20,
            attention_tokens: vec![1024, 4096, 8192],
            attention_heads: 32,
            attention_kv_heads: 8,
            attention_head_dim: 128,
        }
    }
}

/// Median milliseconds of `f` over `iters` launches after one warm-up (which compiles), each
/// launch waited for on its own (one slow launch, a compile or a busy core, does not move the
/// figure; as the `quant_matmul_speed` example times).
fn time_ms<const D: usize>(device: &Device, iters: usize, f: impl Fn() -> Tensor<D>) -> f64 {
    let warm = f();
    drop(warm);
    let _ = device.sync();
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let start = Instant::now();
            let out = f();
            let _ = device.sync();
            drop(out);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn weight(n: usize, k: usize) -> Vec<f32> {
    (0..n * k)
        .map(|i| ((i.wrapping_mul(7919) % 1000) as f32 / 1000.0 - 0.5) * 0.05)
        .collect()
}

/// Measures the kernels on a wgpu `device`: `iters` launches each after a warm-up, one launch for
/// the attention at 4k tokens and more (seconds each on CPU adapters).
pub fn measure(device: &Device, shapes: &FigureShapes, iters: usize) -> Vec<KernelFigure> {
    let mut figures = Vec::new();
    let gb = |bytes: usize, ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;

    let n = shapes.copy_floats;
    let x = Tensor::<1>::random([n], Distribution::Uniform(-1.0, 1.0), device);
    let ms = time_ms(device, iters, || copy_kernel(x.clone()));
    figures.push(KernelFigure {
        kernel: "copy (WGSL)".into(),
        shape: format!("{} MiB", (n * 4) >> 20),
        milliseconds: ms,
        gb_per_s: Some(gb(2 * 4 * n, ms)),
        gflop_per_s: None,
    });
    drop(x);

    let (gn, gk) = (shapes.gemv_n, shapes.gemv_k);
    let values = weight(gn, gk);
    let x1 = Tensor::<2>::random([1, gk], Distribution::Uniform(-1.0, 1.0), device);
    for format in [QuantFormat::Q8_32, QuantFormat::Q4_32] {
        let Ok(packed) = quantize(&values, gn, gk, format) else {
            continue;
        };
        let Ok(w) = upload(&packed, device) else {
            continue;
        };
        // What the GEMV reads and writes: the weight as stored on the device, x and out.
        let bytes = w.device_bytes() + 4 * (gk + gn);
        let ms = time_ms(device, iters, || quant_matmul(x1.clone(), &w));
        figures.push(KernelFigure {
            kernel: format!("{} GEMV (WGSL)", format.name()),
            shape: format!("[1, {gk}] x [{gn}, {gk}]^T"),
            milliseconds: ms,
            gb_per_s: Some(gb(bytes, ms)),
            gflop_per_s: None,
        });
    }
    drop(values);
    // burn's f32 matmul as GEMV, on a square weight that fits one binding everywhere.
    let dense = Tensor::<2>::from_data(TensorData::new(weight(gk, gk), [gk, gk]), device);
    let ms = time_ms(device, iters, || {
        x1.clone().matmul(dense.clone().transpose())
    });
    figures.push(KernelFigure {
        kernel: "f32 GEMV (burn matmul)".into(),
        shape: format!("[1, {gk}] x [{gk}, {gk}]^T"),
        milliseconds: ms,
        gb_per_s: Some(gb(4 * (gk * gk + 2 * gk), ms)),
        gflop_per_s: None,
    });

    let (m, nk) = (shapes.gemm_rows, shapes.gemm_nk);
    let flops = 2.0 * (m * nk * nk) as f64;
    let xm = Tensor::<2>::random([m, nk], Distribution::Uniform(-1.0, 1.0), device);
    let dense = Tensor::<2>::from_data(TensorData::new(weight(nk, nk), [nk, nk]), device);
    let ms = time_ms(device, iters, || {
        xm.clone().matmul(dense.clone().transpose())
    });
    figures.push(KernelFigure {
        kernel: "f32 GEMM (burn matmul)".into(),
        shape: format!("[{m}, {nk}] x [{nk}, {nk}]^T"),
        milliseconds: ms,
        gb_per_s: None,
        gflop_per_s: Some(flops / (ms * 1e-3) / 1e9),
    });
    let values = weight(nk, nk);
    for format in [QuantFormat::Q8_32, QuantFormat::Q4_32] {
        let Ok(w) = quantize(&values, nk, nk, format).and_then(|p| upload(&p, device)) else {
            continue;
        };
        let ms = time_ms(device, iters, || quant_matmul(xm.clone(), &w));
        figures.push(KernelFigure {
            kernel: format!("{} GEMM (WGSL)", format.name()),
            shape: format!("[{m}, {nk}] x [{nk}, {nk}]^T"),
            milliseconds: ms,
            gb_per_s: None,
            gflop_per_s: Some(flops / (ms * 1e-3) / 1e9),
        });
    }
    figures.extend(attention_figures(device, shapes, iters));
    figures
}

/// Causal prefill attention at each length of `shapes.attention_tokens`: the flash attention
/// kernel, then the same in burn ops ([`attention_reference`], in query blocks of 64 MiB of
/// scores). GFLOP/s counts the multiply-adds of the unmasked half of the scores, for both.
pub fn attention_figures(
    device: &Device,
    shapes: &FigureShapes,
    iters: usize,
) -> Vec<KernelFigure> {
    let (heads, kv_heads, d) = (
        shapes.attention_heads,
        shapes.attention_kv_heads,
        shapes.attention_head_dim,
    );
    let mask = AttentionMask {
        causal: true,
        ..AttentionMask::default()
    };
    let scale = (d as f64).powf(-0.5);
    let mut figures = Vec::new();
    for &n in &shapes.attention_tokens {
        let normal =
            |h: usize| Tensor::<4>::random([1, h, n, d], Distribution::Normal(0.0, 1.0), device);
        let (q, k, v) = (normal(heads), normal(kv_heads), normal(kv_heads));
        // QK^T and PV over the causal half: 2 matmuls x 2 flops x heads x n^2/2 x d.
        let flops = 2.0 * (heads * n * n * d) as f64;
        let iters = if n >= 4096 { 1 } else { iters };
        let shape = format!("{n} tokens, {heads}/{kv_heads} heads x {d}, causal");
        for (kernel, flash) in [
            ("flash attention (WGSL)", true),
            ("attention (burn ops)", false),
        ] {
            let ms = time_ms(device, iters, || {
                let (q, k, v) = (q.clone(), k.clone(), v.clone());
                if flash {
                    attention_kernel(q, k, v, &mask, scale)
                } else {
                    attention_reference(q, k, v, &mask, scale)
                }
            });
            figures.push(KernelFigure {
                kernel: kernel.into(),
                shape: shape.clone(),
                milliseconds: ms,
                gb_per_s: None,
                gflop_per_s: Some(flops / (ms * 1e-3) / 1e9),
            });
        }
    }
    figures
}
