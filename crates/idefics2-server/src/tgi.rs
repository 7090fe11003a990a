//! text-generation-inference's routes: `POST /` (what `text_generation.Client` sends), `/generate`,
//! `/generate_stream`, `/tokenize`, `GET /info`, `/health`, with TGI's request and response
//! shapes. Prompts carry images as markdown `![](...)`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_lite::StreamExt;
use idefics2::engine::{Finished, GenerateParams, GeneratedToken, StopReason};
use idefics2::pipeline::Prompt;
use idefics2::{Sampling, SamplingOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::errors::{ApiError, TgiError, parse_json};
use crate::images::split_markdown_images;
use crate::state::AppState;
use crate::stream::{Item, tokens};

/// `parameters` as `text_generation` 0.7.0 sends them (every field, `null`s included).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Parameters {
    pub best_of: Option<usize>,
    pub decoder_input_details: Option<bool>,
    pub details: Option<bool>,
    pub do_sample: Option<bool>,
    pub frequency_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub return_full_text: Option<bool>,
    pub seed: Option<u64>,
    pub stop: Option<Vec<String>>,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_n_tokens: Option<usize>,
    pub top_p: Option<f32>,
    pub truncate: Option<usize>,
    pub typical_p: Option<f32>,
    pub watermark: Option<bool>,
    pub grammar: Option<Value>,
    pub adapter_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub inputs: String,
    #[serde(default)]
    pub parameters: Parameters,
    #[serde(default)]
    pub stream: bool,
}

/// TGI's default `max_new_tokens`.
const DEFAULT_MAX_NEW_TOKENS: usize = 100;

impl Parameters {
    /// The engine's settings, or a 422 naming the field (TGI's rules: a warper such as
    /// `temperature` turns sampling on; `top_p` in (0, 1)).
    pub fn to_params(&self) -> Result<GenerateParams, ApiError> {
        let unsupported = |field: &str| {
            Err(
                ApiError::validation(format!("`{field}` is not supported by this server"))
                    .with_param(field),
            )
        };
        if self.best_of.is_some_and(|n| n > 1) {
            return unsupported("best_of");
        }
        if self.decoder_input_details == Some(true) {
            return unsupported("decoder_input_details");
        }
        if self.frequency_penalty.is_some_and(|p| p != 0.0) {
            return unsupported("frequency_penalty");
        }
        if self.typical_p.is_some_and(|p| p != 1.0) {
            return unsupported("typical_p");
        }
        if self.watermark == Some(true) {
            return unsupported("watermark");
        }
        if self.grammar.as_ref().is_some_and(|g| !g.is_null()) {
            return unsupported("grammar");
        }
        if self.adapter_id.is_some() {
            return unsupported("adapter_id");
        }
        if self.truncate.is_some() {
            return unsupported("truncate");
        }
        if self.max_new_tokens == Some(0) {
            return Err(
                ApiError::validation("`max_new_tokens` must be strictly positive")
                    .with_param("max_new_tokens"),
            );
        }
        if let Some(t) = self.temperature
            && !(t > 0.0 && t.is_finite())
        {
            return Err(ApiError::validation(format!(
                "`temperature` must be strictly positive, got {t}"
            ))
            .with_param("temperature"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p < 1.0)
        {
            return Err(
                ApiError::validation(format!("`top_p` must be > 0.0 and < 1.0, got {p}"))
                    .with_param("top_p"),
            );
        }
        if let Some(k) = self.top_k
            && k <= 0
        {
            return Err(ApiError::validation(format!(
                "`top_k` must be strictly positive, got {k}"
            ))
            .with_param("top_k"));
        }
        if let Some(p) = self.repetition_penalty
            && !(p > 0.0 && p.is_finite())
        {
            return Err(ApiError::validation(format!(
                "`repetition_penalty` must be strictly positive, got {p}"
            ))
            .with_param("repetition_penalty"));
        }
        let warped = self.temperature.is_some_and(|t| t != 1.0)
            || self.top_k.is_some()
            || self.top_p.is_some();
        let sampling = if self.do_sample == Some(true) || warped {
            Sampling::Sample {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.map_or(0, |k| k as usize),
                top_p: self.top_p.unwrap_or(1.0),
                seed: self.seed.unwrap_or_else(random_seed),
            }
        } else {
            Sampling::Greedy
        };
        Ok(GenerateParams {
            max_new_tokens: self.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS),
            sampling: SamplingOptions {
                sampling,
                repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            },
            stop: self.stop.clone().unwrap_or_default(),
            top_logprobs: self.top_n_tokens.unwrap_or(0),
        })
    }
}

/// A seed for a request that samples without one.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

#[derive(Debug, Serialize)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub special: bool,
}

