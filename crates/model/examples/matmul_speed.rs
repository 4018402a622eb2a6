//! Times the weight matrix products of one decode step, per weight type (a profiling aid).
//! Usage: cargo run --release -p torchless-model --example matmul_speed -- MODEL.gguf [threads]

use std::time::Instant;

use torchless_kernels::{matmul, Activations, Kernels, ThreadPool};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else { return };
    let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    let tokens: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let mode = if std::env::var_os("READ").is_some() {
        torchless_gguf::LoadMode::Read
    } else {
        torchless_gguf::LoadMode::Mmap
    };
    let model = torchless_model::Model::load(
        path,
        &torchless_model::LoadOptions {
            mode,
            ..Default::default()
        },
    )
    .expect("load");
    let k = kernels_from_env();
    let pool = ThreadPool::new(threads);
    let mats = model.weights().matrices();
    let bytes: usize = mats.iter().map(|m| m.bytes().len()).sum();
    let mut acts = Activations::new();
    let mut out = vec![0.0f32; 200_000 * tokens];
    for rep in 0..4 {
        let t = Instant::now();
        for m in &mats {
            encode_constant(&mut acts, &pool, &k, m, tokens);
            matmul(
                &pool,
                &k,
                torchless_kernels::Numerics::LlamaCpp,
                m,
                &acts,
                &mut out[..m.rows() * tokens],
            )
            .unwrap();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "all matrices, rep {rep}: {:.2} ms, {:.2} GB/s, {:.1} tokens/s",
            s * 1e3,
            bytes as f64 / s / 1e9,
            tokens as f64 / s
        );
    }
    // One small matrix, over and over (in cache): the kernels' compute speed.
    let first = model.weights().layers[0].matrices();
    // The layer's matrices: wq, wk, wv, wo, then the feed-forward's (gate first).
    for m in [first[4], &model.weights().output] {
        encode_constant(&mut acts, &pool, &k, m, tokens);
        let reps = (200_000_000 / m.bytes().len()).max(1);
        let t = Instant::now();
        for _ in 0..reps {
            matmul(
                &pool,
                &k,
                torchless_kernels::Numerics::LlamaCpp,
                m,
                &acts,
                &mut out[..m.rows() * tokens],
            )
            .unwrap();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{:?} x{reps}: {:.2} GB/s of weights",
            m,
            (m.bytes().len() * reps) as f64 / s / 1e9
        );
    }
}

/// Encodes `tokens` rows of 0.5 for `m`'s activation format.
fn encode_constant(
    acts: &mut Activations,
    pool: &ThreadPool,
    k: &Kernels,
    m: &torchless_kernels::Tensor,
    tokens: usize,
) {
    let x = vec![0.5f32; m.cols() * tokens];
    let ty = m.ty().traits().vec_dot_type;
    acts.encode(pool, k, ty, &x, tokens, m.cols()).unwrap();
}

/// The kernels `TORCHLESS_ISA` names, else the best for this CPU.
fn kernels_from_env() -> Kernels {
    match std::env::var("TORCHLESS_ISA") {
        Ok(v) if !v.trim().is_empty() => {
            Kernels::new(torchless_kernels::Isa::parse(&v).expect("TORCHLESS_ISA")).expect("ISA")
        }
        _ => Kernels::best(),
    }
}
