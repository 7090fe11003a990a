//! The engine's thread: owns the model, admits queued requests into the running batch, and
//! decodes every running request one token per step (continuous batching).
//!
//! Rows decode in lockstep over one KV cache. Each row's keys end at the cache's current length,
//! preceded by padding the attention mask hides, so a row that joins (prefilled alone, then
//! gathered in) or leaves only changes which rows the cache holds; RoPE positions are per row.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use burn::tensor::Tensor;
use rayon::prelude::*;
use web_time::Instant;

use super::prefix::{PrefixStore, crops_from, image_hashes};
use super::request::{CancelHandle, EngineEvent, EngineRequest, StopReason};
use super::row::{Row, Vocabulary};
use super::{EngineConfig, Shared};
use crate::error::Result;
use crate::kv_cache::{KvCache, RowSource};
use crate::model::{Idefics2, ModelInput};

/// A request on its way to the worker.
pub(super) struct Submission {
    pub id: u64,
    pub request: EngineRequest,
    pub events: async_channel::Sender<EngineEvent>,
    pub cancel: CancelHandle,
    pub enqueued: Instant,
}

pub(super) struct Worker {
    model: Idefics2,
    vocabulary: Vocabulary,
    config: EngineConfig,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Submission>,
    waiting: VecDeque<Submission>,
    rows: Vec<Row>,
    cache: Option<KvCache>,
    prefixes: PrefixStore,
}

impl Worker {
    pub fn new(
        model: Idefics2,
        vocabulary: Vocabulary,
        config: EngineConfig,
        shared: Arc<Shared>,
        inbox: mpsc::Receiver<Submission>,
        prefixes: PrefixStore,
    ) -> Self {
        Self {
            model,
            vocabulary,
            config,
            shared,
            inbox,
            waiting: VecDeque::new(),
            rows: Vec::new(),
            cache: None,
            prefixes,
        }
    }

    /// Runs until every handle to the engine is gone and no request is left.
    pub fn run(mut self) {
        loop {
            if self.rows.is_empty() && self.waiting.is_empty() {
                match self.inbox.recv() {
                    Ok(submission) => self.waiting.push_back(submission),
                    Err(_) => return,
                }
            }
            while let Ok(submission) = self.inbox.try_recv() {
                self.waiting.push_back(submission);
            }
            self.admit();
            if !self.rows.is_empty() {
                self.step();
            }
            self.publish();
        }
    }

    fn publish(&self) {
        let shared = &self.shared;
        shared.queued.store(self.waiting.len(), Ordering::Relaxed);
        shared.running.store(self.rows.len(), Ordering::Relaxed);
        let cached = self.cache.as_ref().map_or(0, |c| c.batch() * c.capacity());
        shared.kv_tokens.store(cached, Ordering::Relaxed);
        shared
            .prefix_tokens
            .store(self.prefixes.tokens(), Ordering::Relaxed);
    }

    /// Prefills queued requests, oldest first, while the batch has room for them.
    fn admit(&mut self) {
        while let Some(next) = self.waiting.front() {
            if next.cancel.is_cancelled() || next.events.is_closed() {
                // Cancelled while queued: it ends with no token, and says so.
                // Counted as done before its end is sent: whoever sees the end may submit again.
                self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
                self.shared.done(1);
                if let Some(dropped) = self.waiting.pop_front() {
                    let mut row = Row::new(
                        dropped.id,
                        &dropped.request.input_ids,
                        dropped.request.params,
                        dropped.events,
                        dropped.cancel,
                        dropped.enqueued,
                    );
                    row.finished = Some(StopReason::Cancelled);
                    row.finish(&self.vocabulary);
                }
                continue;
            }
            // Rows share one cache length: after the join the cache holds rows x (the longest
            // row so far + the most tokens any row may still add), and it only shrinks after.
            let longest = self
                .rows
                .iter()
                .map(|r| r.used)
                .max()
                .unwrap_or(0)
                .max(next.request.input_ids.len());
            let ahead = self
                .rows
                .iter()
                .map(Row::remaining)
                .max()
                .unwrap_or(0)
                .max(next.request.params.max_new_tokens);
            let fits = self.rows.len() < self.config.max_batch_size
                && (self.rows.len() + 1) * (longest + ahead) <= self.config.kv_budget_tokens();
            if !fits {
                break;
            }
            let Some(submission) = self.waiting.pop_front() else {
                break;
            };
            self.shared
                .queued
                .store(self.waiting.len(), Ordering::Relaxed);
            self.prefill(submission);
        }
    }

