//! Rough speed of the quantized matmul kernels against burn's f32 matmul on the default wgpu
//! adapter, with the copy kernel's bandwidth as the yardstick:
//! `cargo run --release --example quant_matmul_speed [k_in n_out [rows...]]` (rows 1, 8 and 128
//! unless given). `IDEFICS2_GEMV_QUADS=Q` forces the column quads per GEMV thread,
//! `IDEFICS2_TILED_GEMM=1` the tiled GEMM for more than 8 rows on CPU adapters,
//! `IDEFICS2_PLAIN_LOADS=1` x loaded by every GEMV lane (not shared over subgroups); `SPEED_RUNS=N`
//! times N runs instead of 5, `SPEED_VERBOSE=1` prints them all (sorted). `SPEED_COPIES=N` keeps
//! N copies of each weight and runs them in turn, so that the weights exceed the CPU's last-level
//! cache as a model's do (one weight of the default shape fits in this machine's 32 MiB L3).
//!
//! GB/s of the GEMV rows are effective: the bytes of packed words, scales, zero points, `x` and
//! the output, over the time.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use idefics2_kernels::{
    BlockedFloatWeight, GEMV_MAX_ROWS, QuantFormat, WgpuCaps, copy_kernel, quant_matmul, quantize,
    upload,
};

