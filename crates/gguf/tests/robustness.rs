//! The GGUF reader on files this test writes itself: every value type round-trips; every
//! truncation and hundreds of random corruptions give an error or a valid file, never a panic
//! and never an allocation out of proportion to the file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use torchless_gguf::{parse_header, Array, GgufError, GgufWriter, Value};
use torchless_kernels::GgmlType;

/// Records the largest single allocation request made by the current thread (tests run in
/// parallel, so a global figure would mix them up).
struct Largest;
thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

fn reset_largest() {
    LARGEST.with(|l| l.set(0));
}

fn largest() -> usize {
    LARGEST.with(|l| l.get())
}

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

fn sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("t.u8", Value::U8(7))
        .meta("t.i8", Value::I8(-7))
        .meta("t.u16", Value::U16(65535))
        .meta("t.i16", Value::I16(-300))
        .meta("t.u32", Value::U32(4_000_000_000))
        .meta("t.i32", Value::I32(-5))
        .meta("t.f32", Value::F32(0.5))
        .meta("t.bool", Value::Bool(true))
        .meta("t.u64", Value::U64(1 << 40))
        .meta("t.i64", Value::I64(-(1 << 40)))
        .meta("t.f64", Value::F64(1e-300))
        .meta(
            "t.strings",
            Value::Array(Array::String(["a", "ü", ""].into_iter().collect())),
        )
        .meta("t.u32s", Value::Array(Array::U32(vec![1, 2, 3])))
        .meta(
            "t.nested",
            Value::Array(Array::Array(vec![
                Array::I16(vec![-1, 1]),
                Array::String(["x"].into_iter().collect()),
                Array::Array(vec![Array::Bool(vec![true, false])]),
            ])),
        );
    w.tensor_f32("a", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    w.tensor("b", GgmlType::Q8_0, &[32, 2], vec![3u8; 68]);
    w.tensor("c", GgmlType::Q4_K, &[256], vec![9u8; 144]);
    w.to_bytes()
}

