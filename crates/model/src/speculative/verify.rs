//! The acceptance rule of speculative sampling (Leviathan et al., Chen et al.): a drafted
//! token `d` drawn from the proposer's distribution q is kept with probability
//! min(1, p(d) / q(d)), p being the target's distribution; on rejection the token is drawn from
//! the normalized max(0, p − q). The kept tokens are then distributed exactly as the target's
//! own samples. Distributions are sparse (token, probability) lists; a proposer that copies
//! tokens (prompt lookup) or drafts greedily proposes a point mass (q(d) = 1).
//!
//! Nothing here runs a model: it takes distributions and a generator and returns tokens.

use crate::sampler::Rng;

/// The probability `dist` gives `token` (0 where it is absent).
pub fn prob(dist: &[(u32, f64)], token: u32) -> f64 {
    dist.iter().find(|x| x.0 == token).map_or(0.0, |x| x.1)
}

/// Draws a token in proportion to the weights of `dist` (which need not sum to 1).
pub fn draw(rng: &mut Rng, dist: &[(u32, f64)]) -> u32 {
    let sum: f64 = dist.iter().map(|x| x.1.max(0.0)).sum();
    let mut r = rng.next_f64() * sum;
    for &(t, w) in dist {
        if w <= 0.0 {
            continue;
        }
        r -= w;
        if r < 0.0 {
            return t;
        }
    }
    // Rounding left a sliver: the last token with any weight.
    (dist.iter().rev())
        .find(|x| x.1 > 0.0)
        .or(dist.first())
        .map_or(0, |x| x.0)
}

/// The outcome of checking one drafted token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The draft stands.
    Accepted(u32),
    /// The draft is replaced by this token, and the round ends.
    Replaced(u32),
}

/// The random draws and working memory of the acceptance rule.
pub struct Verifier {
    pub rng: Rng,
    residual: Vec<(u32, f64)>,
    /// q by token id while a residual is formed (all zero otherwise).
    dense_q: Vec<f64>,
}

impl Verifier {
    pub fn new(seed: u64) -> Verifier {
        Verifier {
            rng: Rng::new(seed),
            residual: Vec::new(),
            dense_q: Vec::new(),
        }
    }

    /// Checks `draft`, proposed from `q` (`None`: a point mass on the draft), against the
    /// target's distribution `p`.
    pub fn check(&mut self, p: &[(u32, f64)], draft: u32, q: Option<&[(u32, f64)]>) -> Verdict {
        let qd = q.map_or(1.0, |q| prob(q, draft));
        // Keep with probability min(1, p/q): u < p/q, i.e. u·q < p (q(d) > 0: d came from q).
        if qd > 0.0 && self.rng.next_f64() * qd < prob(p, draft) {
            return Verdict::Accepted(draft);
        }
        let point = [(draft, 1.0)];
        let q = q.unwrap_or(&point);
        let top = q
            .iter()
            .chain(p)
            .map(|x| x.0 as usize + 1)
            .max()
            .unwrap_or(0);
        if self.dense_q.len() < top {
            self.dense_q.resize(top, 0.0);
        }
        for &(t, w) in q {
            self.dense_q[t as usize] += w;
        }
        self.residual.clear();
        let dense = &self.dense_q;
        (self.residual).extend(
            p.iter()
                .map(|&(t, pt)| (t, (pt - dense[t as usize]).max(0.0))),
        );
        for &(t, _) in q {
            self.dense_q[t as usize] = 0.0;
        }
        if self.residual.iter().all(|x| x.1 <= 0.0) {
            // p = q where p lives: the residual is empty, and p itself is the right draw.
            return Verdict::Replaced(draw(&mut self.rng, p));
        }
        Verdict::Replaced(draw(&mut self.rng, &self.residual))
    }
}