    /// Encodes the request's images and prompt alone, takes its first token, and lets the row
    /// join the running batch unless it already ended.
    fn prefill(&mut self, submission: Submission) {
        let Submission {
            id,
            request,
            events,
            cancel,
            enqueued,
        } = submission;
        let mut row = Row::new(
            id,
            &request.input_ids,
            request.params.clone(),
            events,
            cancel,
            enqueued,
        );
        row.images = image_hashes(request.pixels.as_ref());
        let model = &self.model;
        let reuse = self.prefixes.find(&request.input_ids, &row.images);
        let reused = reuse.as_ref().map_or(0, |r| r.len);
        let run = || -> Result<(KvCache, Vec<f32>)> {
            let total = request.input_ids.len();
            // With a reusable prefix only the rest of the prompt (and its images) is encoded.
            let (mut cache, input, start) = match reuse {
                Some(reuse) => {
                    let pixels = match &request.pixels {
                        Some(pixels) => crops_from(pixels, reuse.images),
                        None => None,
                    };
                    let cache =
                        KvCache::gather(&[RowSource::first(reuse.cache, 0, reuse.len)], total)?;
                    let input = ModelInput::single(request.input_ids[reuse.len..].to_vec(), pixels);
                    (cache, input, reuse.len)
                }
                None => (
                    model.new_cache(1, total)?,
                    ModelInput::single(request.input_ids.clone(), request.pixels.clone()),
                    0,
                ),
            };
            let features = match &input.pixels {
                Some(pixels) => model.image_features(pixels)?,
                None => None,
            };
            let embeds = model.inputs_embeds(&input, features)?;
            let mask = vec![1u8; total];
            let positions: Vec<i64> = (start as i64..total as i64).collect();
            let hidden = model.decode(embeds, &mask, &positions, &mut cache)?;
            let [_, seq, hidden_size] = hidden.dims();
            let last = hidden.slice([0..1, seq - 1..seq, 0..hidden_size]);
            let logits = futures_lite::future::block_on(model.read_logits(last))?;
            Ok((cache, logits))
        };
        let (cache, logits) = match guarded(run) {
            Ok(done) => done,
            Err(message) => return self.fail_one(row, message),
        };
        self.shared
            .prompt_tokens
            .fetch_add(row.prompt_tokens, Ordering::Relaxed);
        self.shared
            .reused_tokens
            .fetch_add(reused, Ordering::Relaxed);
        row.take_token(&logits, &self.vocabulary);
        self.shared.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if row.finished.is_some() {
            if row.finished == Some(StopReason::Cancelled) {
                self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
            } else {
                self.prefixes
                    .insert(row.cached_ids(), row.images.clone(), cache);
            }
            self.shared.done(1);
            row.finish(&self.vocabulary);
            return;
        }
        self.rows.push(row);
        let joined = self.regather(Some(&cache));
        if let Err(message) = joined {
            self.fail_all(message);
        }
    }

    /// Rebuilds the batch's cache for the rows now in `self.rows`: the running rows come from the
    /// current cache, the last one from `joining` when a row joins.
    fn regather(&mut self, joining: Option<&KvCache>) -> std::result::Result<(), String> {
        let running = self.rows.len() - usize::from(joining.is_some());
        let longest = self.rows.iter().map(|r| r.used).max().unwrap_or(0);
        let ahead = self.rows.iter().map(Row::remaining).max().unwrap_or(0);
        let mut sources = Vec::with_capacity(self.rows.len());
        for (index, row) in self.rows.iter().enumerate() {
            let (cache, cache_row) = match (index < running, &self.cache, joining) {
                (true, Some(cache), _) => (cache, row.slot),
                (false, _, Some(cache)) => (cache, 0),
                _ => return Err("the engine lost a row's KV cache".into()),
            };
            sources.push(RowSource::last(cache, cache_row, row.used));
        }
        self.cache = if sources.is_empty() {
            None
        } else {
            Some(guarded(|| KvCache::gather(&sources, longest + ahead))?)
        };
        for (slot, row) in self.rows.iter_mut().enumerate() {
            row.slot = slot;
        }
        Ok(())
    }

