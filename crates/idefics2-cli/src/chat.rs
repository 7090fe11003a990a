//! `idefics2 chat`: a multi-turn conversation in the terminal through the model's chat template.
//! `/image PATH` attaches an image to the next message, `/reset` clears the history,
//! `/splitting on|off` toggles image splitting, `/quit` leaves.
//!
//! Turns go through the serving engine, so each turn continues from the previous turn's KV cache
//! (its images are not encoded again) when the rendered chat starts the same way.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use idefics2::engine::{Engine, EngineConfig, EngineEvent, EngineRequest, GenerateParams};
use idefics2::pipeline::{Pipeline, Prompt, Request, prepare};
use idefics2::processor::{ChatMessage, ContentPart, DynamicImage, load_image};

use crate::options::{ImageArgs, ModelArgs, OnOff, QuantArgs, RuntimeArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub quant: QuantArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(mut args: ChatArgs) -> Result<()> {
    let dir = args.model.resolve()?;
    let (device, dtype) = args.runtime.device()?;
    let pipeline = Pipeline::load_quantized(&dir, &device, dtype, args.quant.policy()?)
        .with_context(|| format!("loading {}", dir.display()))?;
    let positions = pipeline.model.config.text_config.max_position_embeddings;
    let engine = Engine::start(pipeline, EngineConfig::for_positions(positions))?;
    eprintln!(
        "{} on {}. /image PATH, /reset, /splitting on|off, /quit",
        dir.display(),
        args.runtime.summary()
    );
    let mut history: Vec<ChatMessage> = Vec::new();
    let mut history_images = Vec::new();
    let mut pending_images = Vec::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        write!(stdout, "> ")?;
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim();
        if let Some(path) = line.strip_prefix("/image ") {
            match load_image(path.trim()) {
                Ok(image) => {
                    pending_images.push(image);
                    eprintln!(
                        "[{} image(s) attached to the next message]",
                        pending_images.len()
                    );
                }
                Err(e) => eprintln!("error: {e}"),
            }
            continue;
        }
        match line {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history.clear();
                history_images.clear();
                pending_images.clear();
                eprintln!("[history cleared]");
                continue;
            }
            "/splitting on" | "/splitting off" => {
                let on = line.ends_with("on");
                args.image.image_splitting = Some(if on { OnOff::On } else { OnOff::Off });
                eprintln!("[image splitting {}]", if on { "on" } else { "off" });
                continue;
            }
            _ if line.starts_with('/') => {
                eprintln!("unknown command {line}: /image PATH, /reset, /splitting on|off, /quit");
                continue;
            }
            _ => {}
        }
        let mut content: Vec<ContentPart> =
            pending_images.iter().map(|_| ContentPart::Image).collect();
        content.push(ContentPart::text(line));
        let mut messages = history.clone();
        messages.push(ChatMessage::new("user", content));
        let mut images = history_images.clone();
        images.extend(pending_images.iter().cloned());
        match answer(&engine, &args, messages.clone(), images.clone()) {
            Ok(reply) => {
                history = messages;
                history.push(ChatMessage::new(
                    "assistant",
                    vec![ContentPart::text(reply)],
                ));
                history_images = images;
                pending_images.clear();
            }
            // The turn is not added: the user can fix the problem and send again.
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
}

/// Streams one answer to stdout and returns its text.
fn answer(
    engine: &Engine,
    args: &ChatArgs,
    messages: Vec<ChatMessage>,
    images: Vec<DynamicImage>,
) -> Result<String> {
    let request = Request {
        prompt: Prompt::Chat(messages),
        images,
    };
    let input = prepare(engine.processor(), vec![request], &args.image.options())?;
    let params = GenerateParams {
        max_new_tokens: args.sampling.max_new_tokens,
        sampling: args.sampling.options(),
        ..GenerateParams::default()
    };
    let reused_before = engine.stats().reused_tokens;
    let handle = engine.submit(EngineRequest::from_input(input, params))?;
    let mut stdout = std::io::stdout().lock();
    let finished = loop {
        match handle.events.recv_blocking() {
            Ok(EngineEvent::Token(token)) => {
                write!(stdout, "{}", token.text)?;
                stdout.flush()?;
            }
            Ok(EngineEvent::Finished(finished)) => break finished,
            Ok(EngineEvent::Failed(message)) => return Err(anyhow!(message)),
            Err(_) => return Err(anyhow!("the engine stopped")),
        }
    };
    writeln!(stdout)?;
    let reused = engine.stats().reused_tokens - reused_before;
    let reuse = if reused > 0 {
        format!(
            ", {reused} of {} prompt tokens reused",
            finished.prompt_tokens
        )
    } else {
        String::new()
    };
    eprintln!(
        "[{} tokens, first after {:.2} s{reuse}]",
        finished.generated_tokens, finished.prefill_seconds
    );
    Ok(finished.text.trim().to_string())
}
