//! The serving engine on the default model (CPU device): requests batched together, joining a
//! running batch and leaving it, each get exactly the tokens `generate` gives them alone; limits,
//! validation and cancellation.
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::PathBuf;

use burn::tensor::DType;
use idefics2::engine::{
    Engine, EngineConfig, EngineEvent, EngineRequest, GenerateParams, StopReason, SubmitError,
};
use idefics2::pipeline::{Pipeline, Prompt, Request};
use idefics2::processor::{ChatMessage, ContentPart, ImageOptions, load_image};
use idefics2::{DeviceChoice, ModelInput, Sampling, SamplingOptions, init_device};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pipeline() -> Pipeline {
    let device = init_device(DeviceChoice::Cpu).unwrap();
    Pipeline::load(
        &repo().join("assets/idefics2-tiny-shapes"),
        &device,
        DType::F32,
    )
    .unwrap()
}

/// A chat turn about `images` (sample file names) with `question`.
fn ask(pipeline: &Pipeline, images: &[&str], question: &str) -> ModelInput {
    let mut content: Vec<ContentPart> = images.iter().map(|_| ContentPart::Image).collect();
    content.push(ContentPart::text(question));
    let images = images
        .iter()
        .map(|name| load_image(repo().join("assets/samples").join(name)).unwrap())
        .collect();
    let request = Request {
        prompt: Prompt::Chat(vec![ChatMessage::new("user", content)]),
        images,
    };
    pipeline
        .prepare(&[request], &ImageOptions::default())
        .unwrap()
}

fn greedy(max_new_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_new_tokens,
        ..GenerateParams::default()
    }
}

/// The requests of these tests, and what `Idefics2::generate` gives each alone.
fn cases(pipeline: &Pipeline) -> Vec<(ModelInput, GenerateParams, Vec<u32>)> {
    let inputs = [
        (
            ask(pipeline, &["shapes.png"], "What color is the shape?"),
            greedy(6),
        ),
        (
            ask(pipeline, &["several.png"], "How many shapes are there?"),
            greedy(9),
        ),
        (
            ask(
                pipeline,
                &["tall.png", "wide.png"],
                "What shape is in the first picture?",
            ),
            greedy(4),
        ),
        (ask(pipeline, &[], "Hello"), greedy(12)),
        (
            ask(pipeline, &["wide.png"], "What color is the shape?"),
            GenerateParams {
                max_new_tokens: 7,
                sampling: SamplingOptions {
                    sampling: Sampling::Sample {
                        temperature: 1.5,
                        top_k: 0,
                        top_p: 1.0,
                        seed: 11,
                    },
                    repetition_penalty: 1.0,
                },
                ..GenerateParams::default()
            },
        ),
    ];
    inputs
        .into_iter()
        .map(|(input, params)| {
            let mut options = pipeline.generation_options(params.max_new_tokens);
            options.sampling = params.sampling.clone();
            let alone = pipeline
                .model
                .generate(&input, &options, |_| ControlFlow::Continue(()))
                .unwrap();
            (input, params, alone.tokens[0].clone())
        })
        .collect()
}

fn ids(tokens: &[idefics2::engine::GeneratedToken]) -> Vec<u32> {
    tokens.iter().map(|t| t.id).collect()
}

#[test]
fn batched_requests_get_what_they_get_alone() {
    let pipeline = pipeline();
    let cases = cases(&pipeline);
    let engine = Engine::start(pipeline, EngineConfig::for_positions(4096)).unwrap();
    // All at once: they are prefilled one by one and decode together.
    let handles: Vec<_> = cases
        .iter()
        .map(|(input, params, _)| {
            engine
                .submit(EngineRequest::from_input(input.clone(), params.clone()))
                .unwrap()
        })
        .collect();
    for (handle, (_, params, expected)) in handles.into_iter().zip(&cases) {
        let (tokens, finished) = handle.wait().unwrap();
        assert_eq!(&ids(&tokens), expected);
        assert_eq!(finished.generated_tokens, expected.len());
        let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(finished.text, text);
        let expected_reason = if expected.len() < params.max_new_tokens {
            StopReason::EosToken
        } else {
            StopReason::Length
        };
        assert_eq!(finished.reason, expected_reason);
    }
    let stats = engine.stats();
    assert!(
        stats.decode_steps < cases.iter().map(|c| c.2.len()).sum::<usize>(),
        "the rows did not share decode steps: {stats:?}"
    );
    assert_eq!(engine.pending(), 0);
    // Each again, alone: each continues from the cache its batched run left (rows that were
    // padded in the batch included) and still gets the same tokens.
    for (input, params, expected) in &cases {
        let (tokens, _) = engine
            .submit(EngineRequest::from_input(input.clone(), params.clone()))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(&ids(&tokens), expected);
    }
    assert!(engine.stats().reused_tokens > 0);
}

