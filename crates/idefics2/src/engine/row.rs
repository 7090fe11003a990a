//! One request while it generates: its sampling state, its text so far and how it ends.

use std::collections::HashSet;
use std::sync::Arc;

use web_time::Instant;

use super::request::{
    CancelHandle, EngineEvent, Finished, GenerateParams, GeneratedToken, StopReason,
};
use crate::log_softmax::LogSoftmax;
use crate::processor::{Idefics2Processor, IncrementalDecoder};
use crate::sampling::{Rng, next_token, top_log_probs_with};

/// What every row shares: the tokenizer, the model's stop ids, banned words and special ids.
pub(super) struct Vocabulary {
    pub processor: Arc<Idefics2Processor>,
    pub eos_token_ids: Vec<u32>,
    pub bad_words_ids: Vec<Vec<u32>>,
    pub special: Arc<HashSet<u32>>,
}

pub(super) struct Row {
    pub id: u64,
    pub events: async_channel::Sender<EngineEvent>,
    pub cancel: CancelHandle,
    pub params: GenerateParams,
    rng: Rng,
    /// Prompt and generated ids (for bad words and the repetition penalty).
    context: Vec<u32>,
    pub prompt_tokens: usize,
    pub generated: usize,
    /// KV cache positions that hold this row's keys (the prompt and every token fed back).
    pub used: usize,
    /// The newest token, fed to the next decode step.
    pub last: u32,
    /// This row's index in the batch's KV cache.
    pub slot: usize,
    decoder: IncrementalDecoder,
    text: String,
    enqueued: Instant,
    started: Instant,
    first_token: Option<Instant>,
    pub finished: Option<StopReason>,
    /// Content hashes of the prompt's image crops (for prefix reuse).
    pub images: Vec<u64>,
}

impl Row {
    pub fn new(
        id: u64,
        input_ids: &[u32],
        params: GenerateParams,
        events: async_channel::Sender<EngineEvent>,
        cancel: CancelHandle,
        enqueued: Instant,
    ) -> Self {
        let rng = Rng::new(params.sampling.sampling.seed().unwrap_or(0));
        Self {
            id,
            events,
            cancel,
            rng,
            context: input_ids.to_vec(),
            prompt_tokens: input_ids.len(),
            generated: 0,
            used: input_ids.len(),
            last: 0,
            slot: 0,
            decoder: IncrementalDecoder::new(true),
            text: String::new(),
            params,
            enqueued,
            started: Instant::now(),
            first_token: None,
            finished: None,
            images: Vec::new(),
        }
    }

    /// The ids whose keys the row's cache positions hold.
    pub fn cached_ids(&self) -> Vec<u32> {
        self.context[..self.used.min(self.context.len())].to_vec()
    }

    /// Tokens this row may still feed to the decoder.
    pub fn remaining(&self) -> usize {
        self.params.max_new_tokens.saturating_sub(self.generated)
    }

    /// Nobody wants the rest: cancelled, or the receiver is gone (a client hung up).
    pub fn abandoned(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }

    /// Chooses the next token from this row's logits, as `Idefics2::generate` does for a row,
    /// sends it, and decides whether the row ends here.
    pub fn take_token(&mut self, logits: &[f32], vocab: &Vocabulary) {
        let (token, scores) = next_token(
            logits,
            &self.context,
            &vocab.bad_words_ids,
            &self.params.sampling,
            &mut self.rng,
        );
        let id = token as u32;
        let norm = LogSoftmax::of(&scores);
        let top = if self.params.top_logprobs > 0 {
            top_log_probs_with(&scores, &norm, self.params.top_logprobs)
        } else {
            Vec::new()
        };
        self.context.push(id);
        self.generated += 1;
        self.last = id;
        self.first_token.get_or_insert_with(Instant::now);
        let text = match self.decoder.step(&vocab.processor.prompt, id) {
            Ok(text) => text.unwrap_or_default(),
            Err(e) => return self.fail(format!("decoding token {id}: {e}")),
        };
        self.text.push_str(&text);
        let event = GeneratedToken {
            id,
            piece: vocab
                .processor
                .prompt
                .tokenizer()
                .id_to_token(id)
                .unwrap_or_default(),
            text,
            logprob: norm.log_prob(scores[token]),
            special: vocab.special.contains(&id),
            top,
        };
        let stopped = self.stop_sequence_in_tail(event.text.len());
        if self.events.try_send(EngineEvent::Token(event)).is_err() {
            self.finished = Some(StopReason::Cancelled);
        } else if vocab.eos_token_ids.contains(&id) {
            self.finished = Some(StopReason::EosToken);
        } else if stopped {
            self.finished = Some(StopReason::StopSequence);
        } else if self.generated >= self.params.max_new_tokens {
            self.finished = Some(StopReason::Length);
        } else if self.abandoned() {
            self.finished = Some(StopReason::Cancelled);
        }
    }

    /// Whether a stop sequence ends within the text the last `added` bytes completed.
    fn stop_sequence_in_tail(&self, added: usize) -> bool {
        self.params.stop.iter().any(|stop| {
            let from = self.text.len().saturating_sub(added + stop.len());
            let from = (from..=self.text.len())
                .find(|&i| self.text.is_char_boundary(i))
                .unwrap_or(self.text.len());
            !stop.is_empty() && self.text[from..].contains(stop.as_str())
        })
    }

    /// Sends the end of the request (its last text, how it ended, its times).
    pub fn finish(&mut self, vocab: &Vocabulary) {
        let reason = self.finished.unwrap_or(StopReason::Cancelled);
        if let Ok(Some(rest)) = self.decoder.finish(&vocab.processor.prompt) {
            self.text.push_str(&rest);
        }
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        let finished = Finished {
            reason,
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.generated,
            text: std::mem::take(&mut self.text),
            seed: self.params.sampling.sampling.seed(),
            queue_seconds: (self.started - self.enqueued).as_secs_f64(),
            prefill_seconds: (first - self.started).as_secs_f64(),
            decode_seconds: (now - first).as_secs_f64(),
        };
        let _ = self.events.try_send(EngineEvent::Finished(finished));
    }

    /// Ends the request with an error.
    pub fn fail(&mut self, message: String) {
        let _ = self.events.try_send(EngineEvent::Failed(message));
        self.finished = Some(StopReason::Cancelled);
        self.events.close();
    }
}
