//! `idefics2 bench`: end-to-end figures (load, time to first token with image splitting off and
//! on, prefill and decode speed, accounted device memory) on a model directory or on random
//! weights of a real architecture (`--synthetic idefics2-8b`).

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use idefics2::pipeline::{Pipeline, Prompt, Request};
use idefics2::processor::{ChatMessage, ContentPart, DynamicImage, ImageOptions};
use idefics2::synthetic::{PRESETS, preset_config};
use serde::Serialize;

use crate::options::{ModelArgs, QuantArgs, RuntimeArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Random weights of a known architecture instead of --model (made in memory).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    pub synthetic: Option<String>,
    /// With --synthetic: keep only the first N decoder layers.
    #[arg(long, requires = "synthetic")]
    pub layers: Option<usize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Side of the square test image, in pixels.
    #[arg(long, default_value_t = 980)]
    pub image_size: u32,
    /// Tokens generated per run (the end-of-sequence tokens are ignored).
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Timed runs per setting, after one warm-up run (the first run of a shape compiles kernels);
    /// 0: one run, timed cold (compilation included), for models too slow to run twice.
    #[arg(long, default_value_t = 2)]
    pub runs: usize,
    /// Which image-splitting settings to measure (default: off, then on).
    #[arg(long, value_enum)]
    pub splitting: Option<crate::options::OnOff>,
    /// Also measure the kernels (copy, quantized GEMV and GEMM, burn's matmul, flash attention
    /// against attention in burn ops); default: on a GPU device.
    #[arg(long, value_enum)]
    pub kernels: Option<crate::options::OnOff>,
    /// Prompt lengths of the attention figures (causal prefill of one Mistral-7B layer).
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096, 8192])]
    pub attention_tokens: Vec<usize>,
    /// Also profile one more run (the last splitting setting): time per kind of operation for
    /// the prefill and per decode step, the device waited on around each (so slower than the
    /// plain runs).
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One kind of operation in the profile.
#[derive(Serialize)]
struct ProfileRow {
    kind: &'static str,
    prefill_seconds: f64,
    decode_seconds_per_token: f64,
}

#[derive(Serialize)]
struct Profile {
    /// Wall time of the profiled prefill and decode step, scopes and remainder together.
    prefill_seconds: f64,
    decode_seconds_per_token: f64,
    rows: Vec<ProfileRow>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    device: &'static str,
    quant: String,
    load_seconds: f64,
    weight_bytes: usize,
    settings: Vec<SettingReport>,
    kernels: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Profile>,
}

#[derive(Serialize)]
struct SettingReport {
    image_splitting: bool,
    prompt_tokens: usize,
    warmup_seconds: f64,
    time_to_first_token_seconds: f64,
    prefill_tokens_per_second: f64,
    decode_tokens_per_second: f64,
    kv_cache_bytes: usize,
    accounted_peak_bytes: usize,
}

