//! Speed of the CPU device's q4 GEMV on the 8B decoder's shapes, both ways: codes turned into f32
//! (`quant_gemv_f32`) and 16-bit integers with AVX2 (`quant_gemv_i16`):
//! `cargo run --release --example cpu_gemv_speed [rows]` (rows 1 unless given). Prints the median
//! of 7 runs per shape, and a decoder layer's total (q, k, v, o, gate, up, down).

use std::time::Instant;

use idefics2_kernels::cpu_quant_matmul::{quant_gemv_f32, quant_gemv_i16};
use idefics2_kernels::{QuantFormat, quantize};

fn median_ms(mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[3]
}

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut state = 0x2545_f491u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as f32 / u32::MAX as f32 - 0.5
    };
    // (name, n_out, k_in, times per decoder layer)
    let shapes = [
        ("q/o 4096x4096", 4096, 4096, 2),
        ("k/v 1024x4096", 1024, 4096, 2),
        ("gate/up 14336x4096", 14336, 4096, 2),
        ("down 4096x14336", 4096, 14336, 1),
    ];
    println!("rows {rows}, q4 groups of 32");
    println!("| shape | f32 codes ms | 16-bit ms | speed-up |");
    println!("| --- | --- | --- | --- |");
    let (mut layer_f32, mut layer_i16) = (0.0, 0.0);
    for (name, n_out, k_in, times) in shapes {
        let weight: Vec<f32> = (0..n_out * k_in).map(|_| next() * 0.1).collect();
        let w = quantize(&weight, n_out, k_in, QuantFormat::Q4_32).expect("valid shape");
        let x: Vec<f32> = (0..rows * k_in).map(|_| next()).collect();
        let f32_ms = median_ms(|| {
            std::hint::black_box(quant_gemv_f32(&x, rows, &w));
        });
        let i16_ms = median_ms(|| {
            std::hint::black_box(quant_gemv_i16(&x, rows, &w));
        });
        layer_f32 += f32_ms * times as f64;
        layer_i16 += i16_ms * times as f64;
        println!(
            "| {name} | {f32_ms:.2} | {i16_ms:.2} | {:.2}x |",
            f32_ms / i16_ms
        );
    }
    println!(
        "| one decoder layer | {layer_f32:.1} | {layer_i16:.1} | {:.2}x |",
        layer_f32 / layer_i16
    );
}
