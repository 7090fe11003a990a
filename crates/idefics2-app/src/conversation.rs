//! The chat so far: user turns (text and the images placed with it) and assistant answers, and
//! how it becomes the model's chat messages.

use idefics2::processor::{ChatMessage, ContentPart, DynamicImage};

use crate::attachment::Attachment;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    /// Shown and sent before the text, in this order.
    pub images: Vec<Attachment>,
}

#[derive(Default)]
pub struct Conversation {
    pub turns: Vec<Turn>,
}

impl Conversation {
    /// The chat messages and every image in placeholder order.
    pub fn to_model(&self) -> (Vec<ChatMessage>, Vec<DynamicImage>) {
        let mut messages = Vec::with_capacity(self.turns.len());
        let mut images = Vec::new();
        for turn in &self.turns {
            let role = match turn.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let mut content: Vec<ContentPart> =
                turn.images.iter().map(|_| ContentPart::Image).collect();
            images.extend(turn.images.iter().map(|a| (*a.image).clone()));
            if !turn.text.is_empty() || content.is_empty() {
                content.push(ContentPart::text(turn.text.clone()));
            }
            messages.push(ChatMessage::new(role, content));
        }
        (messages, images)
    }

    /// Drops the last answer (for Regenerate); true when the chat then ends with a user turn.
    pub fn drop_last_answer(&mut self) -> bool {
        if self.turns.last().is_some_and(|t| t.role == Role::Assistant) {
            self.turns.pop();
        }
        self.turns.last().is_some_and(|t| t.role == Role::User)
    }

    pub fn image_count(&self) -> usize {
        self.turns.iter().map(|t| t.images.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_text_only_and_regenerate_keeps_the_question() {
        let mut chat = Conversation::default();
        chat.turns.push(Turn {
            role: Role::User,
            text: "What color is the shape?".into(),
            images: Vec::new(),
        });
        chat.turns.push(Turn {
            role: Role::Assistant,
            text: "red".into(),
            images: Vec::new(),
        });
        let (messages, images) = chat.to_model();
        assert_eq!(messages.len(), 2);
        assert!(images.is_empty());
        assert!(chat.drop_last_answer());
        assert_eq!(chat.turns.len(), 1);
    }
}
