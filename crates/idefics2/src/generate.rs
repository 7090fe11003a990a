//! The generation loop: prefill the prompt (images merged in), then one token per step from the
//! last position's logits, read back asynchronously (the browser can only read GPU memory that
//! way). Tokens are streamed to a callback that can cancel between steps.

use std::ops::ControlFlow;

use burn::tensor::{DType, Tensor};
use web_time::Instant;

use crate::error::{Error, Result};
use crate::model::{Idefics2, ModelInput};
use crate::sampling::{Rng, SamplingOptions, log_prob, next_token};

#[derive(Debug, Clone)]
pub struct GenerationOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Generation of a row ends on any of these.
    pub eos_token_ids: Vec<u32>,
    pub bad_words_ids: Vec<Vec<u32>>,
    /// Fed to rows that already finished (their outputs are discarded).
    pub pad_token_id: u32,
}

impl GenerationOptions {
    /// Defaults from the model's `generation_config.json`.
    pub fn from_generation_config(
        config: &crate::config::GenerationConfig,
        max_new_tokens: usize,
    ) -> Self {
        Self {
            max_new_tokens,
            sampling: SamplingOptions::default(),
            eos_token_ids: config.eos_ids(),
            bad_words_ids: config.bad_words(),
            pad_token_id: config.pad_token_id.unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Produced an end-of-sequence id (kept as the row's last token).
    Eos,
    MaxNewTokens,
    Cancelled,
}

/// One generated token of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenEvent {
    pub row: usize,
    pub token: u32,
    /// ln p(token) under the model after bad words are banned, before temperature/penalties.
    pub logprob: f32,
    /// Index of this token among the row's generated tokens.
    pub index: usize,
}

#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// Per row: generated ids (an eos id included when it ended the row).
    pub tokens: Vec<Vec<u32>>,
    pub logprobs: Vec<Vec<f32>>,
    pub finish: Vec<FinishReason>,
    /// Prompt tokens per row (without padding).
    pub prompt_tokens: Vec<usize>,
    /// Seconds spent in the vision encoder, connector and prompt pass, up to the first token.
    pub prefill_seconds: f64,
    /// Seconds for the remaining tokens.
    pub decode_seconds: f64,
}

impl Idefics2 {
    /// Generates for a left-padded batch; `on_token` sees each token as it is produced and can
    /// stop generation by returning `Break`.
    pub async fn generate_async(
        &self,
        input: &ModelInput,
        options: &GenerationOptions,
        mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<GenerationOutput> {
        options.sampling.validate()?;
        let (batch, seq) = (input.batch, input.seq);
        let start = Instant::now();
        let features = match &input.pixels {
            Some(pixels) => self.image_features(pixels)?,
            None => None,
        };
        let embeds = self.inputs_embeds(input, features)?;
        let mut cache = self.new_cache(batch, seq + options.max_new_tokens)?;
        let mut attention_mask = input.attention_mask.clone();
        let hidden = self.decode(embeds, &attention_mask, &input.positions(), &mut cache)?;
        let mut next_position: Vec<i64> = input
            .attention_mask
            .chunks(seq)
            .map(|row| row.iter().map(|&m| m as i64).sum())
            .collect();
        let mut contexts: Vec<Vec<u32>> =
            input.input_ids.chunks(seq).map(<[u32]>::to_vec).collect();
        let mut output = GenerationOutput {
            tokens: vec![Vec::new(); batch],
            logprobs: vec![Vec::new(); batch],
            finish: vec![FinishReason::MaxNewTokens; batch],
            prompt_tokens: next_position.iter().map(|&n| n as usize).collect(),
            prefill_seconds: 0.0,
            decode_seconds: 0.0,
        };
        let mut finished = vec![false; batch];
        let mut rng = Rng::new(options.sampling.sampling.seed().unwrap_or(0));
        let hidden_size = self.config.text_config.hidden_size;
        let mut last_hidden = hidden.slice([0..batch, seq - 1..seq, 0..hidden_size]); // [batch, 1, hidden]
        let mut decode_start = None;
        for step in 0..options.max_new_tokens {
            let logits = self.read_logits(last_hidden).await?;
            let vocab = logits.len() / batch;
            let sampling_profile =
                crate::profile::scope("sampling (host)", || self.device().clone());
            let mut next = Vec::with_capacity(batch);
            let mut cancelled = false;
            for row in 0..batch {
                if finished[row] {
                    next.push(options.pad_token_id);
                    continue;
                }
                let (token, scores) = next_token(
                    &logits[row * vocab..(row + 1) * vocab],
                    &contexts[row],
                    &options.bad_words_ids,
                    &options.sampling,
                    &mut rng,
                );
                let event = TokenEvent {
                    row,
                    token: token as u32,
                    logprob: log_prob(&scores, token),
                    index: step,
                };
                output.tokens[row].push(event.token);
                output.logprobs[row].push(event.logprob);
                contexts[row].push(event.token);
                next.push(event.token);
                if options.eos_token_ids.contains(&event.token) {
                    finished[row] = true;
                    output.finish[row] = FinishReason::Eos;
                }
                if on_token(&event).is_break() {
                    cancelled = true;
                }
            }
            drop(sampling_profile);
            if step == 0 {
                output.prefill_seconds = start.elapsed().as_secs_f64();
                decode_start = Some(Instant::now());
            }
            if cancelled {
                for (row, done) in finished.iter().enumerate() {
                    if !done {
                        output.finish[row] = FinishReason::Cancelled;
                    }
                }
                break;
            }
            if finished.iter().all(|&f| f) || step + 1 == options.max_new_tokens {
                break;
            }
            // Feed the chosen tokens back: one new position per row.
            let past = cache.len();
            let mut mask = Vec::with_capacity(batch * (past + 1));
            for row in 0..batch {
                mask.extend_from_slice(&attention_mask[row * past..(row + 1) * past]);
                mask.push(1);
            }
            attention_mask = mask;
            let positions: Vec<i64> = next_position.clone();
            next_position.iter_mut().for_each(|p| *p += 1);
            let embeds = self.model.text_model.embed(&next, batch, 1);
            last_hidden = self.decode(embeds, &attention_mask, &positions, &mut cache)?;
        }
        output.decode_seconds = decode_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok(output)
    }

    /// Blocking [`Self::generate_async`] for native callers.
    #[cfg(not(target_family = "wasm"))]
    pub fn generate(
        &self,
        input: &ModelInput,
        options: &GenerationOptions,
        on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<GenerationOutput> {
        futures_lite::future::block_on(self.generate_async(input, options, on_token))
    }

    /// Logits of `[batch, 1, hidden]` read back as f32 `[batch * vocab]`.
    pub(crate) async fn read_logits(&self, last_hidden: Tensor<3>) -> Result<Vec<f32>> {
        let logits = self.logits(last_hidden).cast(DType::F32);
        let _profile = crate::profile::scope("logits readback", || self.device().clone());
        let data = logits
            .into_data_async()
            .await
            .map_err(|e| Error::Device(format!("reading logits: {e:?}")))?;
        data.try_into_vec::<f32>()
            .map_err(|e| Error::Device(format!("reading logits: {e:?}")))
    }
}
