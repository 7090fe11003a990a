//! Token-by-token text for streaming generation.
//!
//! Decoding one id at a time is wrong for SentencePiece-style tokenizers: a `▁` turns into a
//! space only in context, and byte-fallback tokens (`<0xF0>` ...) form a character only
//! together. So each step decodes a short window of recent ids twice, without and with the new
//! id, and emits the difference once it no longer ends in an incomplete character (U+FFFD),
//! the scheme of text-generation-inference's `decode_token`.

use super::Result;
use super::prompt::PromptProcessor;

/// Turns generated ids into text pieces whose concatenation equals decoding all ids at once.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of the text already emitted.
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            ..Self::default()
        }
    }

    /// Adds `id`; returns the new text, or `None` while it is still an incomplete character.
    pub fn step(&mut self, prompt: &PromptProcessor, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = prompt.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let text = prompt.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(new_text) = text.get(prefix.len()..) else {
            return Ok(None);
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(Some(new_text.to_owned()))
    }

    /// Whatever is still held back (an incomplete character at the end of generation).
    pub fn finish(&mut self, prompt: &PromptProcessor) -> Result<Option<String>> {
        let prefix = prompt.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let text = prompt.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(text
            .get(prefix.len()..)
            .filter(|t| !t.is_empty())
            .map(str::to_owned))
    }

    /// All ids seen so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_pieces_concatenate_to_the_full_decode() {
        let prompt = PromptProcessor::bundled(64).expect("bundled tokenizer");
        let text = "A crab 🦀 says: héllo\n  world<end_of_utterance>";
        let ids = prompt
            .encode(&[text], false)
            .expect("encode")
            .input_ids
            .remove(0);
        for skip in [false, true] {
            let mut decoder = IncrementalDecoder::new(skip);
            let mut streamed = String::new();
            for &id in &ids {
                if let Some(piece) = decoder.step(&prompt, id).expect("step") {
                    assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                    streamed.push_str(&piece);
                }
            }
            streamed.extend(decoder.finish(&prompt).expect("finish"));
            assert_eq!(streamed, prompt.decode(&ids, skip).expect("decode"));
        }
    }
}