#[test]
fn rows_join_and_leave_a_running_batch() {
    let pipeline = pipeline();
    let cases = cases(&pipeline);
    let engine = Engine::start(pipeline, EngineConfig::for_positions(4096)).unwrap();
    // Each request is submitted once the previous one has produced its second token, so every
    // one joins a batch that is already decoding and the short ones leave before the long ones.
    let mut handles = Vec::new();
    for (input, params, _) in &cases {
        let handle = engine
            .submit(EngineRequest::from_input(input.clone(), params.clone()))
            .unwrap();
        let (mut seen, mut done) = (Vec::new(), false);
        while seen.len() < 2 && !done {
            match handle.events.recv_blocking().unwrap() {
                EngineEvent::Token(token) => seen.push(token),
                EngineEvent::Finished(_) => done = true,
                EngineEvent::Failed(message) => panic!("{message}"),
            }
        }
        handles.push((handle, seen, done));
    }
    for ((handle, mut seen, done), (_, _, expected)) in handles.into_iter().zip(&cases) {
        if !done {
            let (rest, _) = handle.wait().unwrap();
            seen.extend(rest);
        }
        assert_eq!(&ids(&seen), expected);
    }
    assert_eq!(engine.stats().running, 0);
}

#[test]
fn limits_cancellation_and_validation() {
    let pipeline = pipeline();
    let input = ask(&pipeline, &["shapes.png"], "What color is the shape?");
    let prompt_tokens = input.seq;
    let config = EngineConfig {
        max_concurrent_requests: 2,
        max_batch_size: 1,
        max_input_tokens: prompt_tokens,
        max_total_tokens: prompt_tokens + 50,
        ..EngineConfig::for_positions(4096)
    };
    let engine = Engine::start(pipeline, config).unwrap();
    let request = |max_new_tokens| EngineRequest::from_input(input.clone(), greedy(max_new_tokens));

    // Validation names the field and the limit.
    let refused = |r: EngineRequest| match engine.submit(r) {
        Err(SubmitError::Validation(message)) => message,
        other => panic!("expected a validation error, got {other:?}"),
    };
    assert!(refused(request(0)).contains("max_new_tokens"));
    assert!(refused(request(51)).contains(&format!("must be <= {}", prompt_tokens + 50)));
    let mut long = request(1);
    long.input_ids.push(1);
    assert!(refused(long).contains(&format!("must be <= {prompt_tokens}")));
    let mut stops = request(1);
    stops.params.stop = vec!["a".into(); 5];
    assert!(refused(stops).contains("up to 4 stop sequences"));
    let mut hot = request(1);
    hot.params.sampling.sampling = Sampling::Sample {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };
    assert!(refused(hot).contains("temperature"));

    // Two requests fill the queue (one runs, one waits: batch size 1); a third is refused.
    let first = engine.submit(request(50)).unwrap();
    let second = engine.submit(request(3)).unwrap();
    assert_eq!(
        engine.submit(request(3)).unwrap_err(),
        SubmitError::Overloaded { limit: 2 }
    );
    // Cancelling the running one frees its slot: the waiting one runs and a new one is taken.
    first.cancel.cancel();
    let mut cancelled = None;
    while let Ok(event) = first.events.recv_blocking() {
        match event {
            EngineEvent::Finished(finished) => cancelled = Some(finished),
            EngineEvent::Failed(message) => panic!("{message}"),
            EngineEvent::Token(_) => {}
        }
    }
    let cancelled = cancelled.unwrap();
    assert_eq!(cancelled.reason, StopReason::Cancelled);
    assert!(cancelled.generated_tokens < 50);
    let (tokens, _) = second.wait().unwrap();
    assert!(!tokens.is_empty());
    // A dropped handle (a client that hung up) frees its slot too.
    drop(engine.submit(request(50)).unwrap());
    let third = engine.submit(request(2)).unwrap();
    assert!(third.wait().is_ok());
    while engine.pending() > 0 {
        std::thread::yield_now();
    }

    // A stop sequence ends the request once the text contains it.
    let (all, _) = engine.submit(request(6)).unwrap().wait().unwrap();
    let text: String = all.iter().map(|t| t.text.as_str()).collect();
    let cut = text.trim().chars().next().unwrap().to_string();
    let mut stopping = request(6);
    stopping.params.stop = vec![cut.clone()];
    let (tokens, finished) = engine.submit(stopping).unwrap().wait().unwrap();
    assert_eq!(
        finished.reason,
        StopReason::StopSequence,
        "{text:?} stop {cut:?}"
    );
    assert!(finished.text.contains(&cut) && tokens.len() <= all.len());

    // Closing refuses new requests.
    engine.close();
    assert_eq!(
        engine.submit(request(1)).unwrap_err(),
        SubmitError::ShuttingDown
    );
}

