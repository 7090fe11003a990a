//! OpenAI's `POST /v1/chat/completions` (content as a string or `text` / `image_url` parts,
//! rendered with the model's chat template as `idefics2 generate --chat` renders it),
//! `POST /v1/completions` (raw prompts; markdown images as on TGI's routes) and `GET /v1/models`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_lite::StreamExt;
use idefics2::engine::{Finished, GenerateParams, GeneratedToken, StopReason};
use idefics2::pipeline::Prompt;
use idefics2::processor::{ChatMessage, ContentPart};
use idefics2::{Sampling, SamplingOptions};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::errors::{ApiError, OpenAiError, parse_json};
use crate::images::split_markdown_images;
use crate::state::AppState;
use crate::stop::StopTrimmer;
use crate::stream::{Item, tokens};
use crate::tgi::random_seed;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling fields both routes share.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Sampler {
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub n: Option<usize>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<usize>,
    #[serde(flatten)]
    pub sampler: Sampler,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: OneOrMany,
    /// The legacy API's number of top log-probabilities per token.
    #[serde(default)]
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub sampler: Sampler,
}

impl Sampler {
    /// The engine's settings: `temperature` 0 is greedy (OpenAI's default is 1), `top_p` in
    /// (0, 1]; without `max_tokens` the answer may fill `max_total_tokens`.
    pub fn to_params(
        &self,
        default_max: usize,
        top_logprobs: usize,
    ) -> Result<GenerateParams, ApiError> {
        let bad =
            |field: &str, message: String| Err(ApiError::validation(message).with_param(field));
        if self.n.is_some_and(|n| n != 1) {
            return bad("n", "`n` must be 1 on this server".into());
        }
        for (field, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return bad(field, format!("`{field}` is not supported by this server"));
            }
        }
        let max_new_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_new_tokens == Some(0) {
            return bad("max_tokens", "`max_tokens` must be at least 1".into());
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return bad(
                "temperature",
                format!("`temperature` must be >= 0, got {temperature}"),
            );
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return bad("top_p", format!("`top_p` must be in (0, 1], got {top_p}"));
        }
        let sampling = if temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature,
                top_k: 0,
                top_p,
                seed: self.seed.unwrap_or_else(random_seed),
            }
        };
        Ok(GenerateParams {
            max_new_tokens: max_new_tokens.unwrap_or(default_max),
            sampling: SamplingOptions {
                sampling,
                repetition_penalty: 1.0,
            },
            stop: self
                .stop
                .clone()
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
            top_logprobs,
        })
    }

    fn streams(&self) -> bool {
        self.stream == Some(true)
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// The chat as the template takes it, and its image addresses in order.
pub fn chat_messages(messages: Vec<Message>) -> Result<(Vec<ChatMessage>, Vec<String>), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::validation("`messages` cannot be empty").with_param("messages"));
    }
    let mut sources = Vec::new();
    let chat = messages
        .into_iter()
        .map(|message| {
            let content = match message.content {
                None => Vec::new(),
                Some(Content::Text(text)) => vec![ContentPart::text(text)],
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .map(|part| match part {
                        Part::Text { text } => ContentPart::text(text),
                        Part::ImageUrl { image_url } => {
                            sources.push(image_url.url);
                            ContentPart::Image
                        }
                    })
                    .collect(),
            };
            ChatMessage::new(message.role, content)
        })
        .collect();
    Ok((chat, sources))
}

fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:08x}",
        random_seed(),
        random_seed() as u32
    )
}

fn openai_finish(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EosToken | StopReason::StopSequence => "stop",
        StopReason::Length | StopReason::Cancelled => "length",
    }
}

fn usage(finished: &Finished) -> Value {
    json!({
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.generated_tokens,
        "total_tokens": finished.prompt_tokens + finished.generated_tokens,
    })
}

/// Chat `logprobs.content[]` entries.
fn chat_logprobs(generated: &[GeneratedToken], state: &AppState) -> Result<Vec<Value>, ApiError> {
    let tokenizer = state.engine()?.processor().prompt.tokenizer();
    let entry = |text: String, logprob: f32| json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()});
    Ok(generated
        .iter()
        .map(|t| {
            let mut value = entry(t.piece.clone(), t.logprob);
            value["top_logprobs"] = Value::Array(
                t.top
                    .iter()
                    .map(|&(id, lp)| entry(tokenizer.id_to_token(id).unwrap_or_default(), lp))
                    .collect(),
            );
            value
        })
        .collect())
}

