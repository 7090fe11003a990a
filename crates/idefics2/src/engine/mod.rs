//! The serving engine every front end can share: one worker thread owns the model; requests go
//! in through a queue and come out as event streams, each with its own sampling settings, stop
//! sequences and cancel handle. Requests that arrive while others decode are prefilled and join
//! the running batch between decode steps (continuous batching); a finished or cancelled one
//! leaves it and frees its KV memory at once. A KV budget decides admission: requests wait in the
//! queue while it is full, and the queue itself is bounded (`max_concurrent_requests`).

mod prefix;
mod request;
mod row;
mod worker;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use web_time::Instant;

pub use request::{
    CancelHandle, EngineEvent, EngineRequest, Finished, GenerateParams, GeneratedToken,
    RequestHandle, StopReason,
};
use worker::{Submission, Worker};

use crate::error::Result;
use crate::pipeline::Pipeline;
use crate::processor::Idefics2Processor;

/// Limits of one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Requests decoded together at most.
    pub max_batch_size: usize,
    /// Prompt tokens (images expanded) of one request at most.
    pub max_input_tokens: usize,
    /// Prompt plus `max_new_tokens` of one request at most.
    pub max_total_tokens: usize,
    /// Requests queued or running at most; more are refused ([`SubmitError::Overloaded`]).
    pub max_concurrent_requests: usize,
    /// KV cache positions (over all rows) the batch may hold; `None`: `max_total_tokens` x
    /// `max_batch_size`.
    pub max_batch_total_tokens: Option<usize>,
    /// Stop sequences per request at most.
    pub max_stop_sequences: usize,
    /// KV positions kept from finished requests for prefix reuse (0: none).
    pub prefix_cache_tokens: usize,
}

impl EngineConfig {
    /// Defaults for a model that knows `max_position_embeddings` positions.
    pub fn for_positions(max_position_embeddings: usize) -> Self {
        let total = max_position_embeddings.min(4096);
        Self {
            max_batch_size: 16,
            max_input_tokens: total.saturating_sub(1).max(1),
            max_total_tokens: total,
            max_concurrent_requests: 128,
            max_batch_total_tokens: None,
            max_stop_sequences: 4,
            prefix_cache_tokens: 2 * total,
        }
    }

    pub fn kv_budget_tokens(&self) -> usize {
        self.max_batch_total_tokens
            .unwrap_or(self.max_total_tokens * self.max_batch_size)
    }
}

/// Why a request was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The request itself is wrong (names the field and the limit).
    #[error("{0}")]
    Validation(String),
    #[error("model is overloaded: {limit} requests are already queued or running")]
    Overloaded { limit: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Counters and gauges of a running engine.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Queued + running: what `max_concurrent_requests` bounds.
    pending: AtomicUsize,
    queued: AtomicUsize,
    running: AtomicUsize,
    kv_tokens: AtomicUsize,
    prompt_tokens: AtomicUsize,
    generated_tokens: AtomicUsize,
    decode_steps: AtomicUsize,
    failed: AtomicUsize,
    cancelled: AtomicUsize,
    reused_tokens: AtomicUsize,
    prefix_tokens: AtomicUsize,
    closing: AtomicBool,
}

impl Shared {
    fn done(&self, requests: usize) {
        self.pending.fetch_sub(requests, Ordering::AcqRel);
    }
}

/// A snapshot of [`Shared`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub queued: usize,
    pub running: usize,
    /// Positions the batch's KV cache holds now (rows x capacity).
    pub kv_tokens: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub decode_steps: usize,
    pub failed: usize,
    /// Requests that ended because they were cancelled or their receiver was dropped.
    pub cancelled: usize,
    /// Prompt positions taken from the prefix store instead of being prefilled.
    pub reused_tokens: usize,
    /// Positions the prefix store holds now.
    pub prefix_tokens: usize,
}

struct Inner {
    submit: mpsc::Sender<Submission>,
    shared: Arc<Shared>,
    processor: Arc<Idefics2Processor>,
    /// Ids of the tokenizer's special tokens.
    special: Arc<HashSet<u32>>,
    config: EngineConfig,
    next_id: AtomicU64,
}

