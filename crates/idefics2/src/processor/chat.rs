//! Chat template rendering with minijinja, set up like transformers' `_compile_jinja_template`
//! (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, a `tojson` without HTML
//! escaping) plus Python string methods (`.capitalize()`, `.strip()`, ...) from
//! `minijinja_contrib::pycompat`.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::config::{read_optional_json, read_optional_text};
use super::{ProcessorError, Result};
use crate::model_files::ModelFiles;

/// Idefics2-8b's chat template, used when a model directory carries none.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

/// One chat turn in Hugging Face's message format:
/// `{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Vec<ContentPart>,
}

/// An item of [`ChatMessage::content`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ContentPart {
    /// Rendered as `<image>` by the template; the image itself goes to the processor.
    Image,
    Text {
        text: String,
    },
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: Vec<ContentPart>) -> Self {
        Self {
            role: role.into(),
            content,
        }
    }

    /// Number of image items.
    pub fn image_count(&self) -> usize {
        self.content
            .iter()
            .filter(|part| matches!(part, ContentPart::Image))
            .count()
    }
}

impl ContentPart {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text { text: text.into() }
    }
}

/// A compiled-on-demand chat template and the special tokens it may refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        Self::new(DEFAULT_CHAT_TEMPLATE)
    }
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            bos_token: "<s>".to_owned(),
            eos_token: "</s>".to_owned(),
        }
    }

    /// Sets the `bos_token` / `eos_token` variables templates may use.
    pub fn with_special_tokens(
        mut self,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Self {
        self.bos_token = bos_token.into();
        self.eos_token = eos_token.into();
        self
    }

    /// The template from the first of `chat_template.json`, `chat_template.jinja`,
    /// `processor_config.json`, `tokenizer_config.json` in `dir` that has one; `None` if none does.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        Self::from_model_files(&ModelFiles::dir(dir.as_ref()))
    }

    /// [`from_model_dir`](Self::from_model_dir) for files on disk or in memory.
    pub fn from_model_files(model: &ModelFiles) -> Result<Option<Self>> {
        #[derive(Deserialize)]
        struct WithTemplate {
            #[serde(default)]
            chat_template: Option<TemplateField>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum TemplateField {
            One(String),
            /// `tokenizer_config.json` may hold `[{"name": "default", "template": "..."}, ...]`.
            Named(Vec<NamedTemplate>),
        }
        #[derive(Deserialize)]
        struct NamedTemplate {
            name: String,
            template: String,
        }
        let pick = |field: Option<TemplateField>| match field? {
            TemplateField::One(source) => Some(source),
            TemplateField::Named(named) => {
                let default = named.iter().position(|t| t.name == "default").unwrap_or(0);
                named.into_iter().nth(default).map(|t| t.template)
            }
        };
        for name in [
            "chat_template.json",
            "chat_template.jinja",
            "processor_config.json",
            "tokenizer_config.json",
        ] {
            let source = if name.ends_with(".jinja") {
                read_optional_text(model, name)?
            } else {
                read_optional_json::<WithTemplate>(model, name)?.and_then(|f| pick(f.chat_template))
            };
            if let Some(source) = source {
                debug!(file = %model.path(name).display(), "chat template");
                return Ok(Some(Self::new(source)));
            }
        }
        Ok(None)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the assistant's cue
    /// (`Assistant:` for Idefics2).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let env = environment();
        let template = env
            .template_from_str(&self.source)
            .map_err(|source| ProcessorError::ChatTemplate { source })?;
        template
            .render(minijinja::context! {
                messages => Value::from_serialize(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|source| ProcessorError::ChatTemplate { source })
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        },
    );
    // Python's `json.dumps(ensure_ascii=False)`: no HTML escaping, unlike minijinja's `tojson`.
    env.add_filter(
        "tojson",
        |value: Value| -> std::result::Result<String, JinjaError> {
            serde_json::to_string(&value)
                .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))
        },
    );
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_renders_idefics2_format() {
        let messages = [
            ChatMessage::new(
                "user",
                vec![ContentPart::Image, ContentPart::text("What is this?")],
            ),
            ChatMessage::new("assistant", vec![ContentPart::text("A cat.")]),
        ];
        let text = ChatTemplate::default()
            .render(&messages, true)
            .expect("render");
        assert_eq!(
            text,
            "User:<image>What is this?<end_of_utterance>\nAssistant: A cat.<end_of_utterance>\nAssistant:"
        );
    }

    #[test]
    fn messages_parse_from_hf_json() {
        let json =
            r#"[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]"#;
        let messages: Vec<ChatMessage> = serde_json::from_str(json).expect("parse");
        assert_eq!(messages[0].image_count(), 1);
        assert_eq!(messages[0].content[1], ContentPart::text("hi"));
    }

    #[test]
    fn raise_exception_is_an_error() {
        let template = ChatTemplate::new("{{ raise_exception('no system role') }}");
        assert!(matches!(
            template.render(&[], false),
            Err(ProcessorError::ChatTemplate { .. })
        ));
    }
}
