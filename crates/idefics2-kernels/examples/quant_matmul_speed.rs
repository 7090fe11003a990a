//! Rough speed of the quantized matmul kernels against burn's f32 matmul on the default wgpu
//! adapter: `cargo run --release --example quant_matmul_speed [k_in n_out]`.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use idefics2_kernels::{QuantFormat, quant_matmul, quantize, upload};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (k_in, n_out) = match args.as_slice() {
        [k, n] => (*k, *n),
        _ => (2048, 2048),
    };
    let device = Device::wgpu_options().init().expect("a wgpu adapter");
    let weight: Vec<f32> = (0..n_out * k_in)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1)
        .collect();
    let dense = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(weight.clone(), [n_out, k_in]),
        &device,
    )
    .transpose();
    for rows in [1usize, 8, 128] {
        let x = Tensor::<2>::random([rows, k_in], Distribution::Uniform(-1.0, 1.0), &device);
        let f32_ms = time(&device, || x.clone().matmul(dense.clone()));
        let mut line = format!("[{rows} x {k_in}] x [{k_in} x {n_out}]: f32 matmul {f32_ms:.2} ms");
        for format in [QuantFormat::Q8_32, QuantFormat::Q4_32] {
            let packed = quantize(&weight, n_out, k_in, format).expect("valid format");
            let w = upload(&packed, &device).expect("upload");
            let ms = time(&device, || quant_matmul(x.clone(), &w));
            line += &format!(", {} {ms:.2} ms", format.name());
        }
        println!("{line}");
    }
}

/// Median of 5 timed runs after 2 warm-ups, in milliseconds, reading one value back each time.
fn time(device: &Device, f: impl Fn() -> Tensor<2>) -> f64 {
    let run = || {
        let start = Instant::now();
        let out = f();
        let first: Vec<f32> = out
            .slice([0..1, 0..1])
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        assert!(first[0].is_finite());
        start.elapsed().as_secs_f64() * 1e3
    };
    let _ = (run(), run());
    device.sync().expect("sync");
    let mut times: Vec<f64> = (0..5).map(|_| run()).collect();
    times.sort_by(f64::total_cmp);
    times[2]
}
