//! Generation behaviour beyond greedy parity: batch rows equal their single runs, cancellation
//! between steps, seeded sampling, option validation, context limits.
#![allow(clippy::unwrap_used)]

use super::common;

use std::ops::ControlFlow;

use burn::tensor::DType;
use common::*;
use idefics2::{
    DeviceChoice, Error, FinishReason, GenerationConfig, GenerationOptions, Idefics2, ModelInput,
    PixelBatch, Sampling, SamplingOptions, init_device,
};

fn tiny_model() -> (Idefics2, GenerationConfig) {
    let dir = checkpoint("tiny-f32");
    let device = init_device(DeviceChoice::Cpu).unwrap();
    let model = Idefics2::load(&dir, &device, DType::F32).unwrap();
    let generation = GenerationConfig::from_file(&dir.join("generation_config.json")).unwrap();
    (model, generation)
}

/// Row `row` of a left-padded batch input, without its padding.
fn single_row(input: &ModelInput, row: usize) -> ModelInput {
    let seq = input.seq;
    let range = row * seq..(row + 1) * seq;
    let ids: Vec<u32> = input.input_ids[range.clone()]
        .iter()
        .zip(&input.attention_mask[range])
        .filter(|(_, m)| **m != 0)
        .map(|(id, _)| *id)
        .collect();
    let pixels = input.pixels.as_ref().map(|p| {
        let [_, n, c, h, w] = p.shape;
        let (per_image, per_mask) = (c * h * w, h * w);
        PixelBatch {
            pixel_values: p.pixel_values[row * n * per_image..(row + 1) * n * per_image].to_vec(),
            pixel_attention_mask: p.pixel_attention_mask
                [row * n * per_mask..(row + 1) * n * per_mask]
                .to_vec(),
            shape: [1, n, c, h, w],
            image_sizes: Vec::new(),
        }
    });
    ModelInput::single(ids, pixels)
}

#[test]
fn each_batch_row_yields_what_it_yields_alone() {
    let (model, generation) = tiny_model();
    let input = model_input(&reference_case("tiny-f32", "batch_left_pad"));
    let options = GenerationOptions::from_generation_config(&generation, 10);
    let batched = model
        .generate(&input, &options, |_| ControlFlow::Continue(()))
        .unwrap();
    for row in 0..input.batch {
        let alone = model
            .generate(&single_row(&input, row), &options, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(batched.tokens[row], alone.tokens[0], "row {row}");
        for (a, b) in batched.logprobs[row].iter().zip(&alone.logprobs[0]) {
            assert!((a - b).abs() < 1e-4, "row {row}: logprob {a} vs {b}");
        }
        assert_eq!(batched.prompt_tokens[row], alone.prompt_tokens[0]);
    }
}

#[test]
fn cancelling_stops_between_steps() {
    let (model, generation) = tiny_model();
    let input = model_input(&reference_case("tiny-f32", "one_image"));
    let options = GenerationOptions::from_generation_config(&generation, 10);
    let mut seen = Vec::new();
    let out = model
        .generate(&input, &options, |event| {
            seen.push(event.token);
            if seen.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(out.tokens[0], seen);
    assert_eq!(out.tokens[0].len(), 3);
    assert_eq!(out.finish[0], FinishReason::Cancelled);
}

#[test]
fn sampling_is_reproducible_per_seed_and_honours_max_new_tokens() {
    let (model, generation) = tiny_model();
    let input = model_input(&reference_case("tiny-f32", "text_only"));
    let sample = |seed| {
        let mut options = GenerationOptions::from_generation_config(&generation, 8);
        options.sampling = SamplingOptions {
            sampling: Sampling::Sample {
                temperature: 1.5,
                top_k: 50,
                top_p: 0.95,
                seed,
            },
            repetition_penalty: 1.3,
        };
        model
            .generate(&input, &options, |_| ControlFlow::Continue(()))
            .unwrap()
            .tokens[0]
            .clone()
    };
    let first = sample(1);
    assert_eq!(first.len(), 8);
    assert_eq!(first, sample(1));
    assert!(
        (2..6).any(|seed| sample(seed) != first),
        "different seeds never changed the sample"
    );
    let banned = [32000u32, 32001];
    assert!(
        first.iter().all(|t| !banned.contains(t)),
        "bad words were generated: {first:?}"
    );
}

#[test]
fn bad_options_and_inputs_are_errors() {
    let (model, generation) = tiny_model();
    let input = model_input(&reference_case("tiny-f32", "text_only"));
    let mut options = GenerationOptions::from_generation_config(&generation, 4);
    options.sampling.sampling = Sampling::Sample {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };
    assert!(matches!(
        model.generate(&input, &options, |_| ControlFlow::Continue(())),
        Err(Error::GenerationOption(_))
    ));

    let options = GenerationOptions::from_generation_config(&generation, 1000);
    let err = model
        .generate(&input, &options, |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        matches!(err, Error::TooManyTokens { limit: 512, .. }),
        "{err}"
    );

    // An image given without its `<image>` tokens.
    let with_image = model_input(&reference_case("tiny-f32", "one_image"));
    let text_ids = ModelInput::single(input.input_ids.clone(), with_image.pixels.clone());
    let options = GenerationOptions::from_generation_config(&generation, 2);
    let err = model
        .generate(&text_ids, &options, |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ImageTokenCount {
                tokens: 0,
                features: 8,
                ..
            }
        ),
        "{err}"
    );

    let out_of_vocab = ModelInput::single(vec![1, 40000], None);
    assert!(
        model
            .generate(&out_of_vocab, &options, |_| ControlFlow::Continue(()))
            .is_err()
    );
    let empty = ModelInput::single(vec![], None);
    assert!(
        model
            .generate(&empty, &options, |_| ControlFlow::Continue(()))
            .is_err()
    );
}
