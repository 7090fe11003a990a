//! Text side of `Idefics2Processor.__call__` (transformers 4.54.1): expand each `<image>` into
//! the image's token run, tokenize with the `tokenizers` crate (BOS comes from the tokenizer's
//! post-processor), pad the batch; and `decode` for generated ids.

use serde::Deserialize;
use tokenizers::{AddedToken, Tokenizer};
use tracing::debug;

use super::config::read_optional_json;
use super::{ProcessorError, Result};
use crate::model_files::ModelFiles;

/// The image placeholder in prompts, and the token repeated `image_seq_len` times per image.
pub const IMAGE_TOKEN: &str = "<image>";
/// Marks the start and end of each image's token run.
pub const FAKE_IMAGE_TOKEN: &str = "<fake_token_around_image>";
/// Ends every chat turn; generation stops on it.
pub const END_OF_UTTERANCE_TOKEN: &str = "<end_of_utterance>";

const BUNDLED_TOKENIZER_JSON: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/tokenizer/tokenizer.json"
));
const BUNDLED_TOKENIZER_CONFIG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/tokenizer/tokenizer_config.json"
));

/// The fields of `tokenizer_config.json` the processor uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenizerConfig {
    #[serde(default)]
    pub pad_token: Option<SpecialToken>,
    #[serde(default)]
    pub bos_token: Option<SpecialToken>,
    #[serde(default)]
    pub eos_token: Option<SpecialToken>,
    /// `LlamaTokenizerFast` pads on the left unless this says otherwise.
    #[serde(default)]
    pub padding_side: Option<PaddingSide>,
}

/// A special token as `tokenizer_config.json` writes it: a string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    pub fn content(&self) -> &str {
        match self {
            Self::Text(text) | Self::Added { content: text } => text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    Left,
    Right,
}

/// Token ids of a padded batch of prompts.
///
/// # Shapes
/// - `input_ids`: `[batch, seq]` u32, padded with the pad id (0, `<unk>`, for Idefics2).
/// - `attention_mask`: `[batch, seq]` u8, 0 on padding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u8>>,
}

/// Tokenizer plus Idefics2's prompt expansion and padding rules.
#[derive(Debug, Clone)]
pub struct PromptProcessor {
    tokenizer: Tokenizer,
    image_seq_len: usize,
    pad_id: u32,
    padding_side: PaddingSide,
    bos_token: String,
    eos_token: String,
}

impl PromptProcessor {
    /// `dir/tokenizer.json` and `dir/tokenizer_config.json`; the bundled Idefics2 tokenizer
    /// (`assets/tokenizer/`) when `dir` has no `tokenizer.json`.
    pub fn from_model_files(model: &ModelFiles, image_seq_len: usize) -> Result<Self> {
        let name = "tokenizer.json";
        let bytes = model
            .read(name)
            .map_err(|source| ProcessorError::ReadFile {
                path: model.path(name),
                source,
            })?;
        let Some(bytes) = bytes else {
            debug!(model = ?model, "no tokenizer.json, using the bundled tokenizer");
            return Self::bundled(image_seq_len);
        };
        let tokenizer =
            Tokenizer::from_bytes(&*bytes).map_err(|source| ProcessorError::Tokenizer {
                origin: model.path(name).display().to_string(),
                source,
            })?;
        let config = read_optional_json(model, "tokenizer_config.json")?.unwrap_or_default();
        Self::new(tokenizer, config, image_seq_len)
    }

    /// The Idefics2 tokenizer shipped with this crate.
    pub fn bundled(image_seq_len: usize) -> Result<Self> {
        let tokenizer_error = |source| ProcessorError::Tokenizer {
            origin: "<bundled>".to_owned(),
            source,
        };
        let tokenizer = Tokenizer::from_bytes(BUNDLED_TOKENIZER_JSON).map_err(tokenizer_error)?;
        let config = serde_json::from_str(BUNDLED_TOKENIZER_CONFIG)
            .map_err(|e| tokenizer_error(Box::new(e)))?;
        Self::new(tokenizer, config, image_seq_len)
    }

