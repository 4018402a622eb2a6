//! Prompt lookup: drafts copied from the context. The last n tokens (n from `max_ngram` down
//! to 1) are looked for earlier in the text; the tokens that followed their latest earlier
//! occurrence are the draft. Free to draft, and right often where output repeats its input:
//! edits, code, answers quoting a document.

use crate::error::ModelError;
use crate::session::Session;

use super::{Draft, Proposer};

pub struct PromptLookup {
    max_ngram: usize,
    context: Vec<u32>,
}

impl PromptLookup {
    /// Matches n-grams of up to `max_ngram` tokens (at least 1).
    pub fn new(max_ngram: usize) -> PromptLookup {
        PromptLookup {
            max_ngram: max_ngram.max(1),
            context: Vec::new(),
        }
    }

    /// The draft for `context`: up to `max` tokens that followed the latest earlier occurrence
    /// of its longest matching suffix.
    pub fn find(&self, context: &[u32], max: usize, out: &mut Draft) {
        let len = context.len();
        for n in (1..=self.max_ngram.min(len.saturating_sub(1))).rev() {
            let suffix = &context[len - n..];
            // The latest earlier start (it may overlap the suffix; a token always follows).
            let found = (0..len - n).rev().find(|&s| &context[s..s + n] == suffix);
            if let Some(s) = found {
                let from = s + n;
                for &t in context[from..].iter().take(max) {
                    out.push(t);
                }
                return;
            }
        }
    }
}

impl Proposer for PromptLookup {
    fn name(&self) -> &'static str {
        "lookup"
    }

    fn propose(
        &mut self,
        target: &mut Session,
        pending: u32,
        max: usize,
        draft: &mut Draft,
    ) -> Result<(), ModelError> {
        let mut context = std::mem::take(&mut self.context);
        context.clear();
        context.extend_from_slice(target.history());
        context.push(pending);
        self.find(&context, max, draft);
        self.context = context;
        Ok(())
    }
}