fn main() {
    if let Some(quads) = std::env::var("IDEFICS2_GEMV_QUADS")
        .ok()
        .and_then(|q| q.parse().ok())
    {
        idefics2_kernels::force_gemv_quads_per_thread(Some(quads));
    }
    if let Some((rows, quads)) = std::env::var("IDEFICS2_FLOAT_GEMV").ok().and_then(|v| {
        let (r, q) = v.split_once(',')?;
        Some((r.parse().ok()?, q.parse().ok()?))
    }) {
        idefics2_kernels::force_float_gemv_shape(Some((rows, quads)));
    }
    if std::env::var("IDEFICS2_TILED_GEMM").is_ok_and(|v| v == "1") {
        idefics2_kernels::force_tiled_gemm(true);
    }
    if std::env::var("IDEFICS2_PLAIN_LOADS").is_ok_and(|v| v == "1") {
        idefics2_kernels::force_plain_loads(true);
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (k_in, n_out, rows_list) = match args.as_slice() {
        [k, n] => (*k, *n, vec![1, 8, 128]),
        [k, n, rows @ ..] => (*k, *n, rows.to_vec()),
        _ => (2048, 2048, vec![1, 8, 128]),
    };
    let device = Device::wgpu_options().init().expect("a wgpu adapter");
    let caps = WgpuCaps::of(&device).expect("a wgpu device");
    let x_loads = match caps.cpu_subgroup_size {
        Some(lanes) => format!("GEMV x shared over subgroups of {lanes} lanes"),
        None => "GEMV x loaded by every lane".to_string(),
    };
    println!("adapter: {} ({x_loads})", caps.adapter);
    let gb = |bytes: usize, ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;

    let floats = 16usize << 20; // 64 MiB
    let src = Tensor::<1>::random([floats], Distribution::Uniform(-1.0, 1.0), &device);
    let copy_ms = time(&device, || copy_kernel(src.clone()).reshape([1, floats]));
    let copy_gb = gb(2 * 4 * floats, copy_ms);
    println!("copy 64 MiB: {copy_ms:.2} ms, {copy_gb:.2} GB/s (read + write)");
    drop(src);

    let weight: Vec<f32> = (0..n_out * k_in)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1)
        .collect();
    // burn's f32 matmul beside the kernels, when the f32 weight fits one binding.
    let copies: usize = std::env::var("SPEED_COPIES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
        .max(1);
    let dense: Option<Vec<Tensor<2>>> =
        (4 * (n_out * k_in) as u64 <= caps.max_binding_bytes).then(|| {
            (0..copies)
                .map(|_| {
                    Tensor::<2>::from_data(
                        burn::tensor::TensorData::new(weight.clone(), [n_out, k_in]),
                        &device,
                    )
                    .transpose()
                })
                .collect()
        });
    // Our float GEMV (the kernel CPU adapters run for f32 weights), from row blocks that each fit
    // a binding, as the loader keeps them.
    let rows_per_block = ((caps.max_binding_bytes / (4 * k_in as u64)) as usize).max(1);
    let blocked: Vec<BlockedFloatWeight> = (0..copies)
        .map(|_| {
            let blocks: Vec<Tensor<2>> = weight
                .chunks(rows_per_block * k_in)
                .map(|part| {
                    let data =
                        burn::tensor::TensorData::new(part.to_vec(), [part.len() / k_in, k_in]);
                    Tensor::from_data(data, &device)
                })
                .collect();
            BlockedFloatWeight::from_rows(&blocks, caps.max_binding_bytes)
        })
        .collect();
    // `SPEED_GROUP=128`: groups of 128 values (AWQ checkpoints) instead of 32.
    let group = std::env::var("SPEED_GROUP")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(32);
    let formats = [QuantFormat::Q8 { group }, QuantFormat::Q4 { group }];
    let packed: Vec<_> = formats
        .iter()
        .map(|&format| quantize(&weight, n_out, k_in, format).expect("valid format"))
        .collect();
    let uploaded: Vec<Vec<_>> = packed
        .iter()
        .map(|p| {
            (0..copies)
                .map(|_| upload(p, &device).expect("upload"))
                .collect()
        })
        .collect();
    if copies > 1 {
        println!("{copies} copies of each weight, run in turn");
    }
    let next = std::cell::Cell::new(0usize);
    let turn = || {
        next.set(next.get() + 1);
        next.get() % copies
    };
    for rows in rows_list {
        let x = Tensor::<2>::random([rows, k_in], Distribution::Uniform(-1.0, 1.0), &device);
        let mut line = format!("[{rows} x {k_in}] x [{k_in} x {n_out}]:");
        let gflops = |ms: f64| 2.0 * (rows * k_in * n_out) as f64 / (ms * 1e-3) / 1e9;
        // GB/s of a GEMV: the weight's bytes on the device, x and the output.
        let gemv_gb =
            |weight_bytes: usize, ms: f64| gb(weight_bytes + 4 * rows * (k_in + n_out), ms);
        // `SPEED_FLOAT_ONLY=1`: our float GEMV alone (comparing its shapes per thread).
        let float_only = std::env::var("SPEED_FLOAT_ONLY").is_ok_and(|v| v == "1");
        match &dense {
            _ if float_only => {}
            Some(dense) => {
                let f32_ms = time(&device, || x.clone().matmul(dense[turn()].clone()));
                line += &format!(" f32 matmul {f32_ms:.2} ms");
                if rows > GEMV_MAX_ROWS {
                    line += &format!(" ({:.1} GFLOP/s)", gflops(f32_ms));
                }
                line += ",";
            }
            None => line += " (f32 weight exceeds one binding),",
        }
        let ms = time(&device, || blocked[turn()].matmul(x.clone()));
        line += &format!(" f32 GEMV kernel {ms:.2} ms");
        if rows <= GEMV_MAX_ROWS {
            line += &format!(" ({:.2} GB/s),", gemv_gb(blocked[0].device_bytes(), ms));
        } else {
            line += &format!(" ({:.1} GFLOP/s),", gflops(ms));
        }
        for (format, w) in formats.iter().zip(&uploaded) {
            if float_only {
                break;
            }
            let ms = time(&device, || quant_matmul(x.clone(), &w[turn()]));
            let w = &w[0];
            line += &format!(" {} {ms:.2} ms", format.name());
            if rows <= GEMV_MAX_ROWS {
                let rate = gemv_gb(w.device_bytes(), ms);
                line += &format!(" ({rate:.2} GB/s, {:.0}% of copy)", 100.0 * rate / copy_gb);
            } else {
                line += &format!(" ({:.1} GFLOP/s)", gflops(ms));
            }
            line += ";";
        }
        println!("{line}");
    }
}

/// Median of 5 timed runs (`SPEED_RUNS`) after 2 warm-ups, in milliseconds, reading one value back each time.
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
    let runs = std::env::var("SPEED_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(1);
    let mut times: Vec<f64> = (0..runs).map(|_| run()).collect();
    times.sort_by(f64::total_cmp);
    if std::env::var("SPEED_VERBOSE").is_ok() {
        eprintln!("  times (ms): {times:.2?}");
    }
    times[runs / 2]
}