#[test]
fn every_value_type_round_trips() {
    let bytes = sample();
    let h = parse_header(&bytes).expect("valid file");
    let m = &h.metadata;
    assert_eq!(h.version, 3);
    assert_eq!(m.str("general.architecture").unwrap(), "llama");
    assert_eq!(m.u32("t.u8").unwrap(), 7);
    assert_eq!(m.get("t.i8"), Some(&Value::I8(-7)));
    assert_eq!(m.u32("t.u16").unwrap(), 65535);
    assert_eq!(m.get("t.i16"), Some(&Value::I16(-300)));
    assert_eq!(m.u32("t.u32").unwrap(), 4_000_000_000);
    assert!(
        m.u32("t.i32").is_err(),
        "negative value must not pass as unsigned"
    );
    assert_eq!(m.f32("t.f32").unwrap(), 0.5);
    assert!(m.bool("t.bool").unwrap());
    assert_eq!(m.u64("t.u64").unwrap(), 1 << 40);
    assert_eq!(m.get("t.i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(m.get("t.f64"), Some(&Value::F64(1e-300)));
    assert_eq!(m.strings("t.strings").unwrap(), &["a", "ü", ""][..]);
    assert_eq!(m.array("t.u32s").unwrap(), &Array::U32(vec![1, 2, 3]));
    match m.array("t.nested").unwrap() {
        Array::Array(v) => {
            assert_eq!(v.len(), 3);
            assert_eq!(v[2], Array::Array(vec![Array::Bool(vec![true, false])]));
        }
        other => panic!("nested array parsed as {other:?}"),
    }
    assert!(matches!(
        m.u32("missing"),
        Err(torchless_gguf::MetadataError::Missing(_))
    ));
    let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(h.tensors[1].size, 68);
    assert_eq!(h.tensors[2].ty, GgmlType::Q4_K);
    assert_eq!(h.data_offset % 32, 0);
    for t in &h.tensors {
        assert_eq!(t.offset % 32, 0);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    for len in 0..bytes.len() {
        assert!(
            parse_header(&bytes[..len]).is_err(),
            "truncated to {len} bytes but parsed"
        );
    }
}

#[test]
fn random_corruptions_never_panic_or_over_allocate() {
    let bytes = sample();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..600 {
        let mut b = bytes.clone();
        let flips = 1 + next() % 4;
        for _ in 0..flips {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        reset_largest();
        match parse_header(&b) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
        let largest = largest();
        assert!(
            largest <= 64 * b.len(),
            "allocated {largest} bytes for a {}-byte file",
            b.len()
        );
    }
    assert!(err > 0 && ok + err == 600);
}

fn header_with(tensor_count: u64, kv_count: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&tensor_count.to_le_bytes());
    b.extend_from_slice(&kv_count.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn hostile_headers_give_named_errors() {
    // Not GGUF at all.
    assert!(matches!(
        parse_header(b"GGML...."),
        Err(GgufError::NotGguf { .. })
    ));
    assert!(matches!(parse_header(b""), Err(GgufError::NotGguf { .. })));
    // Unsupported and big-endian versions.
    let mut v1 = header_with(0, 0, &[]);
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(parse_header(&v1), Err(GgufError::Version(1))));
    let mut be = header_with(0, 0, &[]);
    be[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(parse_header(&be), Err(GgufError::BigEndian)));
    // Absurd counts are refused before anything is allocated.
    reset_largest();
    assert!(matches!(
        parse_header(&header_with(u64::MAX, 0, &[])),
        Err(GgufError::Truncated { .. })
    ));
    assert!(matches!(
        parse_header(&header_with(0, u64::MAX, &[])),
        Err(GgufError::Truncated { .. })
    ));
    // A string claiming 2^60 bytes.
    let mut huge_str = (1u64 << 60).to_le_bytes().to_vec();
    huge_str.extend_from_slice(&[b'a'; 16]);
    match parse_header(&header_with(0, 1, &huge_str)) {
        Err(GgufError::Truncated { field, offset, .. }) => {
            assert_eq!(field, "metadata[0].key");
            assert_eq!(offset, 32);
        }
        other => panic!("expected a truncation error, got {other:?}"),
    }
    // An array claiming 2^62 u64 elements.
    let mut arr = 10u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let e = parse_header(&header_with(0, 1, &kv("x", 9, &arr))).unwrap_err();
    assert!(e.to_string().contains("metadata 'x'"), "{e}");
    assert!(largest() < 1 << 20);
    // Unknown value type.
    let e = parse_header(&header_with(0, 1, &kv("k", 99, &[]))).unwrap_err();
    assert!(matches!(e, GgufError::ValueType { ty: 99, .. }), "{e}");
    // Arrays nested past the limit.
    let mut deep = Vec::new();
    for _ in 0..20 {
        deep.extend_from_slice(&9u32.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    let e = parse_header(&header_with(0, 1, &kv("d", 9, &deep))).unwrap_err();
    assert!(matches!(e, GgufError::TooDeep { .. }), "{e}");
    // Invalid UTF-8 in a string value.
    let mut bad = 2u64.to_le_bytes().to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    let e = parse_header(&header_with(0, 1, &kv("s", 8, &bad))).unwrap_err();
    assert!(matches!(e, GgufError::Utf8 { .. }), "{e}");
    // Alignment that is not a power of two.
    let e = parse_header(&header_with(
        0,
        1,
        &kv("general.alignment", 4, &3u32.to_le_bytes()),
    ))
    .unwrap_err();
    assert!(matches!(e, GgufError::Alignment(3)), "{e}");
}

fn one_tensor(n_dims: u32, dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut t = 1u64.to_le_bytes().to_vec();
    t.push(b't');
    t.extend_from_slice(&n_dims.to_le_bytes());
    for d in dims {
        t.extend_from_slice(&d.to_le_bytes());
    }
    t.extend_from_slice(&ty.to_le_bytes());
    t.extend_from_slice(&offset.to_le_bytes());
    let mut b = header_with(1, 0, &t);
    b.resize(b.len().div_ceil(32) * 32 + data, 0);
    b
}

#[test]
fn hostile_tensor_infos_give_named_errors() {
    assert!(parse_header(&one_tensor(2, &[4, 2], 0, 0, 32)).is_ok());
    let e = parse_header(&one_tensor(9, &[1; 9], 0, 0, 32)).unwrap_err();
    assert!(matches!(e, GgufError::Dims { n_dims: 9, .. }), "{e}");
    let e = parse_header(&one_tensor(2, &[1 << 40, 1 << 40], 0, 0, 32)).unwrap_err();
    assert!(matches!(e, GgufError::TensorSize { .. }), "{e}");
    let e = parse_header(&one_tensor(1, &[u64::MAX], 0, 0, 32)).unwrap_err();
    assert!(matches!(e, GgufError::Dim { .. }), "{e}");
    let e = parse_header(&one_tensor(1, &[8], 4, 0, 32)).unwrap_err();
    assert!(matches!(e, GgufError::TensorType { ty: 4, .. }), "{e}");
    let e = parse_header(&one_tensor(1, &[33], 8, 0, 64)).unwrap_err();
    assert!(matches!(e, GgufError::PartialBlock { .. }), "{e}");
    let e = parse_header(&one_tensor(1, &[8], 0, 4, 64)).unwrap_err();
    assert!(matches!(e, GgufError::Misaligned { .. }), "{e}");
    let e = parse_header(&one_tensor(1, &[8], 0, 32, 32)).unwrap_err();
    assert!(matches!(e, GgufError::OutOfBounds { .. }), "{e}");
    let e = parse_header(&one_tensor(1, &[8], 0, u64::MAX - 31, 32)).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::Misaligned { .. } | GgufError::OutOfBounds { .. }
        ),
        "{e}"
    );
    // Error messages name the tensor and the byte offset.
    let msg = parse_header(&one_tensor(1, &[8], 4, 0, 32))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("'t'") && msg.contains("byte"), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn arbitrary_tails_never_panic(cut in 0usize..600, tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut b = sample();
        b.truncate(cut.min(b.len()));
        b.extend_from_slice(&tail);
        let _ = parse_header(&b);
    }
}
