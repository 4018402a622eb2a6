//! Criterion micro-benchmarks of every kernel: dot products and matrix tiles per weight type
//! (one token and a 64-token batch), activation quantization, attention, softmax, norms.
//! `cargo bench -p torchless-kernels`; `TORCHLESS_ISA=scalar` benchmarks the reference path.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use torchless_kernels::attention::{
    attend_group, attend_head, softmax_with, GroupQuery, HeadScratch, PagedHead, Reduce,
};
use torchless_kernels::ops::{rms_norm, rope_cache, rope_heads, swiglu, RopeStyle};
use torchless_kernels::{matmul, Activations, GgmlType, Kernels, Storage, Tensor, ThreadPool};

const TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A matrix of `rows` × `cols` weights of `ty` with sane scales (random bytes elsewhere).
fn matrix(ty: GgmlType, rows: usize, cols: usize) -> Tensor {
    let bytes = ty.row_bytes(cols).unwrap() * rows;
    let mut b: Vec<u8> = pseudo(bytes, 7)
        .iter()
        .map(|v| (v * 100.0) as i8 as u8)
        .collect();
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        let mut t = Vec::new();
        let vals = pseudo(rows * cols, 9);
        for v in vals {
            match ty {
                GgmlType::F32 => t.extend_from_slice(&v.to_le_bytes()),
                GgmlType::F16 => t.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
                _ => t.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
            }
        }
        b = t;
    } else {
        let scale = f16::from_f32(0.01).to_bits().to_le_bytes();
        for blk in b.chunks_exact_mut(ty.block_bytes()) {
            // Every f16 field of every format is one of these offsets; overwriting quants with
            // a small scale is harmless for timing.
            for o in [0usize, 2] {
                blk[o..o + 2].copy_from_slice(&scale);
            }
            let n = blk.len();
            blk[n - 2..].copy_from_slice(&scale);
        }
    }
    Tensor::new(ty, &[cols, rows], Arc::new(Storage::from_bytes(&b)), 0).unwrap()
}

