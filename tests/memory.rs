//! Memory behaviour of generation on the real default model: no heap allocation per generated
//! token (a counting global allocator watches every thread), and peak resident memory within
//! the model file + KV cache + 64 MiB (weights stay memory-mapped, not copied).
//!
//! One test in its own binary, so no other test's memory counts.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use torchless_model::{
    generate, GenerateOptions, LoadOptions, Model, SamplerConfig, Session, SessionOptions,
};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn generation_allocates_nothing_per_token_and_stays_within_memory_bounds() {
    let path = common::model("smollm2");
    let file_size = std::fs::metadata(&path).unwrap().len();
    let model = Model::load(
        &path,
        &LoadOptions {
            threads: 2,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let tok = model.tokenizer().unwrap();
    let prompt = tok
        .encode(
            "Once upon a time, in a quiet village by the sea,",
            true,
            false,
        )
        .unwrap();
    for sampler in [
        SamplerConfig::greedy(),
        SamplerConfig {
            seed: 3,
            ..SamplerConfig::default()
        },
    ] {
        let mut session = Session::new(
            &model,
            SessionOptions {
                n_ctx: 512,
                ..SessionOptions::default()
            },
        );
        let opts = GenerateOptions {
            max_tokens: 48,
            sampler: sampler.clone(),
            stop_at_eog: false,
            record_logits: false,
        };
        let mut counts = Vec::with_capacity(64);
        generate(
            &mut session,
            &prompt,
            &opts,
            |_| {},
            |_| {
                counts.push(ALLOCS.load(Ordering::Relaxed));
                true
            },
        )
        .unwrap();
        // From the second generated token on (the first pass sizes lazily grown buffers),
        // nothing may allocate.
        let steady = &counts[2..];
        assert_eq!(
            steady.first(),
            steady.last(),
            "{} allocations over {} generated tokens ({:?})",
            steady.last().unwrap() - steady.first().unwrap(),
            steady.len(),
            sampler
        );
    }
    let kv = Session::new(
        &model,
        SessionOptions {
            n_ctx: 512,
            ..SessionOptions::default()
        },
    )
    .kv_bytes() as u64;
    let peak = peak_rss();
    let limit = file_size + kv + (64 << 20);
    eprintln!(
        "peak RSS {:.1} MiB; model file {:.1} MiB + KV cache {:.1} MiB + 64 MiB = {:.1} MiB",
        peak as f64 / 1048576.0,
        file_size as f64 / 1048576.0,
        kv as f64 / 1048576.0,
        limit as f64 / 1048576.0
    );
    assert!(peak <= limit, "peak RSS {peak} exceeds {limit}");
    // Every matrix is either read from the map or was repacked into the interleaved layout
    // (whose mapped original was released: that is what keeps the peak above in bounds).
    assert!(
        model
            .weights()
            .matrices()
            .iter()
            .all(|t| t.is_mapped() || t.layout() == torchless_kernels::Layout::Rows8),
        "weights must stay memory-mapped unless repacked"
    );
    drop(model);
    let plain = Model::load(
        &path,
        &LoadOptions {
            threads: 2,
            no_repack: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert!(
        plain.weights().matrices().iter().all(|t| t.is_mapped()),
        "with no_repack every weight stays memory-mapped"
    );
}