/// A deterministic test picture: colour gradients with a few bands, so that the image is not
/// constant (a constant image would be no cheaper, but looks like a bug in a screenshot).
fn test_image(side: u32) -> DynamicImage {
    let image = image::RgbImage::from_fn(side, side, |x, y| {
        let band = ((x / 70 + y / 70) % 2) as u8 * 60;
        image::Rgb([
            (x * 255 / side.max(1)) as u8,
            (y * 255 / side.max(1)) as u8,
            band + 100,
        ])
    });
    DynamicImage::ImageRgb8(image)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (device, dtype) = args.runtime.device()?;
    let start = Instant::now();
    let (pipeline, model_name) = match &args.synthetic {
        Some(name) => {
            let config = preset_config(name, args.layers)?;
            let label = match args.layers {
                Some(n) => format!("synthetic {name} ({n} decoder layers)"),
                None => format!("synthetic {name}"),
            };
            let pipeline = Pipeline::synthetic(config, &device, dtype, args.quant.policy()?, 0)?;
            (pipeline, label)
        }
        None => {
            let dir = args.model.resolve()?;
            let pipeline = Pipeline::load_quantized(&dir, &device, dtype, args.quant.policy()?)
                .with_context(|| format!("loading {}", dir.display()))?;
            (pipeline, dir.display().to_string())
        }
    };
    let load_seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "{model_name}: loaded in {load_seconds:.1} s ({:.2} GiB of weights)",
        pipeline.model.weight_bytes as f64 / (1u64 << 30) as f64
    );
    let request = Request {
        prompt: Prompt::Chat(vec![ChatMessage::new(
            "user",
            vec![
                ContentPart::Image,
                ContentPart::text("Describe this image."),
            ],
        )]),
        images: vec![test_image(args.image_size)],
    };
    let mut options = pipeline.generation_options(args.decode_tokens);
    options.eos_token_ids.clear();
    let text = &pipeline.model.config.text_config;
    let mut settings = Vec::new();
    let splitting_settings = match args.splitting {
        Some(choice) => vec![choice == crate::options::OnOff::On],
        None => vec![false, true],
    };
    for splitting in splitting_settings {
        let input = pipeline.prepare(
            std::slice::from_ref(&request),
            &ImageOptions {
                do_image_splitting: Some(splitting),
                ..ImageOptions::default()
            },
        )?;
        let warmup = Instant::now();
        if args.runs > 0 {
            pipeline
                .model
                .generate(&input, &options, |_| ControlFlow::Continue(()))?;
        }
        let warmup_seconds = warmup.elapsed().as_secs_f64();
        let (mut prefill, mut decode, mut decoded) = (0.0, 0.0, 0usize);
        for _ in 0..args.runs.max(1) {
            let out = pipeline
                .model
                .generate(&input, &options, |_| ControlFlow::Continue(()))?;
            prefill += out.prefill_seconds;
            decode += out.decode_seconds;
            decoded += out.tokens[0].len().saturating_sub(1);
        }
        let runs = args.runs.max(1) as f64;
        let capacity = input.seq + args.decode_tokens;
        let kv_cache_bytes = 2
            * text.num_hidden_layers
            * text.num_key_value_heads()
            * text.head_dim()
            * capacity
            * pipeline.model.dtype().size();
        eprintln!(
            "splitting {}: {} prompt tokens, first token after {:.3} s, decode {:.2} tok/s (warm-up {:.1} s)",
            if splitting { "on" } else { "off" },
            input.seq,
            prefill / runs,
            if decode > 0.0 {
                decoded as f64 / decode
            } else {
                0.0
            },
            warmup_seconds
        );
        settings.push(SettingReport {
            image_splitting: splitting,
            prompt_tokens: input.seq,
            warmup_seconds,
            time_to_first_token_seconds: prefill / runs,
            prefill_tokens_per_second: input.seq as f64 * runs / prefill,
            decode_tokens_per_second: if decode > 0.0 {
                decoded as f64 / decode
            } else {
                0.0
            },
            kv_cache_bytes,
            accounted_peak_bytes: pipeline.model.weight_bytes + kv_cache_bytes,
        });
    }
    let profile = match (args.profile, settings.last()) {
        (true, Some(last)) => {
            let input = pipeline.prepare(
                std::slice::from_ref(&request),
                &ImageOptions {
                    do_image_splitting: Some(last.image_splitting),
                    ..ImageOptions::default()
                },
            )?;
            Some(profile_run(&pipeline, &input, &options)?)
        }
        _ => None,
    };
    let measure_kernels = match args.kernels {
        Some(choice) => choice == crate::options::OnOff::On,
        None => idefics2_kernels::WgpuCaps::of(&device).is_some(),
    };
    let kernels = if measure_kernels {
        if idefics2_kernels::WgpuCaps::of(&device).is_none() {
            anyhow::bail!("--kernels on needs --device gpu");
        }
        let shapes = idefics2_kernels::figures::FigureShapes {
            attention_tokens: args.attention_tokens.clone(),
            ..Default::default()
        };
        idefics2_kernels::figures::measure(&device, &shapes, 5)
    } else {
        Vec::new()
    };
    let report = Report {
        model: model_name,
        device: args.runtime.label(),
        quant: args.quant.policy()?.label(),
        load_seconds,
        weight_bytes: pipeline.model.weight_bytes,
        settings,
        kernels: kernels.iter().map(|k| k.to_json()).collect(),
        profile,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(adapter) = idefics2::chosen_adapter() {
            println!("adapter: {adapter}");
        }
        print_table(&report, args.image_size);
        if let Some(profile) = &report.profile {
            print_profile(profile);
        }
        print_kernels(&kernels, &device);
    }
    Ok(())
}

