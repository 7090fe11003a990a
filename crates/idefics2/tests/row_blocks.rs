//! Float matrices larger than the device's storage binding are kept in row blocks (the 8B
//! embedding table and lm_head on lavapipe and in browsers). Forcing a small binding limit must
//! not change a single generated token or logprob beyond rounding.
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
    let device = init_device(DeviceChoice::Cpu).unwrap();
    let whole = Idefics2::load(&dir, &device, DType::F32).unwrap();
    // Only this test runs in this binary, so the variable is seen by this load alone.
    // SAFETY (edition 2024 marks set_var unsafe): no other thread reads the environment now.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("IDEFICS2_MAX_BINDING_BYTES", (256 * 1024).to_string());
    }
    let blocked = Idefics2::load(&dir, &device, DType::F32).unwrap();
    let blocks = blocked.model.text_model.embed_tokens.chunks.len();
    assert!(
        blocks > 1,
        "the embedding should be split, got {blocks} block"
    );
    assert!(matches!(blocked.lm_head.weight, LinearWeight::Chunked(_)));
    println!("embedding in {blocks} blocks");

    let generation = GenerationConfig::from_file(&dir.join("generation_config.json")).unwrap();
    let options = GenerationOptions::from_generation_config(&generation, 8);
    let input = model_input(&reference_case("tiny-f32", "batch_left_pad"));
    let run = |model: &Idefics2| {
        model
            .generate(&input, &options, |_| ControlFlow::Continue(()))
            .unwrap()
    };
    let (a, b) = (run(&whole), run(&blocked));
    assert_eq!(a.tokens, b.tokens);
    for (x, y) in a.logprobs.iter().flatten().zip(b.logprobs.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "logprob {x} vs {y}");
    }
}
