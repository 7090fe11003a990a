//! Quantized linear layers end to end on the fixture checkpoints against transformers 4.54.1
//! (f32): q8 keeps every greedy token, q4's logit error is printed and bounded, a checkpoint saved
//! by `quantize_checkpoint` loads to the same numbers as quantizing at load, and the WGSL kernels
//! (wgpu) give what the plain-burn reference (CPU) gives.
#![allow(clippy::unwrap_used)]

use super::common;

use std::ops::ControlFlow;

use burn::tensor::{DType, Device};
use common::*;
use idefics2::quant::{QuantFormat, QuantPolicy};
use idefics2::quant_save::quantize_checkpoint;
use idefics2::{DeviceChoice, GenerationConfig, GenerationOptions, Idefics2, init_device};

/// Logits at each row's last position for a reference case, `[batch * vocab]`.
fn last_logits(model: &Idefics2, case_name: &str, checkpoint: &str) -> Vec<f64> {
    let case = reference_case(checkpoint, case_name);
    let input = model_input(&case);
    let features = input.pixels.as_ref().map(|pixels| {
        let vision = model.vision_input(pixels).unwrap().unwrap();
        let hidden = model.vision_hidden(&vision);
        model.connector_out(&vision, hidden)
    });
    let embeds = model.inputs_embeds(&input, features).unwrap();
    let mut cache = model.new_cache(input.batch, input.seq).unwrap();
    let hidden = model
        .decode(
            embeds,
            &input.attention_mask,
            &input.positions(),
            &mut cache,
        )
        .unwrap();
    let vocab = model.config.text_config.vocab_size;
    to_f64(model.logits(hidden))
        .chunks(vocab * input.seq)
        .flat_map(|row| row[(input.seq - 1) * vocab..].to_vec())
        .collect()
}

/// Greedy ids of every row equal the reference's; returns the largest logprob error.
fn greedy_matches(model: &Idefics2, checkpoint: &str, case_name: &str, label: &str) -> f64 {
    let (tokens, logprobs) = greedy(model, checkpoint, case_name);
    let case = reference_case(checkpoint, case_name);
    let steps = case["greedy_ids"].shape[1];
    let expected = case["greedy_ids"].as_i64();
    let mut worst = 0.0f64;
    for row in 0..tokens.len() {
        let want: Vec<i64> = expected[row * steps..(row + 1) * steps]
            .iter()
            .copied()
            .filter(|&t| t >= 0)
            .collect();
        let got: Vec<i64> = tokens[row].iter().map(|&t| t as i64).collect();
        assert_eq!(
            got, want,
            "{label} {checkpoint}/{case_name} row {row}: greedy ids"
        );
        for (i, lp) in logprobs[row].iter().enumerate() {
            let reference = case["greedy_logprobs"].values[row * steps + i];
            worst = worst.max((*lp as f64 - reference).abs());
        }
    }
    worst
}

/// Greedy ids and their logprobs per row for a reference case's prompt (as many steps as the
/// reference took).
fn greedy(model: &Idefics2, checkpoint: &str, case_name: &str) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let dir = common::checkpoint(checkpoint);
    let generation = GenerationConfig::from_file(&dir.join("generation_config.json")).unwrap();
    let case = reference_case(checkpoint, case_name);
    let input = model_input(&case);
    let steps = case["greedy_ids"].shape[1];
    let options = GenerationOptions::from_generation_config(&generation, steps);
    let out = model
        .generate(&input, &options, |_| ControlFlow::Continue(()))
        .unwrap();
    (out.tokens, out.logprobs)
}

/// Logit error over all cases at each row's last position: RMS of the difference over RMS of
/// the reference logits.
fn relative_logit_error(model: &Idefics2, checkpoint: &str) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for case_name in CASES {
        let case = reference_case(checkpoint, case_name);
        let reference = &case["logits_last"].values;
        let got = last_logits(model, case_name, checkpoint);
        assert_eq!(got.len(), reference.len());
        for (g, r) in got.iter().zip(reference) {
            diff += (g - r) * (g - r);
            norm += r * r;
        }
    }
    (diff / norm).sqrt()
}

/// For every case and each `(label, expected, got)` model pair: the last-position logits within
/// `bound` of each other (printed).
fn same_logits(checkpoint: &str, what: &str, pairs: &[(&str, &Idefics2, &Idefics2)], bound: f64) {
    for case_name in CASES {
        for &(label, expected, got) in pairs {
            let a = last_logits(expected, case_name, checkpoint);
            let b = last_logits(got, case_name, checkpoint);
            let diff = max_abs_diff(what, &b, &a);
            println!("{checkpoint}/{case_name}: {label} {what} logits max diff {diff:.2e}");
            assert!(diff < bound, "{checkpoint}/{case_name} {label}: {diff}");
        }
    }
}

fn load(checkpoint: &str, device: &Device, format: QuantFormat) -> Idefics2 {
    let dir = common::checkpoint(checkpoint);
    Idefics2::load_quantized(&dir, device, DType::F32, QuantPolicy::new(Some(format))).unwrap()
}

