//! A request's output path: generated tokens become text released to the client whole
//! characters at a time, with stop texts matched across token boundaries and never sent, and
//! log-probabilities read from the logits.
//!
//! Per request and independent of every other; it knows nothing of batches or the cache.

use torchless_tokenizer::TextStream;

use crate::request::Logprobs;

/// Text released so far, and what is held back.
#[derive(Debug, Default)]
pub struct StopFilter {
    stream: TextStream,
    stops: Vec<String>,
    /// Decoded text not yet released (it might be the start of a stop text).
    held: String,
}

/// What adding a token gives.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    pub text: String,
    /// A stop text was found (the text before it was released; nothing after).
    pub stopped: bool,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> StopFilter {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..StopFilter::default()
        }
    }

    /// Adds a token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Released {
        let text = self.stream.push(bytes);
        self.held.push_str(&text);
        // The earliest stop text anywhere in what is held.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = found {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Released {
                text,
                stopped: true,
            };
        }
        // Hold back the longest tail that begins some stop text.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_tail_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Released {
            text,
            stopped: false,
        }
    }

    /// The generation ended without a stop text: everything held goes out.
    pub fn finish(&mut self) -> String {
        let rest = self.stream.finish();
        self.held.push_str(&rest);
        std::mem::take(&mut self.held)
    }
}

/// Bytes of the longest suffix of `text` (on a character boundary) that is a proper prefix
/// of `stop`.
fn longest_tail_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

/// The log-probability of `token` under `logits` (a log-softmax in f64) and the `top` most
/// likely tokens (ties by lower id).
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> Logprobs {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| ((l - max) as f64).exp())
        .sum();
    let lse = max as f64 + sum.ln();
    let lp = |i: usize| (logits.get(i).copied().unwrap_or(f32::NEG_INFINITY) as f64 - lse) as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() {
                continue;
            }
            if best.len() == top && l <= logits[best[top - 1].0 as usize] {
                continue;
            }
            let at = best
                .iter()
                .position(|&(j, _)| logits[j as usize] < l)
                .unwrap_or(best.len());
            best.insert(at, (i as u32, 0.0));
            best.truncate(top);
        }
        for b in &mut best {
            b.1 = lp(b.0 as usize);
        }
    }
    Logprobs {
        token,
        logprob: lp(token as usize),
        top: best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let r = f.push(p.as_bytes());
            out.push(r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push(f.finish());
        (out, false)
    }

    #[test]
    fn stop_texts_are_found_across_tokens_and_never_sent() {
        let (out, stopped) = run(&["\n\nUser:"], &["Hi", " there", "\n", "\nUs", "er:", " x"]);
        assert!(stopped);
        assert_eq!(out, vec!["Hi", " there", "", "", ""]);
        // A false start is released once it cannot be a stop text any more.
        let (out, stopped) = run(&["END"], &["a E", "N", "x", "E"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a ", "", "ENx", "", "E"]);
        // The earliest of several.
        let (out, _) = run(&["bb", "ab"], &["xabb"]);
        assert_eq!(out, vec!["x"]);
    }

    #[test]
    fn incomplete_characters_wait_for_their_last_byte() {
        let mut f = StopFilter::new(&[]);
        let e = "é".as_bytes();
        assert_eq!(f.push(&e[..1]).text, "");
        assert_eq!(f.push(&e[1..]).text, "é");
    }

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_first() {
        let l = [0.0f32, 2.0, 1.0, 2.0];
        let p = logprobs(&l, 2, 3);
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((p.logprob as f64 - (1.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = p.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert!((p.top[0].1 as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert!(logprobs(&l, 0, 0).top.is_empty());
    }
}
