//! `idefics2`: generate from prompts, chats or batches with images; chat in the terminal; check
//! a checkpoint. All model logic lives in the `idefics2` library.

mod chat;
mod generate;
mod hub;
mod options;

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("IDEFICS2_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Check(args) => check(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: options::ModelArgs) -> anyhow::Result<()> {
    let dir = args.resolve()?;
    let (tensors, bytes) = idefics2::Idefics2::check(&dir)?;
    println!(
        "{}: {tensors} tensors, {:.2} GB stored, all names and shapes match the config",
        dir.display(),
        bytes as f64 / 1e9
    );
    Ok(())
}
