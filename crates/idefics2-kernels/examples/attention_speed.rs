//! Flash attention against attention in burn ops on the default wgpu adapter, causal prefill of
//! one Mistral-7B layer (32 query heads over 8 key/value heads of 128):
//! `cargo run --release --example attention_speed [tokens...]` (1024 4096 8192 unless given;
//! `--heads H KV` and `--rows R` (query rows per thread) before the lengths for other settings;
//! `IDEFICS2_PLAIN_LOADS=1`: K and V loaded by every lane, not shared over subgroups).

use burn::tensor::Device;
use idefics2_kernels::WgpuCaps;
use idefics2_kernels::figures::{FigureShapes, attention_figures};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut shapes = FigureShapes::default();
    if args.first().is_some_and(|a| a == "--heads") && args.len() >= 3 {
        shapes.attention_heads = args[1].parse().expect("heads");
        shapes.attention_kv_heads = args[2].parse().expect("key/value heads");
        args.drain(..3);
    }
    if args.first().is_some_and(|a| a == "--rows") && args.len() >= 2 {
        idefics2_kernels::force_attention_rows_per_thread(Some(args[1].parse().expect("rows")));
        args.drain(..2);
    }
    if std::env::var("IDEFICS2_PLAIN_LOADS").is_ok_and(|v| v == "1") {
        idefics2_kernels::force_plain_loads(true);
    }
    let tokens: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if !tokens.is_empty() {
        shapes.attention_tokens = tokens;
    }
    let device = Device::wgpu_options().init().expect("a wgpu adapter");
    let caps = WgpuCaps::of(&device).expect("a wgpu device");
    println!("adapter: {}", caps.adapter);
    for figure in attention_figures(&device, &shapes, 3) {
        println!(
            "{:<24} {:<44} {:>10.1} ms {:>8.1} GFLOP/s",
            figure.kernel,
            figure.shape,
            figure.milliseconds,
            figure.gflop_per_s.unwrap_or(0.0)
        );
    }
}
