//! DRY ("don't repeat yourself"): lowers the logit of every token that would extend a
//! sequence already seen. If the last `n` tokens also occur earlier followed by token t, and
//! `n >= allowed`, t loses `multiplier · base^(n − allowed)`. Matching stops at sequence
//! breakers (tokens whose text holds one of the breaker strings, such as a newline), so
//! repeated structure like line starts is not punished. Match lengths come from one
//! Z-function pass over the reversed history (linear in the window).

use super::stages::{Candidates, Stage};

pub struct Dry {
    multiplier: f32,
    base: f32,
    allowed: usize,
    /// Tokens looked at (0: every token accepted).
    last_n: usize,
    /// `breaker[t]`: token t ends any match.
    breaker: Vec<bool>,
    history: Vec<u32>,
    z: Vec<usize>,
    rev: Vec<u32>,
    penalties: Vec<(u32, usize)>,
}

impl Dry {
    pub fn new(
        multiplier: f32,
        base: f32,
        allowed: usize,
        last_n: usize,
        breaker: Vec<bool>,
    ) -> Dry {
        Dry {
            multiplier,
            base,
            allowed: allowed.max(1),
            last_n,
            breaker,
            history: Vec::new(),
            z: Vec::new(),
            rev: Vec::new(),
            penalties: Vec::new(),
        }
    }

    /// (token, longest repeated sequence it would extend) for the history as it stands.
    fn matches(&mut self) -> &[(u32, usize)] {
        self.penalties.clear();
        let h = match self.last_n {
            0 => &self.history[..],
            n => &self.history[self.history.len().saturating_sub(n)..],
        };
        let is_breaker = |t: u32| self.breaker.get(t as usize).copied().unwrap_or(false);
        // The current suffix may not reach back past a breaker.
        let tail = h.iter().rev().take_while(|&&t| !is_breaker(t)).count();
        if tail == 0 {
            return &self.penalties;
        }
        self.rev.clear();
        self.rev.extend(h.iter().rev());
        z_function(&self.rev, &mut self.z);
        let len = h.len();
        // rev[k..] starts at the token before h[len − k]: z[k] is how far the text before
        // position len − k matches the current end.
        for k in 1..len {
            let n = self.z[k].min(tail);
            if n >= self.allowed {
                let next = h[len - k];
                match self.penalties.iter_mut().find(|p| p.0 == next) {
                    Some(p) => p.1 = p.1.max(n),
                    None => self.penalties.push((next, n)),
                }
            }
        }
        &self.penalties
    }
}

/// `z[k]`: the length of the longest common prefix of `s` and `s[k..]` (`z[0] = len`).
fn z_function(s: &[u32], z: &mut Vec<usize>) {
    let n = s.len();
    z.clear();
    z.resize(n, 0);
    if n == 0 {
        return;
    }
    z[0] = n;
    let (mut l, mut r) = (0, 0);
    for i in 1..n {
        let mut k = if i < r { z[i - l].min(r - i) } else { 0 };
        while i + k < n && s[k] == s[i + k] {
            k += 1;
        }
        z[i] = k;
        if i + k > r {
            (l, r) = (i, i + k);
        }
    }
}

impl Stage for Dry {
    fn name(&self) -> &'static str {
        "dry"
    }

    fn apply(&mut self, c: &mut Candidates) {
        if self.multiplier <= 0.0 {
            return;
        }
        let (m, base, allowed) = (self.multiplier, self.base, self.allowed);
        let found = self.matches().to_vec();
        for (t, n) in found {
            let penalty = m * base.powi((n - allowed) as i32);
            c.adjust_one(t, |l| l - penalty);
        }
    }

    fn accept(&mut self, token: u32) {
        self.history.push(token);
        // Keep the window bounded: twice it, then drop the older half at once.
        if self.last_n > 0 && self.history.len() >= 2 * self.last_n {
            self.history.drain(..self.history.len() - self.last_n);
        }
    }

    fn reset(&mut self) {
        self.history.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_function_matches_a_plain_count() {
        let s = [1u32, 2, 1, 2, 1, 3, 1, 2];
        let mut z = Vec::new();
        z_function(&s, &mut z);
        for k in 0..s.len() {
            let plain = s.iter().zip(&s[k..]).take_while(|(a, b)| a == b).count();
            assert_eq!(z[k], plain, "{k}");
        }
    }

    #[test]
    fn tokens_that_extend_a_repeat_lose_by_its_length() {
        // History 5 6 7 8 | 5 6 7: the next token 8 would repeat a 3-token sequence.
        let mut d = Dry::new(0.8, 1.75, 2, 0, vec![false; 16]);
        for t in [5, 6, 7, 8, 9, 5, 6, 7] {
            d.accept(t);
        }
        assert_eq!(d.matches(), &[(8, 3)]);
        let mut c = Candidates::default();
        c.fill(&[0.0; 16]);
        d.apply(&mut c);
        let want = -0.8 * 1.75f32;
        assert_eq!(c.items[8].0, want);
        assert!(c.items.iter().filter(|x| x.1 != 8).all(|x| x.0 == 0.0));
        // A breaker inside the suffix stops the match.
        let mut breaker = vec![false; 16];
        breaker[6] = true;
        let mut d = Dry::new(0.8, 1.75, 2, 0, breaker);
        for t in [5, 6, 7, 8, 9, 5, 6, 7] {
            d.accept(t);
        }
        assert!(d.matches().is_empty());
    }
}
