//! Dequantization against the `gguf` Python package's reference (tests/data/quant/), activation
//! quantization against llama.cpp's rules, and every scalar dot product against a float dot of
//! the dequantized operands.

use std::path::PathBuf;

use torchless_kernels::quant::{self, GgmlType};

const ROWS: usize = 4;
const COLS: usize = 512;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/quant")
}

fn read(name: &str) -> Option<Vec<u8>> {
    std::fs::read(data_dir().join(name)).ok()
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const ALL: [GgmlType; 17] = [
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
    GgmlType::Q8_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

#[test]
fn dequantization_matches_the_gguf_reference_bit_for_bit() {
    for ty in ALL {
        let q = read(&format!("{}.q", ty.name())).expect("fixture missing");
        let want = floats(&read(&format!("{}.f32", ty.name())).expect("fixture missing"));
        assert_eq!(
            q.len(),
            ty.row_bytes(ROWS * COLS).unwrap(),
            "{ty}: fixture size"
        );
        let mut got = vec![0.0f32; ROWS * COLS];
        assert!(
            quant::dequantize(ty, &q, &mut got),
            "{ty}: dequantize refused"
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g == w),
                "{ty}: element {i}: got {g}, gguf says {w}"
            );
        }
    }
}

#[test]
fn activation_encodings_match_their_references() {
    // F16, BF16 and Q8_K are deterministic given the rules: exact bytes.
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_K, GgmlType::F32] {
        let src = floats(&read(&format!("{}.src", ty.name())).unwrap());
        let want = read(&format!("{}.q", ty.name())).unwrap();
        let mut got = vec![0u8; want.len()];
        assert!(quant::quantize(ty, &src, &mut got));
        assert_eq!(got, want, "{ty}: encoding differs");
    }
    // gguf's Q8_0 rounds half away from zero with scale 1/d; llama.cpp's x86 code (ours) rounds
    // half to even with 127/max: same scales, quants within one step.
    let src = floats(&read("Q8_0.src").unwrap());
    let want = read("Q8_0.q").unwrap();
    let mut got = vec![0u8; want.len()];
    assert!(quant::quantize(GgmlType::Q8_0, &src, &mut got));
    for (b, (g, w)) in got.chunks_exact(34).zip(want.chunks_exact(34)).enumerate() {
        assert_eq!(g[..2], w[..2], "block {b}: scale");
        for (x, y) in g[2..].iter().zip(&w[2..]) {
            assert!(
                ((*x as i8) as i32 - (*y as i8) as i32).abs() <= 1,
                "block {b}"
            );
        }
    }
}

/// The dot product of two dequantized rows in f64.
fn reference_dot(wt: GgmlType, w: &[u8], at: GgmlType, a: &[u8], n: usize) -> (f64, f64) {
    let mut wf = vec![0.0f32; n];
    let mut af = vec![0.0f32; n];
    assert!(quant::dequantize(wt, w, &mut wf));
    assert!(quant::dequantize(at, a, &mut af));
    let dot = wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum();
    let mag = wf
        .iter()
        .zip(&af)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum();
    (dot, mag)
}

#[test]
fn scalar_dot_products_equal_the_dot_of_dequantized_rows() {
    let acts = floats(&read("F32.src").unwrap());
    for ty in ALL {
        let t = ty.traits();
        let Some(dot) = t.vec_dot else { continue };
        let q = read(&format!("{}.q", ty.name())).unwrap();
        let rb = ty.row_bytes(COLS).unwrap();
        let at = t.vec_dot_type;
        let arb = at.row_bytes(COLS).unwrap();
        for r in 0..ROWS {
            let a_src = &acts[((r + 1) % ROWS) * COLS..][..COLS];
            let mut a = vec![0u8; arb];
            assert!(quant::quantize(at, a_src, &mut a));
            let w = &q[r * rb..(r + 1) * rb];
            let got = dot(COLS, w, &a) as f64;
            let (want, mag) = reference_dot(ty, w, at, &a, COLS);
            // Q8_1 stores d * sum(q) as a half: the min term carries its rounding.
            let tol = if at == GgmlType::Q8_1 { 2e-3 } else { 1e-5 } * mag.max(1e-3);
            assert!(
                (got - want).abs() <= tol,
                "{ty} row {r}: got {got}, want {want} (tol {tol})"
            );
        }
    }
}