struct Started {
    handle: idefics2::engine::RequestHandle,
    stops: Vec<String>,
}

async fn start(
    state: &Arc<AppState>,
    prompt: Prompt,
    sources: &[String],
    params: GenerateParams,
) -> Result<Started, ApiError> {
    let stops = params.stop.clone();
    let (handle, _) = crate::prepare::submit(state, prompt, sources, params).await?;
    Ok(Started { handle, stops })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let request: ChatRequest = parse_json(body)?;
    let top = if request.logprobs == Some(true) {
        request.top_logprobs.unwrap_or(0)
    } else if request.top_logprobs.is_some_and(|n| n > 0) {
        return Err(
            ApiError::validation("`top_logprobs` needs `logprobs: true`")
                .with_param("top_logprobs")
                .into(),
        );
    } else {
        0
    };
    if top > 20 {
        return Err(ApiError::validation("`top_logprobs` must be at most 20")
            .with_param("top_logprobs")
            .into());
    }
    // 0: as many as `max_total_tokens` leaves after the prompt.
    let params = request.sampler.to_params(0, top)?;
    let (messages, sources) = chat_messages(request.messages)?;
    let want_logprobs = request.logprobs == Some(true);
    let model = request.model.unwrap_or_else(|| state.model_id.clone());
    let started = start(&state, Prompt::Chat(messages), &sources, params).await?;
    let (id, created) = (new_id("chatcmpl"), now());
    if request.sampler.streams() {
        let include_usage = request.sampler.include_usage();
        return Ok(chat_stream(
            state,
            started,
            id,
            created,
            model,
            want_logprobs,
            include_usage,
        )
        .into_response());
    }
    let (generated, finished) = crate::prepare::collect(started.handle).await?;
    let mut trimmer = StopTrimmer::new(started.stops);
    let mut content = trimmer.push(&finished.text);
    content.push_str(&trimmer.finish());
    let logprobs = if want_logprobs {
        json!({"content": chat_logprobs(&generated, &state)?})
    } else {
        Value::Null
    };
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint(),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": logprobs,
            "finish_reason": openai_finish(finished.reason),
        }],
        "usage": usage(&finished),
    }))
    .into_response())
}

fn chat_stream(
    state: Arc<AppState>,
    started: Started,
    id: String,
    created: u64,
    model: String,
    want_logprobs: bool,
    include_usage: bool,
) -> Sse<impl futures_lite::Stream<Item = Result<Event, Infallible>>> {
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |choices: Value, usage: Value| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": fingerprint(),
                "choices": choices,
                "usage": usage,
            })
        }
    };
    let first = chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        Value::Null,
    );
    let mut trimmer = StopTrimmer::new(started.stops);
    let events = tokens(started.handle).flat_map(move |item| {
        let mut out = Vec::new();
        match item {
            Item::Token { token, finished, .. } => {
                let mut text = trimmer.push(&token.text);
                if finished.is_some() {
                    text.push_str(&trimmer.finish());
                }
                let logprobs = if want_logprobs {
                    match chat_logprobs(std::slice::from_ref(&token), &state) {
                        Ok(content) => json!({"content": content}),
                        Err(_) => Value::Null,
                    }
                } else {
                    Value::Null
                };
                if !text.is_empty() || want_logprobs {
                    out.push(chunk(
                        json!([{"index": 0, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null}]),
                        Value::Null,
                    ));
                }
                if let Some(finished) = finished {
                    out.push(chunk(
                        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": openai_finish(finished.reason)}]),
                        Value::Null,
                    ));
                    stream_end(&mut out, &finished, include_usage, &chunk);
                }
            }
            Item::Failed(message) => out.extend(stream_failure(message)),
        }
        futures_lite::stream::iter(out)
    });
    sse(futures_lite::stream::once(first).chain(events))
}