impl Token {
    fn new(token: &GeneratedToken) -> Self {
        Self {
            id: token.id,
            // Special tokens show as themselves (`</s>`), as TGI shows them.
            text: if token.special {
                token.piece.clone()
            } else {
                token.text.clone()
            },
            logprob: token.logprob,
            special: token.special,
        }
    }

    fn top(token: &GeneratedToken, engine: &idefics2::engine::Engine) -> Vec<Self> {
        let tokenizer = engine.processor().prompt.tokenizer();
        token
            .top
            .iter()
            .map(|&(id, logprob)| Self {
                id,
                text: tokenizer.decode(&[id], false).unwrap_or_default(),
                logprob,
                special: engine.is_special(id),
            })
            .collect()
    }
}

pub fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Length | StopReason::Cancelled => "length",
        StopReason::EosToken => "eos_token",
        StopReason::StopSequence => "stop_sequence",
    }
}

struct Prepared {
    handle: idefics2::engine::RequestHandle,
    input_tokens: usize,
    details: bool,
    full_text_prefix: Option<String>,
    top_n: bool,
}

async fn start(state: &Arc<AppState>, request: &GenerateRequest) -> Result<Prepared, ApiError> {
    let params = request.parameters.to_params()?;
    if request.inputs.trim().is_empty() {
        return Err(ApiError::validation("`inputs` cannot be empty").with_param("inputs"));
    }
    let (text, sources) = split_markdown_images(&request.inputs);
    let top_n = params.top_logprobs > 0;
    let (handle, input_tokens) =
        crate::prepare::submit(state, Prompt::Raw(text), &sources, params).await?;
    Ok(Prepared {
        handle,
        input_tokens,
        details: request.parameters.details.unwrap_or(false),
        full_text_prefix: (request.parameters.return_full_text == Some(true))
            .then(|| request.inputs.clone()),
        top_n,
    })
}

/// The body of a finished `/generate`.
async fn generate_json(state: &Arc<AppState>, request: GenerateRequest) -> Result<Value, ApiError> {
    let prepared = start(state, &request).await?;
    let engine = state.engine()?.clone();
    let (generated, finished) = crate::prepare::collect(prepared.handle).await?;
    let text = format!(
        "{}{}",
        prepared.full_text_prefix.unwrap_or_default(),
        finished.text
    );
    if !prepared.details {
        return Ok(json!({"generated_text": text}));
    }
    let mut details = json!({
        "finish_reason": finish_reason(finished.reason),
        "generated_tokens": finished.generated_tokens,
        "seed": finished.seed,
        "prefill": [],
        "tokens": generated.iter().map(Token::new).collect::<Vec<_>>(),
        "best_of_sequences": null,
    });
    if prepared.top_n {
        details["top_tokens"] = json!(
            generated
                .iter()
                .map(|t| Token::top(t, &engine))
                .collect::<Vec<_>>()
        );
    }
    Ok(json!({"generated_text": text, "details": details}))
}

/// `POST /generate`: one JSON object.
pub async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, TgiError> {
    let request: GenerateRequest = parse_json(body)?;
    Ok(Json(generate_json(&state, request).await?))
}

