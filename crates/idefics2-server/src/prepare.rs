//! From a request's prompt and image addresses to a running engine request: images fetched on
//! the async threads, decoding and the processor on the blocking pool (they take milliseconds
//! to seconds of CPU), then the engine's queue.

use std::sync::Arc;

use idefics2::engine::{
    EngineEvent, EngineRequest, Finished, GenerateParams, GeneratedToken, RequestHandle,
};
use idefics2::pipeline::{Prompt, Request, prepare};

use crate::errors::ApiError;
use crate::images;
use crate::state::AppState;

/// Fetches and decodes `sources`, renders and tokenizes `prompt`, and submits it.
/// `params.max_new_tokens` 0 asks for as many tokens as `max_total_tokens` leaves.
pub async fn submit(
    state: &Arc<AppState>,
    prompt: Prompt,
    sources: &[String],
    params: GenerateParams,
) -> Result<(RequestHandle, usize), ApiError> {
    let engine = state.engine()?.clone();
    if sources.len() > state.limits.images_per_request {
        return Err(ApiError::validation(format!(
            "{} images in the request, over the limit of {}",
            sources.len(),
            state.limits.images_per_request
        )));
    }
    let mut encoded = Vec::with_capacity(sources.len());
    for source in sources {
        encoded.push(images::fetch(state, source).await?);
    }
    let worker_state = state.clone();
    let prepared = tokio::task::spawn_blocking(move || -> Result<EngineRequest, ApiError> {
        let limits = &worker_state.limits;
        let decoded = encoded
            .iter()
            .enumerate()
            .map(|(index, bytes)| images::decode(bytes, limits, index))
            .collect::<Result<Vec<_>, _>>()?;
        let request = Request {
            prompt,
            images: decoded,
        };
        let input = prepare(
            engine.processor(),
            vec![request],
            &worker_state.image_options,
        )
        .map_err(|e| ApiError::validation(e.to_string()))?;
        let mut request = EngineRequest::from_input(input, params);
        if request.params.max_new_tokens == 0 {
            let limit = engine.config().max_total_tokens;
            request.params.max_new_tokens = limit.saturating_sub(request.input_ids.len()).max(1);
        }
        Ok(request)
    })
    .await
    .map_err(|e| ApiError::generation(format!("preparing the request: {e}")))??;
    let input_tokens = prepared.input_ids.len();
    let handle = state.engine()?.submit(prepared)?;
    crate::metrics::request();
    Ok((handle, input_tokens))
}

/// Waits for the whole answer.
pub async fn collect(handle: RequestHandle) -> Result<(Vec<GeneratedToken>, Finished), ApiError> {
    let mut tokens = Vec::new();
    while let Ok(event) = handle.events.recv().await {
        match event {
            EngineEvent::Token(token) => tokens.push(token),
            EngineEvent::Finished(finished) => {
                crate::metrics::success(&finished);
                return Ok((tokens, finished));
            }
            EngineEvent::Failed(message) => return Err(ApiError::generation(message)),
        }
    }
    Err(ApiError::generation(
        "the engine stopped before the request finished",
    ))
}