    /// Adds the image and end-of-utterance special tokens when the tokenizer lacks them, as
    /// `Idefics2Processor.__init__` does.
    pub fn new(
        mut tokenizer: Tokenizer,
        config: TokenizerConfig,
        image_seq_len: usize,
    ) -> Result<Self> {
        let special = [FAKE_IMAGE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE_TOKEN]
            .map(|t| AddedToken::from(t, true).normalized(false));
        let added = tokenizer.add_special_tokens(&special);
        if added > 0 {
            debug!(added, "added Idefics2 special tokens to the tokenizer");
        }
        let pad_token = config
            .pad_token
            .as_ref()
            .map_or("<unk>", SpecialToken::content);
        let pad_id =
            tokenizer
                .token_to_id(pad_token)
                .ok_or_else(|| ProcessorError::MissingToken {
                    token: pad_token.to_owned(),
                })?;
        Ok(Self {
            tokenizer,
            image_seq_len,
            pad_id,
            padding_side: config.padding_side.unwrap_or(PaddingSide::Left),
            bos_token: config
                .bos_token
                .as_ref()
                .map_or("<s>", SpecialToken::content)
                .to_owned(),
            eos_token: config
                .eos_token
                .as_ref()
                .map_or("</s>", SpecialToken::content)
                .to_owned(),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn image_seq_len(&self) -> usize {
        self.image_seq_len
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Id of `token`, or [`ProcessorError::MissingToken`].
    pub fn token_id(&self, token: &str) -> Result<u32> {
        self.tokenizer
            .token_to_id(token)
            .ok_or_else(|| ProcessorError::MissingToken {
                token: token.to_owned(),
            })
    }

    /// Ids that end generation: `</s>` and `<end_of_utterance>`.
    pub fn stop_token_ids(&self) -> Result<Vec<u32>> {
        Ok(vec![
            self.token_id(&self.eos_token)?,
            self.token_id(END_OF_UTTERANCE_TOKEN)?,
        ])
    }

    /// `<image>` placeholders in `prompt` (non-overlapping, like Python's `str.count`).
    pub fn count_image_tokens(prompt: &str) -> usize {
        prompt.matches(IMAGE_TOKEN).count()
    }

    /// Each `<image>` becomes `<fake>` + `<image>` x `image_seq_len` + `<fake>` (five such runs
    /// with splitting), then adjacent `<fake><fake>` collapse into one.
    pub fn expand_prompt(&self, prompt: &str, do_image_splitting: bool) -> String {
        let run = format!(
            "{FAKE_IMAGE_TOKEN}{}{FAKE_IMAGE_TOKEN}",
            IMAGE_TOKEN.repeat(self.image_seq_len)
        );
        let image_str = if do_image_splitting {
            run.repeat(5)
        } else {
            run
        };
        prompt.replace(IMAGE_TOKEN, &image_str).replace(
            &format!("{FAKE_IMAGE_TOKEN}{FAKE_IMAGE_TOKEN}"),
            FAKE_IMAGE_TOKEN,
        )
    }

    /// Expands and tokenizes `prompts`, padding them to the longest (`padding=True`).
    ///
    /// # Shapes
    /// See [`TokenBatch`]: `[prompts.len(), longest]`.
    pub fn encode<S: AsRef<str>>(
        &self,
        prompts: &[S],
        do_image_splitting: bool,
    ) -> Result<TokenBatch> {
        let mut sequences = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let expanded = self.expand_prompt(prompt.as_ref(), do_image_splitting);
            let encoding = self
                .tokenizer
                .encode(expanded.as_str(), true)
                .map_err(|source| ProcessorError::Tokenizer {
                    origin: "encode".to_owned(),
                    source,
                })?;
            sequences.push(encoding.get_ids().to_vec());
        }
        Ok(self.pad(sequences))
    }

    fn pad(&self, sequences: Vec<Vec<u32>>) -> TokenBatch {
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut batch = TokenBatch::default();
        for ids in sequences {
            let n_pad = longest - ids.len();
            let (mut padded, mut mask) = (Vec::with_capacity(longest), Vec::with_capacity(longest));
            if self.padding_side == PaddingSide::Left {
                padded.resize(n_pad, self.pad_id);
                mask.resize(n_pad, 0);
            }
            mask.resize(mask.len() + ids.len(), 1);
            padded.extend(ids);
            padded.resize(longest, self.pad_id);
            mask.resize(longest, 0);
            batch.input_ids.push(padded);
            batch.attention_mask.push(mask);
        }
        batch
    }

    /// Text of `ids`; `skip_special_tokens` drops `<s>`, `<image>`, `<end_of_utterance>`, ...
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|source| ProcessorError::Tokenizer {
                origin: "decode".to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled(seq: usize) -> PromptProcessor {
        PromptProcessor::bundled(seq).expect("bundled tokenizer")
    }

    #[test]
    fn adjacent_images_share_one_fake_token() {
        let p = bundled(2);
        assert_eq!(
            p.expand_prompt("a<image><image>b", false),
            "a<fake_token_around_image><image><image><fake_token_around_image><image><image><fake_token_around_image>b"
        );
        let split = p.expand_prompt("<image>", true);
        assert_eq!(split.matches(IMAGE_TOKEN).count(), 10);
        assert_eq!(split.matches(FAKE_IMAGE_TOKEN).count(), 6);
    }

    #[test]
    fn special_token_ids() {
        let p = bundled(64);
        assert_eq!(p.token_id(FAKE_IMAGE_TOKEN).expect("id"), 32000);
        assert_eq!(p.token_id(IMAGE_TOKEN).expect("id"), 32001);
        assert_eq!(p.stop_token_ids().expect("ids"), vec![2, 32002]);
    }

    #[test]
    fn batch_is_left_padded_with_bos() {
        let p = bundled(1);
        let batch = p
            .encode(&["Hello world", "<image>"], false)
            .expect("encode");
        assert_eq!(batch.input_ids[0], vec![0, 1, 16230, 1526]);
        assert_eq!(batch.attention_mask[0], vec![0, 1, 1, 1]);
        assert_eq!(batch.input_ids[1], vec![1, 32000, 32001, 32000]);
        assert_eq!(batch.attention_mask[1], vec![1, 1, 1, 1]);
    }
}
