//! Float matrices larger than the device's storage binding are kept in row blocks (the 8B
//! embedding table and lm_head on lavapipe and in browsers). Forcing a small binding limit must
//! not change a single generated token or logprob beyond rounding, on the CPU device and on a
//! GPU (lavapipe in CI).
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;

use burn::tensor::DType;
use common::*;
use idefics2::model::layers::LinearWeight;
use idefics2::{DeviceChoice, GenerationConfig, GenerationOptions, Idefics2, init_device};

#[test]
fn row_blocks_generate_what_whole_matrices_do() {
    let dir = checkpoint("tiny-f32");
    let cpu = init_device(DeviceChoice::Cpu).unwrap();
    let gpu = init_device(DeviceChoice::Gpu).unwrap();
    // On a GPU in f16: f32 weights on a CPU adapter take the float GEMV instead, so f16 is what
    // runs row blocks through burn's matmul on lavapipe.
    assert!(gpu.supports_dtype(DType::F16), "the GPU has no shader-f16");
    let whole = Idefics2::load(&dir, &cpu, DType::F32).unwrap();
    let whole_gpu = Idefics2::load(&dir, &gpu, DType::F16).unwrap();
    // Only this test runs in this binary, so the variable is seen by the loads below alone.
    // SAFETY (edition 2024 marks set_var unsafe): no other thread reads the environment now.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("IDEFICS2_MAX_BINDING_BYTES", (256 * 1024).to_string());
    }
    let blocked = Idefics2::load(&dir, &cpu, DType::F32).unwrap();
    let blocked_gpu = Idefics2::load(&dir, &gpu, DType::F16).unwrap();
    for model in [&blocked, &blocked_gpu] {
        let blocks = model.model.text_model.embed_tokens.chunks.len();
        assert!(
            blocks > 1,
            "the embedding should be split, got {blocks} block"
        );
        assert!(matches!(model.lm_head.weight, LinearWeight::Chunked(_)));
        println!("embedding in {blocks} blocks");
    }

    let generation = GenerationConfig::from_file(&dir.join("generation_config.json")).unwrap();
    let options = GenerationOptions::from_generation_config(&generation, 8);
    let input = model_input(&reference_case("tiny-f32", "batch_left_pad"));
    let run = |model: &Idefics2| {
        model
            .generate(&input, &options, |_| ControlFlow::Continue(()))
            .unwrap()
    };
    for (label, a, b) in [
        ("cpu f32", &whole, &blocked),
        ("gpu f16", &whole_gpu, &blocked_gpu),
    ] {
        let (a, b) = (run(a), run(b));
        assert_eq!(a.tokens, b.tokens, "{label}");
        let worst = a
            .logprobs
            .iter()
            .flatten()
            .zip(b.logprobs.iter().flatten())
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!("{label}: worst logprob difference {worst:e}");
        assert!(worst < 1e-4, "{label}: logprobs differ by {worst:e}");
    }
}
