//! Every SIMD path this machine supports against the scalar reference, on random data: dot
//! products for every weight type, whole-tile matrix kernels, attention, softmax and exp.
//! Results must be bit-identical, not merely close: the kernels promise the reference's exact
//! order of operations.

use half::f16;
use proptest::prelude::*;
use torchless_kernels::attention::{
    attend_group, attend_head, round_query, scores_vec, softmax, softmax_weights, values_vec,
    GroupQuery, HeadScratch, PagedHead, Reduce,
};
use torchless_kernels::matmul::{matmul, Activations};
use torchless_kernels::quant::{self, GgmlType};
use torchless_kernels::{Isa, Kernels, Layout, Numerics, Storage, Tensor, ThreadPool};

const WEIGHT_TYPES: [GgmlType; 16] = [
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
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

static SAY_WHICH: std::sync::Once = std::sync::Once::new();

/// The SIMD kernel sets this CPU can run.
fn simd_kernels() -> Vec<Kernels> {
    SAY_WHICH.call_once(|| {
        for i in Isa::ALL.into_iter().filter(|i| i.is_implemented()) {
            let run = if i.is_supported() {
                "tested natively"
            } else {
                "not tested: this CPU (or its OS) does not offer it"
            };
            eprintln!("simd_vs_scalar: {} kernels {run}", i.name());
        }
    });
    Isa::ALL
        .into_iter()
        .filter(|i| *i != Isa::Scalar && i.is_implemented() && i.is_supported())
        .filter_map(|i| Kernels::new(i).ok())
        .collect()
}

/// Byte offsets of the f16 scale fields in one block of `ty` (they must hold sane numbers).
fn half_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Valid random weights of `ty`: random bytes with finite scales (floats for float types).
fn weights(ty: GgmlType, n: usize, seed: &[u8]) -> Vec<u8> {
    let mut rng = seed.iter().fold(0x9E37_79B9_7F4A_7C15u64, |a, &b| {
        (a ^ b as u64).wrapping_mul(0x100_0000_01B3)
    });
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut unit = move || ((next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
    match ty {
        GgmlType::F32 => (0..n).flat_map(|_| unit().to_le_bytes()).collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(unit()).to_bits().to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(unit()).to_bits().to_le_bytes())
            .collect(),
        _ => {
            let bytes = ty.row_bytes(n).unwrap();
            let mut b: Vec<u8> = (0..bytes).map(|_| (unit() * 127.0) as i8 as u8).collect();
            for blk in b.chunks_exact_mut(ty.block_bytes()) {
                if ty == GgmlType::MXFP4 {
                    // An E8M0 exponent near 1.0 (2^-8 .. 2^7).
                    blk[0] = 120 + (next() % 16) as u8;
                }
                for &o in half_fields(ty) {
                    let v = f16::from_f32(unit() * 0.05).to_bits().to_le_bytes();
                    blk[o..o + 2].copy_from_slice(&v);
                }
            }
            b
        }
    }
}

fn activations(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut a = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    assert!(quant::quantize(ty, x, &mut a));
    a
}

/// `t` × the first `tokens` rows of `xs` (encoded for `t`'s type) with kernels `k`.
fn product(pool: &ThreadPool, k: &Kernels, t: &Tensor, xs: &[f32], tokens: usize) -> Vec<f32> {
    let (rows, cols) = (t.rows(), t.cols());
    let mut acts = Activations::new();
    acts.encode(
        pool,
        k,
        t.ty().traits().vec_dot_type,
        &xs[..tokens * cols],
        tokens,
        cols,
    )
    .unwrap();
    let mut out = vec![0.0f32; rows * tokens];
    matmul(pool, k, Numerics::LlamaCpp, t, &acts, &mut out).unwrap();
    out
}

/// A `rows` × `cols` weight matrix of type `ty` with random contents.
fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: &[u8]) -> Tensor {
    let w = weights(ty, rows * cols, seed);
    Tensor::new(
        ty,
        &[cols, rows],
        std::sync::Arc::new(Storage::from_bytes(&w)),
        0,
    )
    .unwrap()
}

/// The products of `plain` with the first `tokens` rows of `xs` on every SIMD path, and those of
/// its interleaved copy (where the type has one) on every path, the scalar one included, are
/// bit for bit those of the scalar reference on the plain layout.
fn check_products(
    pool: &ThreadPool,
    plain: &Tensor,
    xs: &[f32],
    tokens: usize,
) -> Result<(), TestCaseError> {
    let want = product(pool, &Kernels::scalar(), plain, xs, tokens);
    let packed = plain.interleaved();
    let mut runs: Vec<(Kernels, &Tensor)> =
        simd_kernels().into_iter().map(|k| (k, plain)).collect();
    if let Some(p) = &packed {
        runs.extend(simd_kernels().into_iter().map(|k| (k, p)));
        runs.push((Kernels::scalar(), p));
    }
    for (k, t) in runs {
        let got = product(pool, &k, t, xs, tokens);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} ({:?}) on {:?}, output {}: {} vs {}",
                plain.ty(),
                t.layout(),
                k.isa(),
                i,
                g,
                w
            );
        }
    }
    Ok(())
}