fn bench_matmul(c: &mut Criterion) {
    let k = kernels_from_env();
    let pool = ThreadPool::new(1);
    let (rows, cols) = (512, 1024);
    for tokens in [1usize, 64] {
        let mut g = c.benchmark_group(format!("matmul_{tokens}tok_{rows}x{cols}"));
        for ty in TYPES {
            let w = matrix(ty, rows, cols);
            let x = pseudo(tokens * cols, 3);
            let mut acts = Activations::new();
            acts.encode(&pool, &k, ty.traits().vec_dot_type, &x, tokens, cols)
                .unwrap();
            let mut out = vec![0.0f32; rows * tokens];
            g.throughput(Throughput::Bytes(w.bytes().len() as u64));
            g.bench_with_input(BenchmarkId::from_parameter(ty), &ty, |b, _| {
                b.iter(|| {
                    matmul(
                        &pool,
                        &k,
                        torchless_kernels::Numerics::LlamaCpp,
                        &w,
                        &acts,
                        &mut out,
                    )
                    .unwrap()
                })
            });
            if let Some(packed) = w.interleaved() {
                g.bench_with_input(BenchmarkId::new("rows8", ty), &ty, |b, _| {
                    b.iter(|| {
                        matmul(
                            &pool,
                            &k,
                            torchless_kernels::Numerics::LlamaCpp,
                            &packed,
                            &acts,
                            &mut out,
                        )
                        .unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

fn bench_dot(c: &mut Criterion) {
    let k = kernels_from_env();
    let n = 4096;
    let mut g = c.benchmark_group("vec_dot_4096");
    for ty in TYPES {
        let w = matrix(ty, 1, n);
        let x = pseudo(n, 5);
        let at = ty.traits().vec_dot_type;
        let mut a = vec![0u8; at.row_bytes(n).unwrap()];
        k.quantize(at).unwrap()(&x, &mut a);
        let dot = k.vec_dot(ty).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(ty), &ty, |b, _| {
            b.iter(|| dot(n, w.bytes(), &a))
        });
    }
    g.finish();
}

fn bench_quantize(c: &mut Criterion) {
    let k = kernels_from_env();
    let x = pseudo(4096, 11);
    let mut g = c.benchmark_group("quantize_4096");
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q8_K,
        GgmlType::F16,
    ] {
        let mut out = vec![0u8; ty.row_bytes(4096).unwrap()];
        let f = k.quantize(ty).unwrap();
        g.throughput(Throughput::Elements(4096));
        g.bench_with_input(BenchmarkId::from_parameter(ty), &ty, |b, _| {
            b.iter(|| f(&x, &mut out))
        });
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let k = kernels_from_env();
    let (hd, bs, n_kv) = (64usize, 16usize, 512usize);
    let blocks: Vec<u32> = (0..(n_kv / bs) as u32).collect();
    let stride = bs * hd;
    let keys: Vec<f16> = pseudo(blocks.len() * stride, 13)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let values: Vec<f16> = pseudo(blocks.len() * stride, 17)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let q = pseudo(hd, 19);
    let kv = PagedHead {
        keys: &keys,
        values: &values,
        blocks: &blocks,
        base: 0,
        block_stride: stride,
        block_size: bs,
        head_dim: hd,
    };
    let mut g = c.benchmark_group("attention_head_512ctx");
    for order in [Reduce::Vec, Reduce::Gemm] {
        let (mut sc, mut acc, mut qr) = (vec![0.0; n_kv + 8], vec![0.0; 32 * hd], vec![0.0; hd]);
        let mut out = vec![0.0f32; hd];
        g.bench_function(format!("{order:?}"), |b| {
            b.iter(|| {
                attend_head(
                    &k,
                    &q,
                    &kv,
                    n_kv,
                    0.125,
                    order,
                    HeadScratch {
                        scores: &mut sc,
                        acc: &mut acc,
                        qr: &mut qr,
                    },
                    &mut out,
                )
            })
        });
    }
    // A prompt's queries: four at a time (the heads sharing a KV head), causal lengths.
    let queries: Vec<Vec<f32>> = (0..4).map(|i| pseudo(hd, 23 + i)).collect();
    let sstride = n_kv.div_ceil(8) * 8;
    let (mut sc, mut acc, mut qr) = (
        vec![0.0; 4 * sstride],
        vec![0.0; 32 * hd],
        vec![0.0; 4 * hd],
    );
    let mut outs_data = vec![vec![0.0f32; hd]; 4];
    g.bench_function("group4_causal", |b| {
        b.iter(|| {
            for step in (0..n_kv).step_by(64) {
                let qs: Vec<GroupQuery> = queries
                    .iter()
                    .enumerate()
                    .map(|(i, q)| GroupQuery {
                        q: q.as_slice(),
                        first: 0,
                        n_kv: step + 1 + i / 3,
                    })
                    .collect();
                let mut outs: Vec<&mut [f32]> =
                    outs_data.iter_mut().map(|o| o.as_mut_slice()).collect();
                attend_group(
                    &k, &qs, &kv, 0.125, &mut sc, sstride, &mut qr, &mut acc, &mut outs,
                );
            }
        })
    });
    g.finish();
}

fn bench_ops(c: &mut Criterion) {
    let k = kernels_from_env();
    let x = pseudo(4096, 23);
    let w = pseudo(4096, 29);
    let mut out = vec![0.0f32; 4096];
    c.bench_function("rms_norm_4096", |b| {
        b.iter(|| rms_norm(&x, &w, 1e-5, &mut out))
    });
    let mut g = x.clone();
    c.bench_function("swiglu_4096", |b| b.iter(|| swiglu(&k, &mut g, &w)));
    let mut s = pseudo(4096, 31);
    c.bench_function("softmax_4096", |b| {
        b.iter(|| {
            s.copy_from_slice(&x);
            softmax_with(&k, &mut s)
        })
    });
    let mut cache = vec![0.0f32; 128];
    let mut heads = pseudo(32 * 128, 37);
    c.bench_function("rope_32_heads_128", |b| {
        b.iter(|| {
            rope_cache(77.0, 128, 10000.0, 1.0, &mut cache);
            rope_heads(&k, &mut heads, 128, 128, RopeStyle::Neox, &cache)
        })
    });
}

criterion_group!(
    benches,
    bench_dot,
    bench_matmul,
    bench_quantize,
    bench_attention,
    bench_ops
);
criterion_main!(benches);

/// The kernels `TORCHLESS_ISA` names, else the best for this CPU.
fn kernels_from_env() -> Kernels {
    match std::env::var("TORCHLESS_ISA") {
        Ok(v) if !v.trim().is_empty() => {
            Kernels::new(torchless_kernels::Isa::parse(&v).expect("TORCHLESS_ISA")).expect("ISA")
        }
        _ => Kernels::best(),
    }
}
