//! Prometheus metrics under TGI's names (`tgi_request_count`, `tgi_queue_size`, ...), so its
//! dashboards read them unchanged.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use idefics2::engine::Finished;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

/// Installs the process-wide recorder (or finds the one installed).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

pub fn request() {
    metrics::counter!("tgi_request_count").increment(1);
}

/// A request that ended in an error of `kind` (`validation`, `overloaded`, ...).
pub fn failure(kind: &'static str) {
    metrics::counter!("tgi_request_failure", "err" => kind).increment(1);
}

pub fn success(finished: &Finished) {
    metrics::counter!("tgi_request_success").increment(1);
    metrics::histogram!("tgi_request_input_length").record(finished.prompt_tokens as f64);
    metrics::histogram!("tgi_request_generated_tokens").record(finished.generated_tokens as f64);
    metrics::counter!("tgi_generated_tokens_total").increment(finished.generated_tokens as u64);
    let total = finished.queue_seconds + finished.prefill_seconds + finished.decode_seconds;
    metrics::histogram!("tgi_request_duration").record(total);
    metrics::histogram!("tgi_request_queue_duration").record(finished.queue_seconds);
    metrics::histogram!("tgi_request_inference_duration")
        .record(finished.prefill_seconds + finished.decode_seconds);
    if finished.generated_tokens > 1 {
        metrics::histogram!("tgi_request_mean_time_per_token_duration")
            .record(finished.decode_seconds / (finished.generated_tokens - 1) as f64);
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn render(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(engine) = state.engine() {
        let stats = engine.stats();
        metrics::gauge!("tgi_queue_size").set(stats.queued as f64);
        metrics::gauge!("tgi_batch_current_size").set(stats.running as f64);
        metrics::gauge!("tgi_batch_current_max_tokens").set(stats.kv_tokens as f64);
        metrics::gauge!("idefics2_decode_steps").set(stats.decode_steps as f64);
        metrics::gauge!("idefics2_requests_cancelled").set(stats.cancelled as f64);
        metrics::gauge!("idefics2_generated_tokens").set(stats.generated_tokens as f64);
        metrics::gauge!("idefics2_prefix_reused_tokens").set(stats.reused_tokens as f64);
        metrics::gauge!("idefics2_prefix_cache_tokens").set(stats.prefix_tokens as f64);
    }
    state.metrics.run_upkeep();
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
