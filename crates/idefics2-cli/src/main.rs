//! `idefics2`: generate from prompts, chats or batches with images; chat in the terminal; check
//! a checkpoint. All model logic lives in the `idefics2` library.

mod bench;
mod chat;
mod generate;
mod hub;
mod options;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "idefics2",
    version,
    about = "Idefics2 vision-language model on CPU or any GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for a prompt, a chat or a batch of requests.
    Generate(generate::GenerateArgs),
    /// Interactive chat in the terminal (/image PATH, /reset, /splitting on|off, /quit).
    Chat(chat::ChatArgs),
    /// Check a model directory's config and tensors without loading weights.
    Check(options::ModelArgs),
    /// Measure load, time to first token, prefill and decode speed.
    Bench(bench::BenchArgs),
    /// Write a copy of a model with its linear layers quantized (loads much faster than
    /// quantizing at every start).
    Quantize(QuantizeArgs),
    /// Serve the model over HTTP: TGI's routes (`POST /`, /generate, /generate_stream) and
    /// OpenAI's (/v1/chat/completions, /v1/completions), batching concurrent requests.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    idefics2::quiet_headless_wayland();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("IDEFICS2_LOG"))
        .with_writer(std::io::stderr)
        .init();
    idefics2::exit_on_panic();
    let result = match Cli::parse().command {
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Check(args) => check(args),
        Command::Bench(args) => bench::run(args),
        Command::Quantize(args) => quantize(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
struct QuantizeArgs {
    #[command(flatten)]
    model: options::ModelArgs,
    #[command(flatten)]
    quant: options::QuantArgs,
    /// Directory to write (must not hold a model yet).
    #[arg(long)]
    out: std::path::PathBuf,
}

fn quantize(args: QuantizeArgs) -> anyhow::Result<()> {
    let dir = args.model.resolve()?;
    let policy = args.quant.policy()?;
    let start = std::time::Instant::now();
    let summary = idefics2::quant_save::quantize_checkpoint(&dir, &args.out, policy)?;
    println!(
        "{}: {} linear layers as {}, {:.3} GB -> {:.3} GB in {:.1} s",
        args.out.display(),
        summary.quantized_layers,
        policy.label(),
        summary.input_bytes as f64 / 1e9,
        summary.output_bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check(args: options::ModelArgs) -> anyhow::Result<()> {
    let dir = args.resolve()?;
    let report = idefics2::Idefics2::check(&dir)?;
    println!(
        "{}: {} tensors, {:.2} GB stored, all names and shapes match the config; quantization: {}",
        dir.display(),
        report.tensors,
        report.stored_bytes as f64 / 1e9,
        report.quantization
    );
    Ok(())
}
