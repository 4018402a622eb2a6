//! What a conversation holds: the system prompt, the messages in order (user and assistant
//! alternating, the assistant's text as generated, reasoning included: templates that drop it
//! from later turns do so themselves), and the settings that shape answers. Saved and loaded
//! as one JSON document. It renders nothing and runs nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};
use torchless_tokenizer::Message;

/// What shapes the answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub typical_p: f32,
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over.
    pub repeat_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// DRY's multiplier (0: off).
    pub dry_multiplier: f32,
    /// (token, bias) added to logits.
    pub logit_bias: Vec<(u32, f32)>,
    /// Most tokens of one answer.
    pub max_tokens: usize,
    /// Seed of the first answer (each later answer takes the next); `None`: from the clock.
    pub seed: Option<u64>,
    /// Show the reasoning of thinking models (dimmed) or hide it.
    pub show_thinking: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            dry_multiplier: 0.0,
            logit_bias: Vec::new(),
            max_tokens: 1024,
            seed: None,
            show_thinking: true,
        }
    }
}

impl Settings {
    /// The sampler these settings describe, drawing from `seed`.
    pub fn sampler(&self, seed: u64) -> torchless_model::SamplerConfig {
        torchless_model::SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical_p,
            repeat_penalty: self.repeat_penalty,
            penalty_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            dry_multiplier: self.dry_multiplier,
            logit_bias: self.logit_bias.clone(),
            seed,
            ..torchless_model::SamplerConfig::default()
        }
    }
}

/// One message as a conversation keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// A conversation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Conversation {
    pub system: Option<String>,
    pub messages: Vec<Turn>,
    pub settings: Settings,
}

/// The saved form: the conversation, and the model and template it was held with.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: String,
    model: Option<String>,
    template: Option<String>,
    #[serde(flatten)]
    conversation: Conversation,
}

const FORMAT: &str = "torchless-chat/1";

/// Why a conversation could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("cannot {what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("'{path}' is not a saved conversation: {reason}")]
    Invalid { path: String, reason: String },
}

impl Conversation {
    /// The messages a template renders: the system prompt first, where there is one.
    pub fn to_messages(&self) -> Vec<Message> {
        let system = self
            .system
            .iter()
            .map(|s| Message::new("system", s.as_str()));
        let rest =
            (self.messages.iter()).map(|t| Message::new(t.role.as_str(), t.content.as_str()));
        system.chain(rest).collect()
    }

    pub fn push(&mut self, role: &str, content: &str) {
        self.messages.push(Turn {
            role: role.into(),
            content: content.into(),
        });
    }

    /// Messages sent by the user.
    pub fn exchanges(&self) -> usize {
        self.messages.iter().filter(|t| t.role == "user").count()
    }

    /// Drops the oldest exchange (the first user message and the answers after it, up to the
    /// next user message); false when nothing but the last user message is left.
    pub fn drop_oldest(&mut self) -> bool {
        let Some(first) = self.messages.iter().position(|t| t.role == "user") else {
            return false;
        };
        let next = (self.messages[first + 1..].iter()).position(|t| t.role == "user");
        match next {
            Some(n) => {
                self.messages.drain(..first + 1 + n);
                true
            }
            None => false,
        }
    }

    /// Drops the last exchange (the last user message and everything after it); false when
    /// there is none.
    pub fn undo(&mut self) -> bool {
        match self.messages.iter().rposition(|t| t.role == "user") {
            Some(i) => {
                self.messages.truncate(i);
                true
            }
            None => false,
        }
    }

    /// Writes the conversation, with the model and template it is held with, as JSON.
    pub fn save(
        &self,
        path: &Path,
        model: Option<&str>,
        template: Option<&str>,
    ) -> Result<(), SaveError> {
        let saved = Saved {
            format: FORMAT.into(),
            model: model.map(str::to_string),
            template: template.map(str::to_string),
            conversation: self.clone(),
        };
        let text = serde_json::to_string_pretty(&saved).map_err(|e| SaveError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| SaveError::Io {
            what: "write",
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a saved conversation: it, and the model and template it was saved with.
    pub fn load(path: &Path) -> Result<(Conversation, Option<String>, Option<String>), SaveError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SaveError::Io {
            what: "read",
            path: p.clone(),
            source,
        })?;
        let invalid = |reason: String| SaveError::Invalid {
            path: p.clone(),
            reason,
        };
        let saved: Saved = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if saved.format != FORMAT {
            return Err(invalid(format!(
                "format '{}', expected '{FORMAT}'",
                saved.format
            )));
        }
        let roles = ["user", "assistant"];
        if let Some(t) =
            (saved.conversation.messages.iter()).find(|t| !roles.contains(&t.role.as_str()))
        {
            return Err(invalid(format!("a message has role '{}'", t.role)));
        }
        Ok((saved.conversation, saved.model, saved.template))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(turns: &[(&str, &str)]) -> Conversation {
        let mut c = Conversation {
            system: Some("be brief".into()),
            ..Conversation::default()
        };
        for (r, t) in turns {
            c.push(r, t);
        }
        c
    }

    #[test]
    fn exchanges_drop_from_the_front_and_undo_from_the_back() {
        let mut c = conv(&[
            ("user", "a"),
            ("assistant", "A"),
            ("user", "b"),
            ("assistant", "B"),
            ("user", "c"),
        ]);
        assert_eq!(c.exchanges(), 3);
        assert!(c.drop_oldest());
        assert_eq!(c.messages[0].content, "b");
        assert_eq!(c.to_messages()[0], Message::new("system", "be brief"));
        assert!(c.drop_oldest());
        assert_eq!(c.messages.len(), 1);
        assert!(!c.drop_oldest(), "the last user message stays");
        let mut c = conv(&[
            ("user", "a"),
            ("assistant", "A"),
            ("user", "b"),
            ("assistant", "B"),
        ]);
        assert!(c.undo());
        assert_eq!(c.messages.len(), 2);
        assert!(c.undo());
        assert!(!c.undo());
        assert_eq!(c.system.as_deref(), Some("be brief"));
    }

    #[test]
    fn a_saved_conversation_loads_back_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("torchless-chat-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.json");
        let mut c = conv(&[("user", "a"), ("assistant", "A")]);
        c.settings.temperature = 0.0;
        c.settings.seed = Some(7);
        c.save(&path, Some("smollm2"), Some("chatml")).unwrap();
        let (back, model, template) = Conversation::load(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            (model.as_deref(), template.as_deref()),
            (Some("smollm2"), Some("chatml"))
        );
        std::fs::write(&path, r#"{"format": "other"}"#).unwrap();
        let e = Conversation::load(&path).unwrap_err().to_string();
        assert!(e.contains("format 'other'"), "{e}");
        std::fs::write(
            &path,
            r#"{"format": "torchless-chat/1", "messages": [{"role": "tool", "content": ""}]}"#,
        )
        .unwrap();
        let e = Conversation::load(&path).unwrap_err().to_string();
        assert!(e.contains("role 'tool'"), "{e}");
        let e = Conversation::load(&dir.join("absent.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
