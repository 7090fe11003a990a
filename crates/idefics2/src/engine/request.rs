//! What goes into the engine (a prepared prompt and its generation settings) and what comes out
//! (a stream of events per request).

pub use crate::cancel::CancelHandle;
use crate::model::ModelInput;
use crate::pixels::PixelBatch;
use crate::sampling::SamplingOptions;

/// How one request generates.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Generation ends once the text contains one of these (the text keeps it; front ends that
    /// must not show it, like OpenAI's, cut it off).
    pub stop: Vec<String>,
    /// Also report the `top_logprobs` most likely tokens at each step (OpenAI's `top_logprobs`).
    pub top_logprobs: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            sampling: SamplingOptions::default(),
            stop: Vec::new(),
            top_logprobs: 0,
        }
    }
}

/// One prompt, tokenized, with its preprocessed images.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub input_ids: Vec<u32>,
    pub pixels: Option<PixelBatch>,
    pub params: GenerateParams,
}

impl EngineRequest {
    /// The request of a one-row batch the processor made (padding removed; a batch of several
    /// rows is not one request).
    pub fn from_input(input: ModelInput, params: GenerateParams) -> Self {
        let ids = input
            .input_ids
            .iter()
            .zip(&input.attention_mask)
            .filter(|(_, m)| **m != 0)
            .map(|(id, _)| *id)
            .collect();
        Self {
            input_ids: ids,
            pixels: input.pixels,
            params,
        }
    }
}

/// Why a request stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` generated.
    Length,
    /// An end-of-sequence id (the last token).
    EosToken,
    /// The text reached one of the stop sequences.
    StopSequence,
    /// Cancelled by its handle, or nobody listens any more.
    Cancelled,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    pub id: u32,
    /// The new text this token adds (special tokens skipped; empty while a character is still
    /// incomplete, then the whole character comes with the token that completes it).
    pub text: String,
    /// The token as the vocabulary writes it (`<end_of_utterance>` for a special token).
    pub piece: String,
    /// ln p(token), before temperature and penalties.
    pub logprob: f32,
    pub special: bool,
    /// The most likely tokens with their log-probabilities, when asked for.
    pub top: Vec<(u32, f32)>,
}

/// The end of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: StopReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// The generated text, special tokens skipped.
    pub text: String,
    pub seed: Option<u64>,
    /// Seconds in the queue, then up to the first token, then for the rest.
    pub queue_seconds: f64,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    Token(GeneratedToken),
    Finished(Finished),
    /// The request failed; nothing follows.
    Failed(String),
}

/// What [`super::Engine::submit`] returns: the request's events, and its cancel handle.
/// Dropping the events receiver cancels the request too.
#[derive(Debug)]
pub struct RequestHandle {
    pub id: u64,
    pub events: async_channel::Receiver<EngineEvent>,
    pub cancel: CancelHandle,
}

impl RequestHandle {
    /// Blocks until the request ends; returns its tokens and how it ended.
    pub fn wait(self) -> Result<(Vec<GeneratedToken>, Finished), String> {
        let mut tokens = Vec::new();
        while let Ok(event) = self.events.recv_blocking() {
            match event {
                EngineEvent::Token(token) => tokens.push(token),
                EngineEvent::Finished(finished) => return Ok((tokens, finished)),
                EngineEvent::Failed(message) => return Err(message),
            }
        }
        Err("the engine stopped before the request finished".into())
    }
}
