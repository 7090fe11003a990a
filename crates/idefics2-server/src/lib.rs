//! `idefics2 serve`: the HTTP front end of the batching [`Engine`], speaking the routes of
//! text-generation-inference (what its `text_generation` client and the Idefics2 model card use)
//! and of OpenAI's chat and completions APIs.
//!
//! - [`errors`]: one error type, written as TGI's or OpenAI's JSON by route.
//! - [`images`]: markdown images and `image_url` parts to decoded images, with size limits.
//! - [`prepare`]: prompt and images to an engine request (the processor, off the async threads).
//! - [`tgi`], [`openai`]: the routes and their JSON shapes.
//! - [`metrics`]: Prometheus counters and gauges.

pub mod errors;
pub mod images;
pub mod metrics;
pub mod openai;
pub mod prepare;
pub mod state;
pub mod stop;
pub mod stream;
pub mod tgi;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use idefics2::engine::{Engine, EngineConfig};
use idefics2::pipeline::Pipeline;
use idefics2::processor::ImageOptions;

pub use state::{AppState, ServerLimits};

/// Everything `idefics2 serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// The name `/info` and `/v1/models` report and OpenAI requests may ask for.
    pub model_id: String,
    /// What `/info` says the model runs on (`cpu`, or the GPU adapter).
    pub device: String,
    pub dtype: String,
    pub engine: EngineConfig,
    pub image_options: ImageOptions,
    pub limits: ServerLimits,
    pub api_key: Option<String>,
}

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let payload_limit = state.limits.payload_bytes;
    Router::new()
        .route("/", post(tgi::compat_generate))
        .route("/generate", post(tgi::generate))
        .route("/generate_stream", post(tgi::generate_stream))
        .route("/tokenize", post(tgi::tokenize))
        .route("/info", get(tgi::info))
        .route("/health", get(tgi::health))
        .route("/metrics", get(metrics::render))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .fallback(errors::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            state::check_api_key,
        ))
        .layer(DefaultBodyLimit::max(payload_limit))
        .with_state(state)
}

/// Binds, loads the model (the routes answer 503 until it is ready, `/health` included), serves
/// until SIGTERM or Ctrl-C, then stops taking requests and lets those in flight finish.
pub async fn serve(
    options: ServeOptions,
    load: impl FnOnce() -> anyhow::Result<Pipeline> + Send + 'static,
) -> anyhow::Result<()> {
    let recorder = metrics::install()?;
    let address: SocketAddr = format!("{}:{}", options.host, options.port)
        .parse()
        .with_context(|| format!("--host {} --port {}", options.host, options.port))?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address}"))?;
    let state = Arc::new(AppState::new(&options, recorder)?);
    let bound = listener.local_addr()?;
    // Test harnesses read this line to find the port (`--port 0` picks a free one).
    println!("listening on http://{bound}");
    let loading = {
        let (state, engine_config) = (state.clone(), options.engine.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let pipeline = load()?;
            let engine = Engine::start(pipeline, engine_config)?;
            state.set_engine(engine);
            tracing::info!("model loaded; serving");
            Ok(())
        })
    };
    let shutdown = {
        let state = state.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing the requests in flight");
            state.close();
        }
    };
    let app = router(state.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let load_failed = async {
        match loading.await {
            Ok(Ok(())) => std::future::pending::<anyhow::Error>().await,
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("the loader stopped: {e}"),
        }
    };
    tokio::select! {
        served = server => served.context("serving")?,
        error = load_failed => return Err(error.context("loading the model")),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