/// `POST /v1/completions`: a raw prompt (images as markdown), the legacy completion objects.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let request: CompletionRequest = parse_json(body)?;
    let mut prompts = request.prompt.into_vec();
    if prompts.len() != 1 {
        return Err(
            ApiError::validation("`prompt` must be one string on this server")
                .with_param("prompt")
                .into(),
        );
    }
    let prompt = prompts.remove(0);
    if prompt.trim().is_empty() {
        return Err(ApiError::validation("`prompt` cannot be empty")
            .with_param("prompt")
            .into());
    }
    let top = request.logprobs.unwrap_or(0);
    if top > 5 {
        return Err(ApiError::validation("`logprobs` must be at most 5")
            .with_param("logprobs")
            .into());
    }
    // OpenAI's default for this route.
    let params = request.sampler.to_params(16, top)?;
    let (text, sources) = split_markdown_images(&prompt);
    let model = request.model.unwrap_or_else(|| state.model_id.clone());
    let echo = if request.echo == Some(true) {
        prompt.clone()
    } else {
        String::new()
    };
    let started = start(&state, Prompt::Raw(text), &sources, params).await?;
    let (id, created) = (new_id("cmpl"), now());
    let want_logprobs = request.logprobs.is_some();
    let engine = state.engine()?.clone();
    let legacy_logprobs = move |generated: &[GeneratedToken]| -> Value {
        if !want_logprobs {
            return Value::Null;
        }
        let tokenizer = engine.processor().prompt.tokenizer();
        json!({
            "tokens": generated.iter().map(|t| t.piece.clone()).collect::<Vec<_>>(),
            "token_logprobs": generated.iter().map(|t| t.logprob).collect::<Vec<_>>(),
            "top_logprobs": generated.iter().map(|t| {
                t.top.iter().map(|&(id, lp)| (tokenizer.id_to_token(id).unwrap_or_default(), json!(lp)))
                    .collect::<serde_json::Map<String, Value>>()
            }).collect::<Vec<_>>(),
        })
    };
    if request.sampler.streams() {
        let include_usage = request.sampler.include_usage();
        let mut trimmer = StopTrimmer::new(started.stops);
        let mut echo = Some(echo);
        let (id2, model2) = (id.clone(), model.clone());
        let chunk = move |choices: Value, usage: Value| {
            json!({"id": id2, "object": "text_completion", "created": created, "model": model2,
                   "system_fingerprint": fingerprint(), "choices": choices, "usage": usage})
        };
        let events = tokens(started.handle).flat_map(move |item| {
            let mut out = Vec::new();
            match item {
                Item::Token { token, finished, .. } => {
                    let mut text = echo.take().unwrap_or_default();
                    text.push_str(&trimmer.push(&token.text));
                    if finished.is_some() {
                        text.push_str(&trimmer.finish());
                    }
                    let reason = finished.as_ref().map(|f| openai_finish(f.reason));
                    out.push(chunk(
                        json!([{"index": 0, "text": text, "logprobs": legacy_logprobs(std::slice::from_ref(&token)), "finish_reason": reason}]),
                        Value::Null,
                    ));
                    if let Some(finished) = finished {
                        stream_end(&mut out, &finished, include_usage, &chunk);
                    }
                }
                Item::Failed(message) => out.extend(stream_failure(message)),
            }
            futures_lite::stream::iter(out)
        });
        return Ok(sse(events).into_response());
    }
    let (generated, finished) = crate::prepare::collect(started.handle).await?;
    let mut trimmer = StopTrimmer::new(started.stops);
    let mut text = echo;
    text.push_str(&trimmer.push(&finished.text));
    text.push_str(&trimmer.finish());
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint(),
        "choices": [{
            "index": 0,
            "text": text,
            "logprobs": legacy_logprobs(&generated),
            "finish_reason": openai_finish(finished.reason),
        }],
        "usage": usage(&finished),
    }))
    .into_response())
}

/// Values as SSE events: JSON objects as JSON, `Value::String` as raw data (`[DONE]`).
fn sse(
    values: impl futures_lite::Stream<Item = Value> + Send + 'static,
) -> Sse<impl futures_lite::Stream<Item = Result<Event, Infallible>>> {
    let events = values.map(|value| {
        let data = match value {
            Value::String(raw) => raw,
            other => other.to_string(),
        };
        Ok(Event::default().data(data))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// How a stream ends after its last chunk: the usage chunk when asked for, then `[DONE]`.
fn stream_end(
    out: &mut Vec<Value>,
    finished: &Finished,
    include_usage: bool,
    chunk: impl Fn(Value, Value) -> Value,
) {
    if include_usage {
        out.push(chunk(json!([]), usage(finished)));
    }
    out.push(Value::String("[DONE]".into()));
}

/// A failure after the stream started: an error event, then `[DONE]`.
fn stream_failure(message: String) -> [Value; 2] {
    [
        ApiError::generation(message).openai_json(),
        Value::String("[DONE]".into()),
    ]
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.started,
            "owned_by": "idefics2-rs",
        }],
    }))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fingerprint() -> String {
    concat!("idefics2-rs-", env!("CARGO_PKG_VERSION")).to_owned()
}