/// `POST /`: `stream: false` answers a JSON array of one response, `stream: true` SSE.
pub async fn compat_generate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TgiError> {
    let request: GenerateRequest = parse_json(body)?;
    if request.stream {
        return Ok(stream_response(state, request).await?.into_response());
    }
    Ok(Json(json!([generate_json(&state, request).await?])).into_response())
}

/// `POST /generate_stream`.
pub async fn generate_stream(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, TgiError> {
    let request: GenerateRequest = parse_json(body)?;
    Ok(stream_response(state, request).await?.into_response())
}

/// One `data:{...}` event per token; the last carries `generated_text` and `details`. A failure
/// after the stream started is an event `{"error", "error_type"}`.
async fn stream_response(
    state: Arc<AppState>,
    request: GenerateRequest,
) -> Result<Sse<impl futures_lite::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let prepared = start(&state, &request).await?;
    let engine = state.engine()?.clone();
    let (prefix, top_n, input_tokens) = (
        prepared.full_text_prefix.unwrap_or_default(),
        prepared.top_n,
        prepared.input_tokens,
    );
    let events = tokens(prepared.handle).map(move |item| {
        let payload = match item {
            Item::Token {
                index,
                token,
                finished,
            } => {
                let (generated_text, details) = match &finished {
                    Some(finished) => (
                        json!(format!("{prefix}{}", finished.text)),
                        stream_details(finished, input_tokens),
                    ),
                    None => (Value::Null, Value::Null),
                };
                json!({
                    "index": index,
                    "token": Token::new(&token),
                    "top_tokens": if top_n { json!(Token::top(&token, &engine)) } else { Value::Null },
                    "generated_text": generated_text,
                    "details": details,
                })
            }
            Item::Failed(message) => ApiError::generation(message).tgi_json(),
        };
        Ok(Event::default().data(payload.to_string()))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn stream_details(finished: &Finished, input_tokens: usize) -> Value {
    json!({
        "finish_reason": finish_reason(finished.reason),
        "generated_tokens": finished.generated_tokens,
        "seed": finished.seed,
        "input_length": input_tokens,
    })
}

#[derive(Deserialize)]
pub struct TokenizeRequest {
    pub inputs: String,
}

/// `POST /tokenize`: the tokens of `inputs` as the model's tokenizer splits them (BOS first),
/// with byte offsets into `inputs`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, TgiError> {
    let request: TokenizeRequest = parse_json(body)?;
    let engine = state.engine()?;
    let tokenizer = engine.processor().prompt.tokenizer();
    let encoding = tokenizer
        .encode(request.inputs.as_str(), true)
        .map_err(|e| ApiError::validation(format!("tokenizing `inputs`: {e}")))?;
    let tokens: Vec<Value> = encoding
        .get_ids()
        .iter()
        .zip(encoding.get_offsets())
        .map(|(&id, &(start, stop))| {
            json!({
                "id": id,
                "text": request.inputs.get(start..stop).unwrap_or_default(),
                "start": start,
                "stop": stop,
            })
        })
        .collect();
    Ok(Json(Value::Array(tokens)))
}

/// `GET /info`.
pub async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let engine = state.engine().ok();
    let config = engine.map(|e| e.config().clone());
    Json(json!({
        "model_id": state.model_id,
        "model_sha": null,
        "model_dtype": state.dtype,
        "model_device_type": state.device,
        "model_pipeline_tag": "image-text-to-text",
        "max_concurrent_requests": config.as_ref().map(|c| c.max_concurrent_requests),
        "max_best_of": 1,
        "max_stop_sequences": config.as_ref().map(|c| c.max_stop_sequences),
        "max_input_tokens": config.as_ref().map(|c| c.max_input_tokens),
        "max_total_tokens": config.as_ref().map(|c| c.max_total_tokens),
        "max_batch_size": config.as_ref().map(|c| c.max_batch_size),
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": "idefics2-rs",
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
        "ready": engine.is_some(),
    }))
}

/// `GET /health`: 200 once the model can answer, 503 before.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.engine() {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => (e.status, Json(e.tgi_json())).into_response(),
    }
}