/// Everything on the CPU device (its quantized matmul, checked against the plain-burn oracle),
/// then the same on wgpu (the WGSL kernels) compared with it: one test so the GPU shapes compile
/// once.
#[test]
fn quantized_models_match_the_reference() {
    let cpu = init_device(DeviceChoice::Cpu).unwrap();
    let gpu = gpu();
    for checkpoint in CHECKPOINTS {
        // q8: the greedy path of transformers' f32 model is kept, on both devices.
        let q8 = load(checkpoint, &cpu, QuantFormat::Q8_32);
        let q8_gpu = load(checkpoint, &gpu, QuantFormat::Q8_32);
        for case_name in CASES {
            let cpu_lp = greedy_matches(&q8, checkpoint, case_name, "cpu q8");
            let gpu_lp = greedy_matches(&q8_gpu, checkpoint, case_name, "wgpu q8");
            println!(
                "{checkpoint}/{case_name}: q8 greedy ids equal the reference; logprob error cpu {cpu_lp:.2e}, wgpu {gpu_lp:.2e}"
            );
        }
        let q8_error = relative_logit_error(&q8, checkpoint);

        // q4: error printed and bounded.
        let q4 = load(checkpoint, &cpu, QuantFormat::Q4_32);
        let q4_error = relative_logit_error(&q4, checkpoint);
        println!(
            "{checkpoint}: last-position logits, RMS error / RMS: q8 {q8_error:.2e}, q4 {q4_error:.2e}"
        );
        // Measured on these random fixtures: q8 1.5e-2, q4 2.5e-1 (tiny-f32).
        assert!(q8_error < 0.03, "{checkpoint}: q8 logit error {q8_error}");
        assert!(q4_error < 0.4, "{checkpoint}: q4 logit error {q4_error}");

        // The CPU device's matmul (reading the host codes) gives what the plain-burn oracle gives
        // on the same weights kept as tensors.
        idefics2_kernels::force_tensor_weights(true);
        let q8_oracle = load(checkpoint, &cpu, QuantFormat::Q8_32);
        let q4_oracle = load(checkpoint, &cpu, QuantFormat::Q4_32);
        idefics2_kernels::force_tensor_weights(false);
        same_logits(
            checkpoint,
            "cpu matmul vs plain-burn",
            &[("q8", &q8_oracle, &q8)],
            1e-4,
        );
        // q4 with a few rows (here the perceiver's 8 latents) runs in 16-bit integers on AVX2
        // CPUs: each block of 32 activations rounded to 32767ths of its largest. Measured 1.2e-3
        // on tiny-f32 (its q4 error against transformers is 2.5e-1 relative).
        same_logits(
            checkpoint,
            "cpu matmul vs plain-burn",
            &[("q4", &q4_oracle, &q4)],
            2e-3,
        );
        // Decoding (a few rows: the GEMV, for q4 in 16-bit integers where the CPU has AVX2) keeps
        // the oracle's greedy ids.
        for case_name in CASES {
            let (ids, logprobs) = greedy(&q4, checkpoint, case_name);
            let (want_ids, want_logprobs) = greedy(&q4_oracle, checkpoint, case_name);
            assert_eq!(
                ids, want_ids,
                "{checkpoint}/{case_name}: q4 greedy ids, cpu matmul vs plain-burn"
            );
            let diff = logprobs
                .iter()
                .flatten()
                .zip(want_logprobs.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!(
                "{checkpoint}/{case_name}: q4 greedy decode, cpu matmul vs plain-burn: same ids, logprob max diff {diff:.2e}"
            );
            assert!(
                diff < 1e-3,
                "{checkpoint}/{case_name}: q4 decode logprobs differ by {diff}"
            );
        }

        // The kernels on wgpu give what the plain-burn reference gives on the CPU.
        let q4_gpu = load(checkpoint, &gpu, QuantFormat::Q4_32);
        let pairs = [("q8", &q8_oracle, &q8_gpu), ("q4", &q4_oracle, &q4_gpu)];
        same_logits(checkpoint, "wgpu vs cpu", &pairs, 1e-3);

        // Saved q4 loads to exactly what quantizing at load gives.
        let out = std::env::temp_dir().join(format!(
            "idefics2-quantized-{checkpoint}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);
        let dir = common::checkpoint(checkpoint);
        let summary =
            quantize_checkpoint(&dir, &out, QuantPolicy::new(Some(QuantFormat::Q4_32))).unwrap();
        assert!(summary.quantized_layers > 0);
        let saved = Idefics2::load(&out, &cpu, DType::F32).unwrap();
        // Scales and zero points are stored as F16 (exactly: they are f16 numbers).
        let file = std::fs::read(out.join("model.safetensors")).unwrap();
        let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&file[8..8 + header_len]).unwrap();
        let dtypes: Vec<&str> = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(name, _)| name.ends_with(".scales") || name.ends_with(".qzeros"))
            .map(|(_, entry)| entry["dtype"].as_str().unwrap())
            .collect();
        assert!(
            !dtypes.is_empty() && dtypes.iter().all(|d| *d == "F16"),
            "{dtypes:?}"
        );
        for case_name in CASES {
            assert_eq!(
                last_logits(&saved, case_name, checkpoint),
                last_logits(&q4, case_name, checkpoint),
                "{checkpoint}/{case_name}: saved q4 differs from q4 at load"
            );
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Asking a saved checkpoint for another format, or quantizing it again, is a clear error.
#[test]
fn saved_checkpoints_refuse_another_format() {
    let cpu = init_device(DeviceChoice::Cpu).unwrap();
    let out = std::env::temp_dir().join(format!("idefics2-quantized-q8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let dir = common::checkpoint("tiny-f32");
    quantize_checkpoint(&dir, &out, QuantPolicy::new(Some(QuantFormat::Q8_32))).unwrap();
    let err = Idefics2::load_quantized(
        &out,
        &cpu,
        DType::F32,
        QuantPolicy::new(Some(QuantFormat::Q4_32)),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("already quantized as q8g32"), "{err}");
    let again = out.with_extension("again");
    let err = quantize_checkpoint(&out, &again, QuantPolicy::new(Some(QuantFormat::Q4_32)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already quantized"), "{err}");
    let err = quantize_checkpoint(&dir, &out, QuantPolicy::new(Some(QuantFormat::Q8_32)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds a model"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}
