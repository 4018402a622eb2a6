use half::f16;
use proptest::prelude::*;

use super::*;
use crate::{Isa, Kernels};

/// Softmax attention of one query over rows `first..n_kv`, in f64 (the oracle).
fn oracle(
    q: &[f32],
    k: &[Vec<f32>],
    v: &[Vec<f32>],
    first: usize,
    n_kv: usize,
    p: &FlashParams,
) -> Vec<f64> {
    let hd = q.len();
    let scores: Vec<f64> = (first..n_kv)
        .map(|j| {
            let s = q
                .iter()
                .zip(&k[j])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * p.scale as f64;
            match p.softcap {
                Some(c) => c as f64 * (s / c as f64).tanh(),
                None => s,
            }
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    (0..hd)
        .map(|d| {
            (first..n_kv)
                .zip(&w)
                .map(|(j, w)| w * v[j][d] as f64)
                .sum::<f64>()
                / sum
        })
        .collect()
}

struct Case {
    hd: usize,
    bs: usize,
    n: usize,
    table: Vec<u32>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Case {
    fn new(hd: usize, bs: usize, n: usize, seed: u64) -> Case {
        let mut rng = seed | 1;
        let mut unit = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let blocks = n.div_ceil(bs);
        // A block table out of order, with unused blocks between: block i at 2·(blocks−1−i).
        let table: Vec<u32> = (0..blocks).map(|i| (2 * (blocks - 1 - i)) as u32).collect();
        let k = (0..n)
            .map(|_| (0..hd).map(|_| unit() * 2.0).collect())
            .collect();
        let v = (0..n).map(|_| (0..hd).map(|_| unit()).collect()).collect();
        Case {
            hd,
            bs,
            n,
            table,
            k,
            v,
        }
    }

    /// The rows laid out in blocks as f32.
    fn store(&self, rows: &[Vec<f32>]) -> Vec<f32> {
        let slots = *self.table.iter().max().unwrap() as usize + 1;
        let mut data = vec![f32::NAN; slots * self.bs * self.hd];
        for (p, r) in rows.iter().enumerate().take(self.n) {
            let at = (self.table[p / self.bs] as usize * self.bs + p % self.bs) * self.hd;
            data[at..at + self.hd].copy_from_slice(r);
        }
        data
    }

    fn paged<'a>(&'a self, rows: Rows<'a>) -> PagedRows<'a> {
        PagedRows {
            rows,
            blocks: &self.table,
            base: 0,
            block_stride: self.bs * self.hd,
            block_size: self.bs,
            head_dim: self.hd,
        }
    }
}

/// Runs `qs` split by split, folding in order, as a caller does.
fn run(
    k: &Kernels,
    p: &FlashParams,
    qs: &[FlashQuery<'_>],
    keys: &PagedRows<'_>,
    values: &PagedRows<'_>,
) -> Vec<Vec<f32>> {
    let hd = keys.head_dim;
    let sl = state_len(hd);
    let mut run = vec![0.0f32; qs.len() * sl];
    for st in run.chunks_exact_mut(sl) {
        st[0] = f32::NEG_INFINITY;
        st[1..].fill(0.0);
    }
    let mut part = vec![0.0f32; qs.len() * sl];
    let mut scratch = vec![0.0f32; tile_scratch_len(p.tile, hd)];
    let last = qs.iter().map(|q| q.n_kv).max().unwrap_or(0);
    for s in 0..last.div_ceil(SPLIT) {
        assert!(split_partials(
            k,
            p,
            qs,
            keys,
            values,
            s,
            &mut part,
            &mut scratch
        ));
        for (r, pt) in run.chunks_exact_mut(sl).zip(part.chunks_exact(sl)) {
            fold(k, r, pt);
        }
    }
    run.chunks_exact(sl)
        .map(|st| {
            let mut out = vec![0.0; hd];
            finish(st, &mut out);
            out
        })
        .collect()
}

fn close(got: &[f32], want: &[f64], tol: f64) -> Result<(), String> {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
    for (d, (&g, &w)) in got.iter().zip(want).enumerate() {
        if ((g as f64 - w) / scale).abs() > tol {
            return Err(format!("dim {d}: {g} vs {w}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every query's output is its softmax attention within 1e-5 relative (of the output's
    /// magnitude), for f32 rows in a shuffled block table, any tile and window; and the same
    /// bits in the scalar, the AVX2 and the best kernel set, and alone or among other queries.
    #[test]
    fn flash_equals_softmax_attention(
        hd8 in 1usize..=16, bs_log in 2u32..=6, n in 1usize..700, tile_log in 3u32..=8,
        window in proptest::option::of(1usize..600), cap in proptest::option::of(5.0f32..50.0),
        heads in 1usize..=9, seed in any::<u64>(),
    ) {
        let hd = hd8 * 8;
        let c = Case::new(hd, 1 << bs_log, n, seed);
        let (ks, vs) = (c.store(&c.k), c.store(&c.v));
        let (keys, values) = (c.paged(Rows::F32(&ks)), c.paged(Rows::F32(&vs)));
        let p = FlashParams { scale: 1.0 / (hd as f32).sqrt(), softcap: cap, tile: 1 << tile_log };
        // Queries at the last three positions, each with its own window, `heads` of them per
        // position (which the tile steps take together where they see the same rows).
        let qv: Vec<Vec<f32>> = (0..3 * heads)
            .map(|i| c.v[(i * 17) % n].iter().map(|x| x * (1.5 - 0.1 * (i % heads) as f32)).collect())
            .collect();
        let qs: Vec<FlashQuery> = (0..3 * heads).map(|i| {
            let n_kv = n.saturating_sub(i / heads).max(1);
            FlashQuery { q: &qv[i], first: window.map_or(0, |w| n_kv.saturating_sub(w)), n_kv }
        }).collect();
        let best = Kernels::new(Isa::best()).unwrap();
        let got = run(&best, &p, &qs, &keys, &values);
        for (q, g) in qs.iter().zip(&got) {
            let want = oracle(q.q, &c.k, &c.v, q.first, q.n_kv, &p);
            prop_assert!(close(g, &want, 1e-5).is_ok(), "{:?}", close(g, &want, 1e-5));
        }
        let scalar = run(&Kernels::scalar(), &p, &qs, &keys, &values);
        prop_assert_eq!(bits(&got), bits(&scalar));
        if Isa::Avx2.is_supported() {
            let avx2 = run(&Kernels::new(Isa::Avx2).unwrap(), &p, &qs, &keys, &values);
            prop_assert_eq!(bits(&avx2), bits(&scalar));
        }
        let one = heads + heads / 2;
        let alone = run(&best, &p, &qs[one..one + 1], &keys, &values);
        prop_assert_eq!(bits(&got[one..one + 1]), bits(&alone));
    }
}

fn bits(x: &[Vec<f32>]) -> Vec<Vec<u32>> {
    x.iter()
        .map(|r| r.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// F16, Q8_0 and Q4_0 rows give the attention of their dequantized values (the encodings
/// are checked against plain decoding).
#[test]
fn encoded_rows_attend_as_their_decoded_values() {
    let (hd, bs, n) = (64, 16, 300);
    let c = Case::new(hd, bs, n, 7);
    let p = FlashParams {
        scale: 0.125,
        softcap: None,
        tile: 32,
    };
    let best = Kernels::new(Isa::best()).unwrap();
    for ty in ["f16", "q8_0", "q4_0"] {
        // Encode every row, and decode it back for the oracle.
        let enc = |rows: &[Vec<f32>]| -> (Vec<u8>, Vec<f16>, Vec<Vec<f32>>) {
            let f = c
                .store(rows)
                .iter()
                .map(|x| if x.is_nan() { 0.0 } else { *x })
                .collect::<Vec<f32>>();
            match ty {
                "f16" => {
                    let h: Vec<f16> = f.iter().map(|&x| f16::from_f32(x)).collect();
                    let back = rows
                        .iter()
                        .map(|r| r.iter().map(|&x| f16::from_f32(x).to_f32()).collect())
                        .collect();
                    (Vec::new(), h, back)
                }
                _ => {
                    let g = if ty == "q8_0" {
                        crate::GgmlType::Q8_0
                    } else {
                        crate::GgmlType::Q4_0
                    };
                    let mut bytes = vec![0u8; g.row_bytes(f.len()).unwrap()];
                    for (src, dst) in f
                        .chunks_exact(hd)
                        .zip(bytes.chunks_exact_mut(g.row_bytes(hd).unwrap()))
                    {
                        assert!(encode_row(g, src, dst));
                    }
                    let back = rows
                        .iter()
                        .map(|r| {
                            let mut b = vec![0u8; g.row_bytes(hd).unwrap()];
                            assert!(encode_row(g, r, &mut b));
                            let mut out = vec![0.0; hd];
                            assert!(crate::quant::dequantize(g, &b, &mut out));
                            out
                        })
                        .collect();
                    (bytes, Vec::new(), back)
                }
            }
        };
        let (kb, kh, kback) = enc(&c.k);
        let (vb, vh, vback) = enc(&c.v);
        let (keys, values) = (
            c.paged(rows_of(ty, &kb, &kh)),
            c.paged(rows_of(ty, &vb, &vh)),
        );
        let q: Vec<f32> = c.k[11].clone();
        let qs = [FlashQuery {
            q: &q,
            first: 0,
            n_kv: n,
        }];
        let got = run(&best, &p, &qs, &keys, &values);
        let want = oracle(&q, &kback, &vback, 0, n, &p);
        assert!(
            close(&got[0], &want, 1e-5).is_ok(),
            "{ty}: {:?}",
            close(&got[0], &want, 1e-5)
        );
        // The SIMD decoding of the rows gives the scalar one's bits.
        let scalar = run(&Kernels::scalar(), &p, &qs, &keys, &values);
        assert_eq!(bits(&got), bits(&scalar), "{ty}");
    }
}

fn rows_of<'a>(ty: &str, b: &'a [u8], h: &'a [f16]) -> Rows<'a> {
    match ty {
        "f16" => Rows::F16(h),
        "q8_0" => Rows::Q8_0(b),
        _ => Rows::Q4_0(b),
    }
}

/// A position without a block is an error, not a read of some other memory.
#[test]
fn a_missing_block_is_reported() {
    let c = Case::new(16, 8, 40, 3);
    let ks = c.store(&c.k);
    let mut keys = c.paged(Rows::F32(&ks));
    let short = &c.table[..2];
    keys.blocks = short;
    let values = c.paged(Rows::F32(&ks));
    let q = vec![0.5f32; 16];
    let p = FlashParams {
        scale: 1.0,
        softcap: None,
        tile: 8,
    };
    let mut st = vec![0.0; state_len(16)];
    let mut scratch = vec![0.0; tile_scratch_len(8, 16)];
    let qs = [FlashQuery {
        q: &q,
        first: 0,
        n_kv: 40,
    }];
    assert!(!split_partials(
        &Kernels::scalar(),
        &p,
        &qs,
        &keys,
        &values,
        0,
        &mut st,
        &mut scratch
    ));
}
