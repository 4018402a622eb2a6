//! Splits a streamed answer into the model's reasoning (between `<think>` and `</think>`, the
//! markers of DeepSeek-R1, Qwen3, SmolLM3 and their kin) and its reply, as the text arrives in
//! pieces that may cut a marker in two. It decides what is what; showing or hiding is the
//! caller's.

/// What a piece of an answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Thinking,
    Answer,
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// The splitter of one answer.
#[derive(Debug, Default)]
pub struct ThinkSplitter {
    thinking: bool,
    /// The reply has not begun since the reasoning closed (its leading newlines are dropped).
    after_close: bool,
    /// Text held back: it may be the start of a marker.
    pending: String,
}

impl ThinkSplitter {
    /// A splitter for an answer that begins inside the reasoning (the generation prompt
    /// opened it) or not.
    pub fn new(starts_thinking: bool) -> ThinkSplitter {
        ThinkSplitter {
            thinking: starts_thinking,
            ..ThinkSplitter::default()
        }
    }

    /// Whether the text so far ends inside the reasoning.
    pub fn is_thinking(&self) -> bool {
        self.thinking
    }

    /// Takes the next piece of the answer; `out` receives what is settled, in order.
    pub fn push(&mut self, text: &str, out: &mut dyn FnMut(Part, &str)) {
        self.pending.push_str(text);
        loop {
            let marker = if self.thinking { CLOSE } else { OPEN };
            if let Some(i) = self.pending.find(marker) {
                let before: String = self.pending.drain(..i + marker.len()).collect();
                self.emit(&before[..i], out);
                self.thinking = !self.thinking;
                self.after_close = !self.thinking;
                continue;
            }
            // Keep back the longest end of the text that could begin the marker.
            let keep = (1..marker.len().min(self.pending.len() + 1))
                .rev()
                .find(|&n| self.pending.ends_with(&marker[..n]))
                .unwrap_or(0);
            let settled: String = self.pending.drain(..self.pending.len() - keep).collect();
            self.emit(&settled, out);
            return;
        }
    }

    /// Ends the answer: whatever was held back is settled.
    pub fn finish(&mut self, out: &mut dyn FnMut(Part, &str)) {
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest, out);
    }

    fn emit(&mut self, text: &str, out: &mut dyn FnMut(Part, &str)) {
        let text = if self.after_close && !self.thinking {
            let t = text.trim_start_matches(['\n', '\r']);
            if !t.is_empty() {
                self.after_close = false;
            }
            t
        } else {
            text
        };
        if !text.is_empty() {
            let part = if self.thinking {
                Part::Thinking
            } else {
                Part::Answer
            };
            out(part, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&str], starts_thinking: bool) -> Vec<(Part, String)> {
        let mut s = ThinkSplitter::new(starts_thinking);
        let mut got: Vec<(Part, String)> = Vec::new();
        let mut out = |p: Part, t: &str| match got.last_mut() {
            Some((q, text)) if *q == p => text.push_str(t),
            _ => got.push((p, t.to_string())),
        };
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        got
    }

    #[test]
    fn markers_cut_anywhere_still_split_the_answer() {
        let whole = "<think>\nlet me see</think>\n\nThe answer is <b>4</b>.";
        let want = vec![
            (Part::Thinking, "\nlet me see".to_string()),
            (Part::Answer, "The answer is <b>4</b>.".to_string()),
        ];
        // Every way of cutting the text in two, and one character at a time.
        for cut in 0..=whole.len() {
            assert_eq!(
                split(&[&whole[..cut], &whole[cut..]], false),
                want,
                "cut at {cut}"
            );
        }
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split(&pieces, false), want);
    }

    #[test]
    fn an_answer_may_start_inside_the_reasoning_or_have_none() {
        assert_eq!(
            split(&["hm", "m</th", "ink>ok"], true),
            vec![(Part::Thinking, "hmm".into()), (Part::Answer, "ok".into())]
        );
        assert_eq!(
            split(&["a < b", " <thin"], false),
            vec![(Part::Answer, "a < b <thin".into())]
        );
        // Reasoning cut off by the token limit stays reasoning.
        assert_eq!(
            split(&["<think>still going"], false),
            vec![(Part::Thinking, "still going".into())]
        );
    }
}