    /// One token for every running row.
    fn step(&mut self) {
        let Some(cache) = self.cache.as_mut() else {
            return self.fail_all("the engine lost its KV cache".into());
        };
        let (batch, len) = (self.rows.len(), cache.len());
        let mut mask = Vec::with_capacity(batch * (len + 1));
        for row in &self.rows {
            mask.extend(std::iter::repeat_n(0u8, len - row.used));
            mask.extend(std::iter::repeat_n(1u8, row.used + 1));
        }
        let positions: Vec<i64> = self.rows.iter().map(|r| r.used as i64).collect();
        let ids: Vec<u32> = self.rows.iter().map(|r| r.last).collect();
        let model = &self.model;
        let run = || -> Result<Vec<f32>> {
            let embeds: Tensor<3> = model.model.text_model.embed(&ids, batch, 1);
            let hidden = model.decode(embeds, &mask, &positions, cache)?;
            futures_lite::future::block_on(model.read_logits(hidden))
        };
        let logits = match guarded(run) {
            Ok(logits) => logits,
            Err(message) => return self.fail_all(message),
        };
        let vocab_size = logits.len() / batch;
        let vocabulary = &self.vocabulary;
        // Rows choose their tokens in parallel: with a small model on the CPU, the host's work
        // per row (softmax over the vocabulary, text decoding) rivals the decode step itself.
        self.rows
            .par_iter_mut()
            .zip(logits.par_chunks(vocab_size))
            .for_each(|(row, logits)| {
                row.used += 1;
                row.take_token(logits, vocabulary);
            });
        self.shared
            .generated_tokens
            .fetch_add(batch, Ordering::Relaxed);
        self.shared.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.retire();
    }

    /// Ends the rows that finished and frees their cache rows at once.
    fn retire(&mut self) {
        for row in &mut self.rows {
            if row.finished.is_none() && row.abandoned() {
                row.finished = Some(StopReason::Cancelled);
            }
        }
        if self.rows.iter().all(|r| r.finished.is_none()) {
            return;
        }
        let vocabulary = &self.vocabulary;
        for row in self.rows.iter_mut().filter(|r| r.finished.is_some()) {
            if row.finished == Some(StopReason::Cancelled) {
                self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
            } else if let Some(cache) = &self.cache
                // The row's keys are its last `used` positions (padding comes first).
                && let Ok(kept) = KvCache::gather(&[RowSource::last(cache, row.slot, row.used)], row.used)
            {
                self.prefixes
                    .insert(row.cached_ids(), row.images.clone(), kept);
            }
            self.shared.done(1);
            row.finish(vocabulary);
        }
        self.rows.retain(|r| r.finished.is_none());
        if let Err(message) = self.regather(None) {
            self.fail_all(message);
        }
    }

    fn fail_one(&mut self, mut row: Row, message: String) {
        tracing::warn!(request = row.id, "request failed: {message}");
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.shared.done(1);
        row.fail(message);
    }

    /// A decode step failed (a GPU error): every running request ends with it.
    fn fail_all(&mut self, message: String) {
        tracing::warn!("decode step failed: {message}");
        let rows = std::mem::take(&mut self.rows);
        self.cache = None;
        for row in rows {
            self.fail_one(row, message.clone());
        }
    }
}

/// Runs model work, turning its error or its panic (how burn reports a lost device or a full
/// memory) into a message for the requests it concerns.
fn guarded<R>(work: impl FnOnce() -> Result<R>) -> std::result::Result<R, String> {
    match crate::catch_panics(work) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("the model failed: {}", crate::panic_text(&*panic))),
    }
}
