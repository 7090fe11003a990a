//! `idefics2 generate`: one raw prompt, one chat, or a JSONL batch run as one left-padded batch.
//! Text streams to stdout; `--json` ends stdout with one JSON object per request.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use idefics2::pipeline::{Pipeline, Prompt, Request};
use idefics2::processor::{ChatMessage, ContentPart, IncrementalDecoder, load_image};
use idefics2::{FinishReason, GenerationOutput};
use serde::{Deserialize, Serialize};

use crate::options::{ImageArgs, ModelArgs, QuantArgs, RuntimeArgs, SamplingArgs};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["ask", "prompt", "chat", "batch"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A question about the --image files: one user turn (the images, then this text) through the
    /// model's chat template.
    #[arg(long)]
    pub ask: Option<String>,
    /// Raw prompt with `<image>` placeholders (base-model style).
    #[arg(long)]
    pub prompt: Option<String>,
    /// JSON file with an array of Hugging Face chat messages; the generation prompt is added.
    #[arg(long)]
    pub chat: Option<PathBuf>,
    /// JSON lines: {"prompt": ..., "images": [...]} or {"messages": [...], "images": [...]}.
    #[arg(long)]
    pub batch: Option<PathBuf>,
    /// Images for --ask, --prompt or --chat, in placeholder order.
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub quant: QuantArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// End stdout with one JSON object per request.
    #[arg(long)]
    pub json: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    images: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Timings {
    load: f64,
    preprocess: f64,
    prefill: f64,
    decode: f64,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    input_ids: Vec<u32>,
    generated_ids: &'a [u32],
    logprobs: &'a [f32],
    text: String,
    finish_reason: &'static str,
    prompt_tokens: usize,
    tokens_per_second: f64,
    device: &'static str,
    timings: &'a Timings,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let requests = read_requests(&args)?;
    let dir = args.model.resolve()?;
    let (device, dtype) = args.runtime.device()?;
    let start = Instant::now();
    let pipeline = Pipeline::load_quantized(&dir, &device, dtype, args.quant.policy()?)
        .with_context(|| format!("loading {}", dir.display()))?;
    let load = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let input = pipeline.prepare(&requests, &args.image.options())?;
    let preprocess = start.elapsed().as_secs_f64();

    let mut options = pipeline.generation_options(args.sampling.max_new_tokens);
    options.sampling = args.sampling.options();
    let stream = !args.json && requests.len() == 1;
    let mut decoder = IncrementalDecoder::new(true);
    let mut stream_error = None;
    let mut stdout = std::io::stdout().lock();
    let output = pipeline.model.generate(&input, &options, |event| {
        if !stream {
            return ControlFlow::Continue(());
        }
        match decoder.step(&pipeline.processor.prompt, event.token) {
            Ok(Some(text)) => {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
                ControlFlow::Continue(())
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(e) => {
                stream_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = stream_error {
        return Err(e).context("decoding the streamed tokens");
    }
    if stream {
        if let Some(rest) = decoder.finish(&pipeline.processor.prompt)? {
            write!(stdout, "{rest}")?;
        }
        writeln!(stdout)?;
    }
    let timings = Timings {
        load,
        preprocess,
        prefill: output.prefill_seconds,
        decode: output.decode_seconds,
    };
    for row in 0..input.batch {
        let text = pipeline.decode(&output.tokens[row])?;
        if args.json {
            let row_ids = &input.input_ids[row * input.seq..(row + 1) * input.seq];
            let row_mask = &input.attention_mask[row * input.seq..(row + 1) * input.seq];
            let json = JsonOutput {
                input_ids: row_ids
                    .iter()
                    .zip(row_mask)
                    .filter(|(_, m)| **m != 0)
                    .map(|(id, _)| *id)
                    .collect(),
                generated_ids: &output.tokens[row],
                logprobs: &output.logprobs[row],
                text,
                finish_reason: finish_reason(output.finish[row]),
                prompt_tokens: output.prompt_tokens[row],
                tokens_per_second: tokens_per_second(&output),
                device: args.runtime.label(),
                timings: &timings,
            };
            writeln!(stdout, "{}", serde_json::to_string(&json)?)?;
        } else if !stream {
            writeln!(stdout, "{}", text.replace('\n', " "))?;
        }
    }
    let generated: usize = output.tokens.iter().map(Vec::len).sum();
    eprintln!(
        "[{generated} tokens, {:.1} tok/s, first token after {:.2} s, {} prompt tokens, {}, load {:.2} s]",
        tokens_per_second(&output),
        output.prefill_seconds,
        output.prompt_tokens.iter().sum::<usize>(),
        args.runtime.summary(),
        load
    );
    Ok(())
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos => "eos",
        FinishReason::MaxNewTokens => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

/// Decode speed over all rows, after the first token.
fn tokens_per_second(output: &GenerationOutput) -> f64 {
    let after_first: usize = output
        .tokens
        .iter()
        .map(|t| t.len().saturating_sub(1))
        .sum();
    if output.decode_seconds > 0.0 {
        after_first as f64 / output.decode_seconds
    } else {
        0.0
    }
}

fn read_requests(args: &GenerateArgs) -> Result<Vec<Request>> {
    let load_images = |paths: &[PathBuf]| -> Result<Vec<_>> {
        paths
            .iter()
            .map(|p| load_image(p).map_err(anyhow::Error::from))
            .collect()
    };
    if let Some(question) = &args.ask {
        let images = load_images(&args.images)?;
        let mut content = vec![ContentPart::Image; images.len()];
        content.push(ContentPart::text(question));
        return Ok(vec![Request {
            prompt: Prompt::Chat(vec![ChatMessage::new("user", content)]),
            images,
        }]);
    }
    if let Some(prompt) = &args.prompt {
        return Ok(vec![Request {
            prompt: Prompt::Raw(prompt.clone()),
            images: load_images(&args.images)?,
        }]);
    }
    if let Some(path) = &args.chat {
        let messages: Vec<ChatMessage> = serde_json::from_str(&read(path)?)
            .with_context(|| format!("{}: not a JSON array of chat messages", path.display()))?;
        return Ok(vec![Request {
            prompt: Prompt::Chat(messages),
            images: load_images(&args.images)?,
        }]);
    }
    let path = args
        .batch
        .as_ref()
        .context("one of --ask, --prompt, --chat or --batch is required")?;
    if !args.images.is_empty() {
        bail!("--image cannot be used with --batch: give each request's images in its JSON line");
    }
    let mut requests = Vec::new();
    for (number, line) in read(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), number + 1);
        let parsed: BatchLine = serde_json::from_str(line).with_context(at)?;
        let prompt = match (parsed.prompt, parsed.messages) {
            (Some(text), None) => Prompt::Raw(text),
            (None, Some(messages)) => Prompt::Chat(messages),
            _ => bail!("{}: give exactly one of \"prompt\" or \"messages\"", at()),
        };
        requests.push(Request {
            prompt,
            images: load_images(&parsed.images).with_context(at)?,
        });
    }
    if requests.is_empty() {
        bail!("{} holds no requests", path.display());
    }
    Ok(requests)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