/// Keys and values of `n_blocks` cache blocks of `stride` halves (keys in [-2, 2), values in
/// [-1, 1)), and a block table that lists the blocks in reverse.
fn paged_f16(
    n_blocks: usize,
    stride: usize,
    unit: &mut impl FnMut() -> f32,
) -> (Vec<f16>, Vec<f16>, Vec<u32>) {
    let keys: Vec<f16> = (0..n_blocks * stride)
        .map(|_| f16::from_f32(unit() * 2.0))
        .collect();
    let values: Vec<f16> = (0..n_blocks * stride)
        .map(|_| f16::from_f32(unit()))
        .collect();
    (keys, values, (0..n_blocks as u32).rev().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dot_products_are_bit_identical(blocks in 1usize..10, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 2560)) {
        let scalar = Kernels::scalar();
        for ty in WEIGHT_TYPES {
            let n = blocks * 256;
            let w = weights(ty, n, &seed);
            let a = activations(ty.traits().vec_dot_type, &xs[..n]);
            let want = scalar.vec_dot(ty).unwrap()(n, &w, &a);
            for k in simd_kernels() {
                let got = k.vec_dot(ty).unwrap()(n, &w, &a);
                prop_assert_eq!(got.to_bits(), want.to_bits(), "{} on {:?}: {} vs {}", ty, k.isa(), got, want);
            }
            if let Some(b) = scalar.vec_dot_batched(ty) {
                let want = b(n, &w, &a);
                for k in simd_kernels() {
                    let got = k.vec_dot_batched(ty).unwrap()(n, &w, &a);
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "batched {} on {:?}", ty, k.isa());
                }
            }
        }
    }

    /// The 32-element and float formats at lengths that whole super-blocks never give: odd
    /// block counts, float lengths with a tail past the last 32-element step (kernels that
    /// take two blocks or sixteen floats at a time must end exactly as the reference does).
    #[test]
    fn dot_products_at_any_length_are_bit_identical(len in 1usize..48, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 48 * 32)) {
        let scalar = Kernels::scalar();
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::MXFP4] {
            let block = ty.block_elems();
            let n = if block == 1 { len * 7 } else { len * block };
            let w = weights(ty, n, &seed);
            let a = activations(ty.traits().vec_dot_type, &xs[..n]);
            let want = scalar.vec_dot(ty).unwrap()(n, &w, &a);
            for k in simd_kernels() {
                let got = k.vec_dot(ty).unwrap()(n, &w, &a);
                prop_assert_eq!(got.to_bits(), want.to_bits(), "{} n {} on {:?}: {} vs {}", ty, n, k.isa(), got, want);
            }
        }
    }

    #[test]
    fn tile_kernels_are_bit_identical(rows in 1usize..40, tokens in 1usize..20, blocks in 1usize..4, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 768 * 19)) {
        let pool = ThreadPool::new(2);
        for ty in WEIGHT_TYPES {
            check_products(&pool, &matrix(ty, rows, blocks * 256, &seed), &xs, tokens)?;
        }
    }

    /// Weights repacked into the eight-row interleaved layout give exactly the products of the
    /// plain layout on the scalar reference, on every path (the scalar one included), and their
    /// rows can still be looked up.
    #[test]
    fn interleaved_weights_give_the_plain_products(groups in 1usize..6, tokens in 1usize..7, blocks in 1usize..12, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 1024 * 6)) {
        let pool = ThreadPool::new(2);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let block = ty.block_elems();
            let (rows, cols) = (8 * groups, block * if block == 256 { 1 + blocks % 4 } else { blocks });
            let plain = matrix(ty, rows, cols, &seed);
            let packed = plain.interleaved().unwrap();
            prop_assert_eq!(packed.layout(), Layout::Rows8);
            prop_assert!(packed.row(0).is_empty());
            let (mut a, mut b) = (vec![0.0f32; cols], vec![0.0f32; cols]);
            for r in [0, rows / 2, rows - 1] {
                prop_assert!(plain.row_to_f32(r, &mut a) && packed.row_to_f32(r, &mut b));
                prop_assert_eq!(&a, &b, "row {} of {} looked up through the interleaved layout", r, ty);
            }
            check_products(&pool, &plain, &xs, tokens)?;
            let mut out = vec![0.0f32; rows * tokens];
            prop_assert!(torchless_kernels::matmul_f32(&pool, &packed, &xs[..tokens * cols], tokens, &mut out).is_err());
        }
    }

    /// Long rows and enough tokens that the batched kernels take the tokens in several
    /// cache-sized blocks (plain and interleaved layouts).
    #[test]
    fn tiles_spanning_token_blocks_are_bit_identical(groups in 1usize..3, tokens in 25usize..41, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 6144 * 40)) {
        let pool = ThreadPool::new(2);
        for ty in [GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            check_products(&pool, &matrix(ty, 8 * groups, 6144, &seed), &xs, tokens)?;
        }
    }

    /// Shapes that take the AMX and AVX-512 VNNI batched kernels where the CPU has them (the
    /// other paths otherwise): whole slabs of sixteen rows with or without a trailing group of
    /// eight, chunks of sixteen tokens and a short last chunk, plain and interleaved layouts.
    #[test]
    fn wide_batched_products_are_bit_identical(slabs in 1usize..4, extra8 in any::<bool>(), tokens in 8usize..40, blocks in 1usize..5, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 1280 * 40)) {
        let pool = ThreadPool::new(2);
        let rows = 16 * slabs + if extra8 { 8 } else { 0 };
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0] {
            let cols = blocks * 256;
            check_products(&pool, &matrix(ty, rows, cols, &seed), &xs[..tokens * cols], tokens)?;
        }
    }

    /// Float weights with enough rows that the batched kernel takes them in several L2 blocks.
    #[test]
    fn float_tiles_spanning_row_blocks_are_bit_identical(rows in 90usize..260, tokens in 2usize..10, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 768 * 9)) {
        let pool = ThreadPool::new(2);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            check_products(&pool, &matrix(ty, rows, 768, &seed), &xs, tokens)?;
        }
    }

    /// RMSNorm fused into the activation encoding gives exactly the bytes of the norm followed by
    /// the encoding, for every activation format, on every path (row lengths that are and are
    /// not multiples of the fused chunk).
    #[test]
    fn fused_norm_encoding_is_byte_identical(rows in 1usize..12, chunks in 1usize..5, extra in 0usize..8, seed in any::<u64>(), xs in proptest::collection::vec(-6.0f32..6.0, 1280 * 11)) {
        let mut rng = seed | 1;
        let mut unit = move || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 };
        let norm: Vec<f32> = (0..1280).map(|_| unit()).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K, GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            let cols = if ty == GgmlType::Q8_K { 256 * chunks } else { 256 * chunks + 32 * extra };
            let x = &xs[..rows * cols];
            for k in std::iter::once(Kernels::scalar()).chain(simd_kernels()) {
                let mut normed = vec![0.0f32; rows * cols];
                for (r, o) in x.chunks_exact(cols).zip(normed.chunks_exact_mut(cols)) {
                    torchless_kernels::ops::rms_norm(r, &norm[..cols], 1e-5, o);
                }
                let (mut a, mut b) = (Activations::new(), Activations::new());
                // One thread for the unfused encoding, two (rows split) for the fused one.
                a.encode(&ThreadPool::new(1), &k, ty, &normed, rows, cols).unwrap();
                b.encode_rms_norm(&ThreadPool::new(2), &k, ty, x, &norm[..cols], 1e-5, rows, cols).unwrap();
                for t in 0..rows {
                    prop_assert_eq!(a.row(t), b.row(t), "{} on {:?}, row {}", ty, k.isa(), t);
                }
            }
        }
    }

    #[test]
    fn attention_is_bit_identical(n_kv in 1usize..90, hd_8 in 1usize..9, seed in any::<u64>()) {
        let (hd, bs) = (hd_8 * 8, 16);
        let n_blocks = n_kv.div_ceil(bs) + 1;
        let mut rng = seed | 1;
        let mut unit = move || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
        let stride = bs * hd;
        let (keys, values, blocks) = paged_f16(n_blocks, stride, &mut unit);
        let q: Vec<f32> = (0..hd).map(|_| unit() * 3.0).collect();
        let kv = PagedHead { keys: &keys, values: &values, blocks: &blocks, base: 0, block_stride: stride, block_size: bs, head_dim: hd };
        for order in [Reduce::Gemm, Reduce::Vec] {
            let run = |k: &Kernels| {
                let (mut sc, mut acc, mut qr) = (vec![0.0; n_kv + 8], vec![0.0; 32 * hd], vec![0.0; hd]);
                let mut out = vec![0.0f32; hd];
                attend_head(k, &q, &kv, n_kv, 0.125, order, HeadScratch { scores: &mut sc, acc: &mut acc, qr: &mut qr }, &mut out);
                out
            };
            let want = run(&Kernels::scalar());
            for k in simd_kernels() {
                let got = run(&k);
                for (d, (g, w)) in got.iter().zip(&want).enumerate() {
                    prop_assert_eq!(g.to_bits(), w.to_bits(), "{:?} {:?} dim {}: {} vs {}", order, k.isa(), d, g, w);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn grouped_attention_equals_one_query_at_a_time(nq in 1usize..11, n_kv_max in 1usize..70, seed in any::<u64>()) {
        let (hd, bs) = (32usize, 16usize);
        let n_blocks = n_kv_max.div_ceil(bs) + 1;
        let mut rng = seed | 1;
        let mut unit = move || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
        let stride = bs * hd;
        let keys: Vec<f16> = (0..n_blocks * stride).map(|_| f16::from_f32(unit() * 2.0)).collect();
        let values: Vec<f16> = (0..n_blocks * stride).map(|_| f16::from_f32(unit())).collect();
        let blocks: Vec<u32> = (0..n_blocks as u32).collect();
        let kv = PagedHead { keys: &keys, values: &values, blocks: &blocks, base: 0, block_stride: stride, block_size: bs, head_dim: hd };
        let qv: Vec<Vec<f32>> = (0..nq).map(|_| (0..hd).map(|_| unit() * 3.0).collect()).collect();
        let n_kv: Vec<usize> = (0..nq).map(|i| (n_kv_max - i.min(n_kv_max - 1)).max(1)).collect();
        let queries: Vec<GroupQuery> = qv.iter().zip(&n_kv).map(|(q, &n)| GroupQuery { q: q.as_slice(), first: 0, n_kv: n }).collect();
        // The same queries with sliding windows (every other one starting a third of the way in).
        let windowed: Vec<GroupQuery> = queries.iter().enumerate().map(|(i, g)| GroupQuery { first: if i % 2 == 1 { g.n_kv / 3 } else { 0 }, ..*g }).collect();
        let sstride = n_kv_max.div_ceil(8) * 8;
        let run = |k: &Kernels, qs: &[GroupQuery]| {
            let mut outs_data = vec![vec![0.0f32; hd]; nq];
            let (mut sc, mut qr, mut acc) = (vec![0.0; nq * sstride], vec![0.0; nq * hd], vec![0.0; 32 * hd]);
            let mut outs: Vec<&mut [f32]> = outs_data.iter_mut().map(|o| o.as_mut_slice()).collect();
            attend_group(k, qs, &kv, 0.2, &mut sc, sstride, &mut qr, &mut acc, &mut outs);
            outs_data
        };
        let scalar_windowed = run(&Kernels::scalar(), &windowed);
        // The windowed scalar path against softmax over the window in f64.
        for (i, g) in windowed.iter().enumerate() {
            let (hf, kf) = (|x: f32| x as f64, |p: usize, d: usize| keys[p * hd + d].to_f64());
            let qr: Vec<f64> = g.q.iter().map(|&x| f16::from_f32(x).to_f64()).collect();
            let sc: Vec<f64> = (g.first..g.n_kv).map(|p| (0..hd).map(|d| qr[d] * kf(p, d)).sum::<f64>() * hf(0.2)).collect();
            let m = sc.iter().copied().fold(f64::MIN, f64::max);
            let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let want: f64 = (g.first..g.n_kv).zip(&e).map(|(p, w)| w / z * values[(p / bs) * stride + d * bs + p % bs].to_f64()).sum();
                prop_assert!((scalar_windowed[i][d] as f64 - want).abs() < 2e-3, "query {} dim {}: {} vs {}", i, d, scalar_windowed[i][d], want);
            }
        }
        for k in std::iter::once(Kernels::scalar()).chain(simd_kernels()) {
            let outs_data = run(&k, &queries);
            for (i, g) in queries.iter().enumerate() {
                let (mut sc1, mut acc1, mut qr1) = (vec![0.0; sstride], vec![0.0; 32 * hd], vec![0.0; hd]);
                let mut want = vec![0.0f32; hd];
                attend_head(&Kernels::scalar(), g.q, &kv, g.n_kv, 0.2, Reduce::Gemm, HeadScratch { scores: &mut sc1, acc: &mut acc1, qr: &mut qr1 }, &mut want);
                for d in 0..hd {
                    prop_assert_eq!(outs_data[i][d].to_bits(), want[d].to_bits(), "{:?} query {} dim {}", k.isa(), i, d);
                }
            }
            let got = run(&k, &windowed);
            for i in 0..nq {
                for d in 0..hd {
                    prop_assert_eq!(got[i][d].to_bits(), scalar_windowed[i][d].to_bits(), "{:?} windowed query {} dim {}", k.isa(), i, d);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Single-query attention in phases (scores over pieces of the positions, softmax, outputs
    /// over pieces of the dimensions, queries of one KV head together) gives each query
    /// exactly what `attend_head` gives it alone, on every path.
    #[test]
    fn phased_attention_equals_one_query_at_a_time(
        nq in 1usize..7, n_kv in 1usize..150, hd_8 in 1usize..11, pos_piece in 1usize..40, dim_piece in 1usize..20, seed in any::<u64>(),
    ) {
        let (hd, bs) = (hd_8 * 8, 16usize);
        let n_blocks = n_kv.div_ceil(bs) + 1;
        let mut rng = seed | 1;
        let mut unit = move || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
        let stride = bs * hd;
        let (keys, values, blocks) = paged_f16(n_blocks, stride, &mut unit);
        let kv = PagedHead { keys: &keys, values: &values, blocks: &blocks, base: 0, block_stride: stride, block_size: bs, head_dim: hd };
        let qv: Vec<Vec<f32>> = (0..nq).map(|_| (0..hd).map(|_| unit() * 3.0).collect()).collect();
        let padded = n_kv.div_ceil(8) * 8;
        for k in std::iter::once(Kernels::scalar()).chain(simd_kernels()) {
            let qr: Vec<Vec<f32>> = qv.iter().map(|q| { let mut r = vec![0.0; hd]; round_query::<f16>(q, &mut r); r }).collect();
            let qrs: Vec<&[f32]> = qr.iter().map(|r| r.as_slice()).collect();
            let mut sc = vec![vec![0.0f32; padded]; nq];
            for p0 in (0..n_kv).step_by(pos_piece) {
                let r = p0..(p0 + pos_piece).min(n_kv);
                let mut outs: Vec<&mut [f32]> = sc.iter_mut().map(|s| &mut s[r.clone()]).collect();
                scores_vec(&k, &qrs, &kv, r.clone(), 0.2, &mut outs);
            }
            for s in sc.iter_mut() {
                softmax_weights::<f16>(&k, s, n_kv);
            }
            let ws: Vec<&[f32]> = sc.iter().map(|s| s.as_slice()).collect();
            let mut got = vec![vec![0.0f32; hd]; nq];
            for d0 in (0..hd).step_by(dim_piece) {
                let r = d0..(d0 + dim_piece).min(hd);
                let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| &mut o[r.clone()]).collect();
                values_vec(&k, &ws, &kv, n_kv, r.clone(), &mut outs);
            }
            for (i, q) in qv.iter().enumerate() {
                let (mut sc1, mut acc1, mut qr1) = (vec![0.0; padded], vec![0.0; 32 * hd], vec![0.0; hd]);
                let mut want = vec![0.0f32; hd];
                attend_head(&Kernels::scalar(), q, &kv, n_kv, 0.2, Reduce::Vec, HeadScratch { scores: &mut sc1, acc: &mut acc1, qr: &mut qr1 }, &mut want);
                for d in 0..hd {
                    prop_assert_eq!(got[i][d].to_bits(), want[d].to_bits(), "{:?} query {} dim {}: {} vs {}", k.isa(), i, d, got[i][d], want[d]);
                }
            }
        }
    }
}

#[test]
fn softmax_and_exp_match_between_paths() {
    // The scalar softmax (the definition) against itself through the FMA build is covered by
    // attention; here check extremes of the exp kernel against the scalar definition.
    let xs: Vec<f32> = (-2000..2000)
        .map(|i| i as f32 * 0.11)
        .chain([f32::NEG_INFINITY, -1e30, 88.0, 89.0])
        .collect();
    let mut a = xs.clone();
    a.truncate(a.len() / 8 * 8);
    let mut b = a.clone();
    softmax(&mut a);
    for k in simd_kernels() {
        let mut c = b.clone();
        torchless_kernels::attention::softmax_with(&k, &mut c);
        for (x, y) in a.iter().zip(&c) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }
    b.clear();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Several matrices that share activations, run as one job (`matmul_many`, as the forward
    /// pass runs Q/K/V and gate/up), give each matrix's own product: mixed types and layouts,
    /// more matrices than one job takes, one token and several.
    #[test]
    fn shared_activation_products_are_each_matrix_product(tokens in 1usize..6, rows8 in 1usize..9, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 512 * 5)) {
        let pool = ThreadPool::new(2);
        let k = Kernels::best();
        let types = [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];
        let plain: Vec<Tensor> = types.iter().enumerate().map(|(i, &ty)| matrix(ty, 8 * (rows8 + i), 512, &seed)).collect();
        let mut mats = plain.clone();
        if let Some(p) = plain[2].interleaved() {
            mats[2] = p;
        }
        let mut acts = Activations::new();
        acts.encode(&pool, &k, GgmlType::Q8_K, &xs[..tokens * 512], tokens, 512).unwrap();
        for numerics in [Numerics::LlamaCpp, Numerics::BatchInvariant] {
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; m.rows() * tokens]).collect();
        {
            let mut products: Vec<(&Tensor, &mut [f32])> = mats.iter().zip(outs.iter_mut()).map(|(m, o)| (m, o.as_mut_slice())).collect();
            torchless_kernels::matmul_many(&pool, &k, numerics, &acts, &mut products).unwrap();
        }
        // The reference: one scalar dot product per (row, token) of the plain matrices, in
        // the order the policy gives that token (llama.cpp's Q4_K: its repacked kernels, four
        // tokens at a time and then one by one; batch-invariant: one order for all).
        for (m, got) in plain.iter().zip(&outs) {
            let s = torchless_kernels::order::schedule(numerics, m.ty(), m.rows(), 512, tokens);
            for t in 0..tokens {
                let order = if t < s.split { s.head } else { s.tail };
                let dot = torchless_kernels::order::reference_dot(m.ty(), order).unwrap();
                for r in 0..m.rows() {
                    let want = dot(512, m.row(r), acts.row(t));
                    prop_assert_eq!(got[t * m.rows() + r].to_bits(), want.to_bits(), "{} row {} token {}", m.ty(), r, t);
                }
            }
        }
    }
    }
}

/// Float dot products whose weights hold the awkward halves (signed zeros, subnormals, the
/// largest finite values, infinities) match the scalar kernels on every path, in both orders.
#[test]
fn float_dots_with_special_halves_match() {
    let special: [u16; 12] = [
        0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x3c00, 0xb555, 0x7c00,
        0xfc00,
    ];
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    for ty in [GgmlType::F16, GgmlType::BF16] {
        for n in [8usize, 40, 64, 70] {
            for start in 0..special.len() {
                // Finite halves, and in a third of the cases one infinity in the middle.
                let mut h: Vec<u16> = (0..n).map(|i| special[(start + i) % 10]).collect();
                if start % 3 == 0 {
                    h[n / 2] = special[10 + start % 2];
                }
                let w: Vec<u8> = h.iter().flat_map(|h| h.to_le_bytes()).collect();
                let a: Vec<u8> = (0..n)
                    .map(|i| 0x3800u16 + (i as u16 % 37) * 11)
                    .flat_map(|h| h.to_le_bytes())
                    .collect();
                let scalar = Kernels::scalar();
                let want = scalar.vec_dot(ty).unwrap()(n, &w, &a);
                let want_b = scalar.vec_dot_batched(ty).unwrap()(n, &w, &a);
                for k in simd_kernels() {
                    let got = k.vec_dot(ty).unwrap()(n, &w, &a);
                    let got_b = k.vec_dot_batched(ty).unwrap()(n, &w, &a);
                    assert!(same(got, want), "{ty} {:?} n {n}: {got} vs {want}", k.isa());
                    assert!(
                        same(got_b, want_b),
                        "{ty} {:?} n {n} batched: {got_b} vs {want_b}",
                        k.isa()
                    );
                }
            }
        }
    }
}

#[test]
fn swiglu_matches_between_paths() {
    // Every length from 0 to 40 (whole groups of eight and leftovers), values across exp's
    // range and past it (|x| > 88 takes the kernel's overflow branch), signed zeros.
    let xs: Vec<f32> = (-2000..2000)
        .map(|i| i as f32 * 0.0731)
        .chain([
            0.0, -0.0, 100.0, -100.0, 150.0, -150.0, 200.0, -200.0, 1e30, -1e30,
        ])
        .collect();
    let up: Vec<f32> = (0..xs.len()).map(|i| 0.5 + (i % 7) as f32 * 0.3).collect();
    for len in (0..41).chain([xs.len()]) {
        let mut want = xs[..len].to_vec();
        torchless_kernels::ops::swiglu(&Kernels::scalar(), &mut want, &up[..len]);
        for k in simd_kernels() {
            let mut got = xs[..len].to_vec();
            torchless_kernels::ops::swiglu(&k, &mut got, &up[..len]);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{:?}, length {len}, element {i}",
                    k.isa()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn activation_quantizers_are_byte_identical(xs in proptest::collection::vec(-100.0f32..100.0, 512), zero_block in any::<bool>(), tie in 0usize..256) {
        let mut xs = xs;
        if zero_block {
            xs[256..512].fill(0.0);
        } else {
            // The largest |x| of the second block twice, with both signs: the first one sets
            // the sign of the Q8_K scale.
            xs[256 + tie] = 200.0;
            xs[256 + (tie * 7 + 3) % 256] = -200.0;
        }
        // Tiny values (f16 subnormals and underflow) and a few past the f16 range.
        for x in &mut xs[128..192] {
            *x *= 1e-6;
        }
        xs[200] = 70000.0;
        xs[201] = -1e9;
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K, GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            let n = ty.row_bytes(512).unwrap();
            let mut want = vec![0u8; n];
            Kernels::scalar().quantize(ty).unwrap()(&xs, &mut want);
            for k in simd_kernels() {
                let mut got = vec![0u8; n];
                k.quantize(ty).unwrap()(&xs, &mut got);
                prop_assert_eq!(&got, &want, "{} on {:?}", ty, k.isa());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Every weight type's dot product in every arithmetic order of `torchless_kernels::order`
    /// (llama.cpp's repacked and tiled kernels as well as `vec_dot`) equals its scalar
    /// definition on every path.
    #[test]
    fn dot_products_in_every_order_are_bit_identical(blocks in 1usize..6, seed in proptest::collection::vec(any::<u8>(), 8), xs in proptest::collection::vec(-4.0f32..4.0, 1536)) {
        use torchless_kernels::order::{reference_dot, Order};
        for ty in WEIGHT_TYPES {
            let n = blocks * 256;
            let w = weights(ty, n, &seed);
            let a = activations(ty.traits().vec_dot_type, &xs[..n]);
            for order in [Order::VecDot, Order::Sgemm, Order::Tiled, Order::Gemv, Order::Gemm] {
                let want = reference_dot(ty, order).unwrap()(n, &w, &a);
                for k in simd_kernels() {
                    let got = k.dot(ty, order).unwrap()(n, &w, &a);
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "{} {:?} on {:?}: {} vs {}", ty, order, k.isa(), got, want);
                }
            }
        }
    }
}

/// Flash attention of `qs` over `n` positions of f16 rows (block size 16, blocks in reverse
/// order), split by split and folded, as its callers run it.
fn flash_outputs(
    k: &Kernels,
    qs: &[Vec<f32>],
    n: usize,
    hd: usize,
    tile: usize,
    rows: (&[f16], &[f16]),
) -> Vec<u32> {
    use torchless_kernels::flash::{self, FlashParams, FlashQuery, PagedRows, Rows};
    let bs = 16;
    let blocks: Vec<u32> = (0..n.div_ceil(bs) as u32).rev().collect();
    let paged = |r| PagedRows {
        rows: Rows::F16(r),
        blocks: &blocks,
        base: 0,
        block_stride: bs * hd,
        block_size: bs,
        head_dim: hd,
    };
    let (keys, values) = (paged(rows.0), paged(rows.1));
    // Heads of three positions: the last `qs.len() / 3` queries see every position, the
    // others one and two fewer.
    let per = qs.len().div_ceil(3);
    let queries: Vec<FlashQuery> = qs
        .iter()
        .enumerate()
        .map(|(i, q)| FlashQuery {
            q,
            first: 0,
            n_kv: n.saturating_sub(2 - (i / per).min(2)).max(1),
        })
        .collect();
    let p = FlashParams {
        scale: 0.125,
        softcap: None,
        tile,
    };
    let sl = flash::state_len(hd);
    let mut run = vec![0.0f32; qs.len() * sl];
    for st in run.chunks_exact_mut(sl) {
        st[0] = f32::NEG_INFINITY;
    }
    let mut part = vec![0.0f32; qs.len() * sl];
    let mut scratch = vec![0.0f32; flash::tile_scratch_len(tile, hd)];
    for s in flash::splits(0, n) {
        assert!(flash::split_partials(
            k,
            &p,
            &queries,
            &keys,
            &values,
            s,
            &mut part,
            &mut scratch
        ));
        for (r, pt) in run.chunks_exact_mut(sl).zip(part.chunks_exact(sl)) {
            flash::fold(k, r, pt);
        }
    }
    let mut out = vec![0.0f32; hd];
    let mut bits = Vec::new();
    for st in run.chunks_exact(sl) {
        flash::finish(st, &mut out);
        bits.extend(out.iter().map(|x| x.to_bits()));
    }
    bits
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Flash attention gives the scalar bits in every kernel set, for one to six queries
    /// per position (which the tile steps take in pairs and groups) and head sizes that do
    /// and do not fit their fast paths.
    #[test]
    fn flash_attention_is_bit_identical(n in 1usize..300, hd_8 in 1usize..=17, heads in 1usize..=6, tile_log in 3u32..=8, seed in any::<u64>()) {
        let hd = hd_8 * 8;
        let mut rng = seed | 1;
        let mut unit = move || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
        let len = n.div_ceil(16) * 16 * hd;
        let keys: Vec<f16> = (0..len).map(|_| f16::from_f32(unit())).collect();
        let values: Vec<f16> = (0..len).map(|_| f16::from_f32(unit())).collect();
        let qs: Vec<Vec<f32>> = (0..3 * heads).map(|_| (0..hd).map(|_| unit() * 3.0).collect()).collect();
        let want = flash_outputs(&Kernels::scalar(), &qs, n, hd, 1 << tile_log, (&keys, &values));
        for k in simd_kernels() {
            let got = flash_outputs(&k, &qs, n, hd, 1 << tile_log, (&keys, &values));
            prop_assert!(got == want, "{:?}: flash attention differs from the scalar bits", k.isa());
        }
    }
}