/// One generation with the profile on: the table is taken at the first token (prefill: vision
/// encoder, connector, prompt pass, first logits and sampling) and at the end (the decode steps).
fn profile_run(
    pipeline: &Pipeline,
    input: &idefics2::ModelInput,
    options: &idefics2::GenerationOptions,
) -> Result<Profile> {
    idefics2::profile::enable(true);
    let mut prefill = Vec::new();
    let result = pipeline.model.generate(input, options, |event| {
        if event.index == 0 {
            prefill = idefics2::profile::take();
        }
        ControlFlow::Continue(())
    });
    let decode = idefics2::profile::take();
    idefics2::profile::enable(false);
    let out = result?;
    let steps = out.tokens[0].len().saturating_sub(1).max(1) as f64;
    let mut kinds: Vec<&'static str> = prefill.iter().map(|r| r.0).collect();
    for row in &decode {
        if !kinds.contains(&row.0) {
            kinds.push(row.0);
        }
    }
    let seconds = |table: &[(&'static str, f64, usize)], kind: &str| {
        table.iter().find(|r| r.0 == kind).map_or(0.0, |r| r.1)
    };
    let mut rows: Vec<ProfileRow> = kinds
        .into_iter()
        .map(|kind| ProfileRow {
            kind,
            prefill_seconds: seconds(&prefill, kind),
            decode_seconds_per_token: seconds(&decode, kind) / steps,
        })
        .collect();
    let (prefill_seconds, decode_seconds_per_token) =
        (out.prefill_seconds, out.decode_seconds / steps);
    let covered = |f: fn(&ProfileRow) -> f64| rows.iter().map(f).sum::<f64>();
    let other = ProfileRow {
        kind: "not in a scope (glue, host work)",
        prefill_seconds: (prefill_seconds - covered(|r| r.prefill_seconds)).max(0.0),
        decode_seconds_per_token: (decode_seconds_per_token
            - covered(|r| r.decode_seconds_per_token))
        .max(0.0),
    };
    rows.push(other);
    Ok(Profile {
        prefill_seconds,
        decode_seconds_per_token,
        rows,
    })
}

fn print_profile(profile: &Profile) {
    println!(
        "\nprofile (device waited on around each scope): prefill {:.3} s, decode {:.3} s/token",
        profile.prefill_seconds, profile.decode_seconds_per_token
    );
    println!("| kind | prefill s | prefill % | decode ms/token | decode % |");
    println!("| --- | --- | --- | --- | --- |");
    let pct = |part: f64, whole: f64| {
        if whole > 0.0 {
            100.0 * part / whole
        } else {
            0.0
        }
    };
    for row in &profile.rows {
        println!(
            "| {} | {:.3} | {:.1} | {:.2} | {:.1} |",
            row.kind,
            row.prefill_seconds,
            pct(row.prefill_seconds, profile.prefill_seconds),
            1e3 * row.decode_seconds_per_token,
            pct(
                row.decode_seconds_per_token,
                profile.decode_seconds_per_token
            )
        );
    }
}

fn print_table(report: &Report, image_size: u32) {
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    println!(
        "{} on {} ({}): loaded in {:.1} s, weights {:.2} GiB",
        report.model,
        report.device,
        report.quant,
        report.load_seconds,
        gib(report.weight_bytes)
    );
    println!(
        "| one {image_size}x{image_size} image | prompt tokens | time to first token | prefill tok/s | decode tok/s | accounted memory (weights + KV) | warm-up run |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for s in &report.settings {
        println!(
            "| splitting {} | {} | {:.3} s | {:.1} | {:.2} | {:.2} GiB | {:.1} s |",
            if s.image_splitting { "on" } else { "off" },
            s.prompt_tokens,
            s.time_to_first_token_seconds,
            s.prefill_tokens_per_second,
            s.decode_tokens_per_second,
            gib(s.accounted_peak_bytes),
            s.warmup_seconds
        );
    }
}

fn print_kernels(
    kernels: &[idefics2_kernels::figures::KernelFigure],
    device: &burn::tensor::Device,
) {
    if kernels.is_empty() {
        return;
    }
    if let Some(caps) = idefics2_kernels::WgpuCaps::of(device) {
        println!("\nkernels on {} ({}):", caps.adapter, caps.runtime);
    }
    println!("| kernel | shape | ms | GB/s | GFLOP/s |");
    println!("| --- | --- | --- | --- | --- |");
    let fmt = |v: Option<f64>| v.map_or("".to_string(), |v| format!("{v:.1}"));
    for k in kernels {
        println!(
            "| {} | {} | {:.3} | {} | {} |",
            k.kernel,
            k.shape,
            k.milliseconds,
            fmt(k.gb_per_s),
            fmt(k.gflop_per_s)
        );
    }
    // The quantized GEMVs' effective bandwidth against the copy kernel's on the same adapter.
    let copy = kernels.iter().find(|k| k.kernel.starts_with("copy"));
    if let Some(copy_gb) = copy.and_then(|k| k.gb_per_s) {
        for k in kernels.iter().filter(|k| k.kernel.contains("GEMV (WGSL)")) {
            if let Some(gb) = k.gb_per_s {
                println!(
                    "{} at {:.0}% of the copy kernel's GB/s",
                    k.kernel,
                    100.0 * gb / copy_gb
                );
            }
        }
    }
    // Each flash attention figure is followed by burn's on the same shape.
    for pair in kernels.windows(2) {
        if pair[0].kernel.starts_with("flash attention") && pair[1].shape == pair[0].shape {
            println!(
                "flash attention {:.2}x as fast as burn ops at {}",
                pair[1].milliseconds / pair[0].milliseconds,
                pair[0].shape
            );
        }
    }
}