/// The second turn of a chat continues from the first turn's KV cache (its image is not encoded
/// again) and still gets exactly the tokens `generate` gives it from scratch.
#[test]
fn the_next_turn_of_a_chat_reuses_the_first() {
    let pipeline = pipeline();
    let picture = load_image(repo().join("tests/processor/images/huge_2000x1500.png")).unwrap();
    let options = ImageOptions {
        do_image_splitting: Some(true),
        longest_edge: Some(980),
        shortest_edge: None,
    };
    let user = |text: &str, image: bool| {
        let mut content = Vec::new();
        if image {
            content.push(ContentPart::Image);
        }
        content.push(ContentPart::text(text));
        ChatMessage::new("user", content)
    };
    let prepare = |messages: Vec<ChatMessage>| {
        let request = Request {
            prompt: Prompt::Chat(messages),
            images: vec![picture.clone()],
        };
        pipeline.prepare(&[request], &options).unwrap()
    };
    let first = prepare(vec![user("What color is the shape?", true)]);
    let alone = |input: &ModelInput| {
        let options = pipeline.generation_options(8);
        pipeline
            .model
            .generate(input, &options, |_| ControlFlow::Continue(()))
            .unwrap()
            .tokens[0]
            .clone()
    };
    let first_ids = alone(&first);
    let answer = pipeline.decode(&first_ids).unwrap();
    let second = prepare(vec![
        user("What color is the shape?", true),
        ChatMessage::new("assistant", vec![ContentPart::text(answer.trim())]),
        user("How many shapes are there?", false),
    ]);
    let second_ids = alone(&second);
    let first_len = first.seq;

    let engine = Engine::start(pipeline, EngineConfig::for_positions(4096)).unwrap();
    let run = |input: &ModelInput| {
        engine
            .submit(EngineRequest::from_input(input.clone(), greedy(8)))
            .unwrap()
            .wait()
            .unwrap()
    };
    let (tokens, turn1) = run(&first);
    assert_eq!(ids(&tokens), first_ids);
    assert_eq!(engine.stats().reused_tokens, 0);
    let (tokens, turn2) = run(&second);
    assert_eq!(ids(&tokens), second_ids);
    let reused = engine.stats().reused_tokens;
    assert!(
        reused >= first_len && reused < second.seq,
        "reused {reused} of {} positions (the first prompt has {first_len})",
        second.seq
    );
    println!(
        "prefix reuse: turn 1 ({} prompt tokens, 5 crops of a 980 px image) first token in {:.3} s; \
         turn 2 ({} prompt tokens, {reused} reused) in {:.3} s",
        first.seq, turn1.prefill_seconds, second.seq, turn2.prefill_seconds
    );
}

/// A KV budget that holds one request but not two: the second waits for the first instead of
/// joining its batch, and both answer as they do alone.
#[test]
fn the_kv_budget_decides_admission() {
    let pipeline = pipeline();
    let input = ask(&pipeline, &["shapes.png"], "What color is the shape?");
    let other = ask(&pipeline, &["wide.png"], "What color is the shape?");
    let need = input.seq.max(other.seq) + 6;
    let config = EngineConfig {
        max_batch_total_tokens: Some(2 * need - 1),
        ..EngineConfig::for_positions(4096)
    };
    let engine = Engine::start(pipeline, config).unwrap();
    let first = engine
        .submit(EngineRequest::from_input(input, greedy(6)))
        .unwrap();
    let second = engine
        .submit(EngineRequest::from_input(other, greedy(6)))
        .unwrap();
    let (a, _) = first.wait().unwrap();
    let (b, _) = second.wait().unwrap();
    let stats = engine.stats();
    // Never decoded together: one step per token after each request's first.
    assert_eq!(stats.decode_steps, a.len() - 1 + b.len() - 1, "{stats:?}");
}