/// A handle to the engine; clones share it. The worker ends when the last handle is dropped and
/// its requests are done.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Moves `pipeline`'s model onto a worker thread of its own.
    pub fn start(pipeline: Pipeline, config: EngineConfig) -> Result<Self> {
        let Pipeline {
            processor,
            model,
            generation,
        } = pipeline;
        let special: Arc<HashSet<u32>> = processor
            .prompt
            .tokenizer()
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| *id)
            .collect::<HashSet<u32>>()
            .into();
        let prefixes = prefix::PrefixStore::new(
            config.prefix_cache_tokens,
            processor
                .prompt
                .token_id(crate::processor::prompt::IMAGE_TOKEN)?,
            processor.prompt.image_seq_len(),
        );
        let processor = Arc::new(processor);
        let shared = Arc::new(Shared::default());
        let (submit, inbox) = mpsc::channel();
        let vocabulary = row::Vocabulary {
            processor: processor.clone(),
            eos_token_ids: generation.eos_ids(),
            bad_words_ids: generation.bad_words(),
            special: special.clone(),
        };
        let worker = Worker::new(
            model,
            vocabulary,
            config.clone(),
            shared.clone(),
            inbox,
            prefixes,
        );
        std::thread::Builder::new()
            .name("idefics2-engine".into())
            .spawn(move || worker.run())
            .map_err(|e| crate::Error::Device(format!("starting the engine thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                submit,
                shared,
                processor,
                special,
                config,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    pub fn processor(&self) -> &Idefics2Processor {
        &self.inner.processor
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Whether `id` is one of the tokenizer's special tokens (`</s>`, `<end_of_utterance>`, ...).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special.contains(&id)
    }

    /// Checks `request` against the limits; the first problem, named.
    pub fn validate(&self, request: &EngineRequest) -> std::result::Result<(), SubmitError> {
        let config = &self.inner.config;
        let bad = |message: String| Err(SubmitError::Validation(message));
        let (input, new) = (request.input_ids.len(), request.params.max_new_tokens);
        if input == 0 {
            return bad("`inputs` cannot be empty".into());
        }
        if new == 0 {
            return bad("`max_new_tokens` must be strictly positive".into());
        }
        if input > config.max_input_tokens {
            return bad(format!(
                "`inputs` tokens must be <= {}. Given: {input}",
                config.max_input_tokens
            ));
        }
        if input + new > config.max_total_tokens {
            return bad(format!(
                "`inputs` tokens + `max_new_tokens` must be <= {}. Given: {input} `inputs` tokens and {new} `max_new_tokens`",
                config.max_total_tokens
            ));
        }
        if input + new > config.kv_budget_tokens() {
            return bad(format!(
                "`inputs` tokens + `max_new_tokens` ({}) exceed the KV budget of {} tokens",
                input + new,
                config.kv_budget_tokens()
            ));
        }
        if request.params.stop.len() > config.max_stop_sequences {
            return bad(format!(
                "`stop` supports up to {} stop sequences. Given: {}",
                config.max_stop_sequences,
                request.params.stop.len()
            ));
        }
        if let Err(e) = request.params.sampling.validate() {
            return bad(e.to_string());
        }
        Ok(())
    }

    /// Queues `request`; its tokens arrive on the returned handle's `events`.
    pub fn submit(
        &self,
        request: EngineRequest,
    ) -> std::result::Result<RequestHandle, SubmitError> {
        self.validate(&request)?;
        let inner = &self.inner;
        if inner.shared.closing.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let limit = inner.config.max_concurrent_requests;
        let admitted =
            inner
                .shared
                .pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                });
        if admitted.is_err() {
            return Err(SubmitError::Overloaded { limit });
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = async_channel::unbounded();
        let cancel = CancelHandle::default();
        let submission = Submission {
            id,
            request,
            events: events_tx,
            cancel: cancel.clone(),
            enqueued: Instant::now(),
        };
        if inner.submit.send(submission).is_err() {
            inner.shared.done(1);
            return Err(SubmitError::ShuttingDown);
        }
        inner.shared.queued.fetch_add(1, Ordering::Relaxed);
        Ok(RequestHandle { id, events, cancel })
    }

    /// Refuses new requests from now on; those already taken still finish.
    pub fn close(&self) {
        self.inner.shared.closing.store(true, Ordering::Release);
    }

    /// Requests queued or running.
    pub fn pending(&self) -> usize {
        self.inner.shared.pending.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.shared;
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        EngineStats {
            queued: get(&s.queued),
            running: get(&s.running),
            kv_tokens: get(&s.kv_tokens),
            prompt_tokens: get(&s.prompt_tokens),
            generated_tokens: get(&s.generated_tokens),
            decode_steps: get(&s.decode_steps),
            failed: get(&s.failed),
            cancelled: get(&s.cancelled),
            reused_tokens: get(&s.reused_tokens),
            prefix_tokens: get(&s.prefix_tokens),
        }
    }
}
