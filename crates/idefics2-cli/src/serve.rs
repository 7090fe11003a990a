//! `idefics2 serve`: the HTTP server (TGI's and OpenAI's routes) on the batching engine.

use anyhow::{Context, Result};
use clap::Args;
use idefics2::engine::EngineConfig;
use idefics2::pipeline::Pipeline;
use idefics2_server::{ServeOptions, ServerLimits};

use crate::options::{ImageArgs, ModelArgs, QuantArgs, RuntimeArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed on the first line of stdout).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub quant: QuantArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Requests queued or running at most (429 beyond).
    #[arg(long, default_value_t = 128)]
    pub max_concurrent_requests: usize,
    /// Requests decoded together at most.
    #[arg(long, default_value_t = 16)]
    pub max_batch_size: usize,
    /// Prompt tokens of one request at most (images count as their image tokens).
    #[arg(long)]
    pub max_input_tokens: Option<usize>,
    /// Prompt plus new tokens of one request at most (default: the model's positions, at most 4096).
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    /// KV cache positions of the whole batch (default: max-total-tokens x max-batch-size).
    #[arg(long)]
    pub max_batch_total_tokens: Option<usize>,
    /// KV positions kept from finished requests, so that the next turn of a chat starts from
    /// them instead of encoding its images again (default: 2 x max-total-tokens; 0: off).
    #[arg(long)]
    pub prefix_cache_tokens: Option<usize>,
    /// Stop sequences per request at most.
    #[arg(long, default_value_t = 4)]
    pub max_stop_sequences: usize,
    /// Bytes of a request body at most (413 beyond).
    #[arg(long, default_value_t = 16 << 20)]
    pub payload_limit: usize,
    /// Pixels of one image at most, as its header declares them.
    #[arg(long, default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Bytes of one image at most (fetched, or decoded from a data URI).
    #[arg(long, default_value_t = 10 << 20)]
    pub max_image_bytes: usize,
    /// Seconds to fetch one image URL at most.
    #[arg(long, default_value_t = 10.0)]
    pub image_fetch_timeout: f64,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "IDEFICS2_API_KEY")]
    pub api_key: Option<String>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let dir = args.model.resolve()?;
    let config = idefics2::Idefics2Config::from_file(&dir.join("config.json"))
        .with_context(|| format!("reading {}", dir.display()))?;
    let positions = config.text_config.max_position_embeddings;
    let defaults = EngineConfig::for_positions(positions);
    let max_total_tokens = args.max_total_tokens.unwrap_or(defaults.max_total_tokens);
    anyhow::ensure!(
        max_total_tokens >= 2 && max_total_tokens <= positions,
        "--max-total-tokens {max_total_tokens} must be in 2..={positions} (the model's positions)"
    );
    let max_input_tokens = args.max_input_tokens.unwrap_or(max_total_tokens - 1);
    anyhow::ensure!(
        max_input_tokens >= 1 && max_input_tokens < max_total_tokens,
        "--max-input-tokens {max_input_tokens} must be at least 1 and below --max-total-tokens {max_total_tokens}"
    );
    anyhow::ensure!(
        args.max_batch_size >= 1,
        "--max-batch-size must be at least 1"
    );
    anyhow::ensure!(
        args.max_concurrent_requests >= 1,
        "--max-concurrent-requests must be at least 1"
    );
    let image_options = args.image.options();
    image_options.validate()?;
    let engine = EngineConfig {
        max_batch_size: args.max_batch_size,
        max_input_tokens,
        max_total_tokens,
        max_concurrent_requests: args.max_concurrent_requests,
        max_batch_total_tokens: args.max_batch_total_tokens,
        max_stop_sequences: args.max_stop_sequences,
        prefix_cache_tokens: args.prefix_cache_tokens.unwrap_or(2 * max_total_tokens),
    };
    let options = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        model_id: args
            .model
            .model
            .clone()
            .unwrap_or_else(|| idefics2::default_model::NAME.to_owned()),
        device: args.runtime.label().to_owned(),
        dtype: format!("{:?}", args.runtime.dtype).to_lowercase(),
        engine,
        image_options,
        limits: ServerLimits {
            payload_bytes: args.payload_limit,
            image_pixels: args.max_image_pixels,
            image_bytes: args.max_image_bytes,
            fetch_timeout: std::time::Duration::try_from_secs_f64(args.image_fetch_timeout)
                .ok()
                .filter(|t| !t.is_zero())
                .context("--image-fetch-timeout must be a positive number of seconds")?,
            ..ServerLimits::default()
        },
        api_key: args.api_key.clone(),
    };
    let (runtime, quant) = (args.runtime.clone(), args.quant.clone());
    let load = move || -> Result<Pipeline> {
        let (device, dtype) = runtime.device()?;
        let pipeline = Pipeline::load_quantized(&dir, &device, dtype, quant.policy()?)
            .with_context(|| format!("loading {}", dir.display()))?;
        eprintln!("model {} on {}", dir.display(), runtime.summary());
        Ok(pipeline)
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(idefics2_server::serve(options, load))
}
