//! The engine's counters, gauges and latency histograms, shared between the engine thread
//! (which updates them) and whoever reports them, and their Prometheus text form.
//!
//! Lock-free (atomics); it measures nothing itself.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram in the Prometheus style (cumulative when rendered).
#[derive(Default, Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add((secs * 1e6).max(0.0) as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
    }
}

/// Everything the engine and the server count.
#[derive(Default, Debug)]
pub struct Metrics {
    pub requests_ok: AtomicU64,
    pub requests_client_error: AtomicU64,
    pub requests_server_error: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    /// Microseconds the engine spent in forward passes, and in drafting.
    pub step_us: AtomicU64,
    pub spec_draft_us: AtomicU64,
    /// Speculation: sequences' drafts verified, tokens drafted, drafted tokens kept, tokens
    /// emitted by verifications (kept ones, plus the one after them).
    pub spec_verifications: AtomicU64,
    pub spec_drafted: AtomicU64,
    pub spec_accepted: AtomicU64,
    pub spec_emitted: AtomicU64,
    /// Gauges, set by the engine every step.
    pub queue_depth: AtomicU64,
    pub running: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_free: AtomicU64,
    pub kv_blocks_cached: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
}

impl Metrics {
    /// The Prometheus text exposition of every figure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let g = |a: &AtomicU64| a.load(Relaxed);
        let _ = writeln!(
            out,
            "# HELP torchless_requests_total Requests by outcome.\n# TYPE torchless_requests_total counter"
        );
        for (status, v) in [
            ("ok", &self.requests_ok),
            ("client_error", &self.requests_client_error),
            ("server_error", &self.requests_server_error),
            ("rejected", &self.requests_rejected),
            ("cancelled", &self.requests_cancelled),
        ] {
            let _ = writeln!(
                out,
                "torchless_requests_total{{status=\"{status}\"}} {}",
                g(v)
            );
        }
        let plain = [
            (
                "torchless_prompt_tokens_total",
                "counter",
                "Prompt tokens of admitted requests.",
                &self.prompt_tokens,
            ),
            (
                "torchless_generated_tokens_total",
                "counter",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "torchless_prefix_cache_hit_tokens_total",
                "counter",
                "Prompt positions taken from the prefix cache instead of computed.",
                &self.prefix_hit_tokens,
            ),
            (
                "torchless_preemptions_total",
                "counter",
                "Sequences preempted (their blocks given back, recomputed later).",
                &self.preemptions,
            ),
            (
                "torchless_engine_steps_total",
                "counter",
                "Forward passes run.",
                &self.steps,
            ),
            (
                "torchless_engine_step_microseconds_total",
                "counter",
                "Time spent in forward passes.",
                &self.step_us,
            ),
            (
                "torchless_speculative_draft_microseconds_total",
                "counter",
                "Time spent drafting (its share of the forward passes' time is the draft share).",
                &self.spec_draft_us,
            ),
            (
                "torchless_speculative_verifications_total",
                "counter",
                "Drafts verified (one per sequence and step that drafted).",
                &self.spec_verifications,
            ),
            (
                "torchless_speculative_drafted_tokens_total",
                "counter",
                "Tokens drafted.",
                &self.spec_drafted,
            ),
            (
                "torchless_speculative_accepted_tokens_total",
                "counter",
                "Drafted tokens that stood (acceptance rate: over drafted).",
                &self.spec_accepted,
            ),
            (
                "torchless_speculative_emitted_tokens_total",
                "counter",
                "Tokens emitted by verifications (tokens per target pass: over verifications).",
                &self.spec_emitted,
            ),
            (
                "torchless_queue_depth",
                "gauge",
                "Requests waiting for admission.",
                &self.queue_depth,
            ),
            (
                "torchless_running_sequences",
                "gauge",
                "Sequences being prefilled or decoded.",
                &self.running,
            ),
            (
                "torchless_kv_blocks_used",
                "gauge",
                "KV cache blocks held by sequences.",
                &self.kv_blocks_used,
            ),
            (
                "torchless_kv_blocks_free",
                "gauge",
                "KV cache blocks free (including cached ones).",
                &self.kv_blocks_free,
            ),
            (
                "torchless_kv_blocks_cached",
                "gauge",
                "Free KV cache blocks the prefix cache still holds.",
                &self.kv_blocks_cached,
            ),
        ];
        for (name, kind, help, v) in plain {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                g(v)
            );
        }
        self.ttft.render(
            &mut out,
            "torchless_time_to_first_token_seconds",
            "From arrival to the first generated token.",
        );
        self.itl.render(
            &mut out,
            "torchless_inter_token_latency_seconds",
            "Between consecutive tokens of one request.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = Metrics::default();
        m.ttft.observe(0.003);
        m.ttft.observe(0.2);
        m.ttft.observe(60.0);
        m.generated_tokens.fetch_add(5, Relaxed);
        let text = m.render();
        assert!(text.contains("torchless_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("torchless_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("torchless_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("torchless_time_to_first_token_seconds_count 3\n"));
        assert!(text.contains("torchless_generated_tokens_total 5\n"));
        assert!(text.contains("torchless_requests_total{status=\"ok\"} 0\n"));
    }
}
