//! What every route shares: the engine (once the model is loaded), the limits, the HTTP client
//! that fetches image URLs, and the API key check.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use idefics2::engine::Engine;
use idefics2::processor::ImageOptions;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::ServeOptions;
use crate::errors::ApiError;

/// Limits on what a request may bring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Bytes of a request body (413 beyond).
    pub payload_bytes: usize,
    /// Bytes of one image, fetched or decoded from base64.
    pub image_bytes: usize,
    /// Pixels of one image as its header declares them, checked before decoding.
    pub image_pixels: u64,
    /// Images in one request.
    pub images_per_request: usize,
    /// Time to fetch one image URL.
    pub fetch_timeout: Duration,
    /// Redirects followed when fetching an image URL.
    pub fetch_redirects: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            payload_bytes: 16 << 20,
            image_bytes: 10 << 20,
            image_pixels: 40_000_000,
            images_per_request: 16,
            fetch_timeout: Duration::from_secs(10),
            fetch_redirects: 5,
        }
    }
}

pub struct AppState {
    engine: OnceLock<Engine>,
    pub model_id: String,
    pub device: String,
    pub dtype: String,
    pub image_options: ImageOptions,
    pub limits: ServerLimits,
    pub api_key: Option<String>,
    pub http: reqwest::Client,
    pub metrics: PrometheusHandle,
    /// Unix seconds the server started (OpenAI's `created` of the model).
    pub started: u64,
}

impl AppState {
    pub fn new(options: &ServeOptions, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(options.limits.fetch_timeout)
            .redirect(reqwest::redirect::Policy::limited(
                options.limits.fetch_redirects,
            ))
            .user_agent(concat!("idefics2-rs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            engine: OnceLock::new(),
            model_id: options.model_id.clone(),
            device: options.device.clone(),
            dtype: options.dtype.clone(),
            image_options: options.image_options,
            limits: options.limits.clone(),
            api_key: options.api_key.clone(),
            http,
            metrics,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or 503 while the model loads.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    /// Stops taking requests (SIGTERM); those taken still finish.
    pub fn close(&self) {
        if let Some(engine) = self.engine.get() {
            engine.close();
        }
    }
}

/// With `--api-key`, every route but `/health` wants `Authorization: Bearer KEY`.
pub async fn check_api_key(
    State(state): State<std::sync::Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.api_key
        && request.uri().path() != "/health"
    {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let message = if given.is_none() {
                "missing API key: send `Authorization: Bearer <key>`"
            } else {
                "wrong API key"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
                .for_uri(request.uri());
        }
    }
    next.run(request).await
}
