//! Tests of the paged KV cache: block tables, the prefix cache, and sliding-window groups.

use super::*;

fn cache(n_blocks: usize) -> KvCache {
    KvCache::new(KvConfig::new(2, 2, 4, 4, n_blocks, KvType::F32))
}

#[test]
fn sequences_take_and_return_blocks() {
    let mut c = cache(4);
    c.reserve(7, 6).unwrap();
    assert_eq!(c.blocks(0, 7), &[0, 1]);
    c.reserve(9, 4).unwrap();
    assert_eq!(c.blocks(0, 9), &[2]);
    assert_eq!(
        c.reserve(7, 13),
        Err(CacheError::PoolExhausted { need: 2, free: 1 })
    );
    assert_eq!(c.truncate(7, 3), 0, "nothing was written");
    assert_eq!(c.blocks(0, 7), &[0]);
    assert_eq!(c.free_blocks(), 2);
    c.remove(9);
    assert_eq!(c.free_blocks(), 3);
    c.reserve(7, 13).unwrap();
    assert_eq!(c.blocks(0, 7).len(), 4);
    assert_eq!(c.free_blocks(), 0);
    c.clear();
    assert_eq!(c.free_blocks(), 4);
}

#[test]
fn writes_land_where_the_table_points() {
    let mut c = cache(3);
    c.reserve(1, 8).unwrap();
    let k: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let v: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
    c.write(1, 1, 5, &k, &v).unwrap();
    assert_eq!(c.seq_len(1), 6);
    // Positions that were not reserved, unknown sequences and short rows are errors.
    let not = |seq, pos| Err(CacheError::NotReserved { seq, pos });
    assert_eq!(c.write(1, 1, 8, &k, &v), not(1, 8));
    assert_eq!(c.write(1, 2, 0, &k, &v), not(2, 0));
    assert_eq!(c.write(3, 1, 0, &k, &v), not(1, 0));
    assert!(matches!(
        c.write(1, 1, 0, &k[..7], &v),
        Err(CacheError::Width { what: "keys", .. })
    ));
    assert_eq!(c.seq_len(1), 6);
    let at = c.offset(1, c.blocks(0, 1)[1], 1, 1);
    let vat = c.offset(1, c.blocks(0, 1)[1], 1, 0) + 1;
    match (c.keys(1), c.values(1)) {
        (KvStore::F32(ks), KvStore::F32(vs)) => {
            assert_eq!(&ks[at..at + 4], &[4.0, 5.0, 6.0, 7.0]);
            let v: Vec<f32> = (0..4).map(|d| vs[vat + d * 4]).collect();
            assert_eq!(v, [-4.0, -5.0, -6.0, -7.0]);
        }
        _ => unreachable!(),
    }
}

fn fill(c: &mut KvCache, seq: SeqId, from: usize, to: usize, val: impl Fn(usize) -> f32) {
    c.reserve(seq, to).unwrap();
    for pos in from..to {
        let k = vec![val(pos); 8];
        for l in 0..2 {
            c.write(l, seq, pos, &k, &k).unwrap();
        }
    }
}

fn key(c: &KvCache, seq: SeqId, pos: usize) -> f32 {
    let b = c.blocks(0, seq)[pos / 4];
    match c.keys(1) {
        KvStore::F32(ks) => ks[c.offset(1, b, 1, pos % 4)],
        _ => unreachable!(),
    }
}

#[test]
fn a_shared_prefix_is_reused_and_copied_before_a_write() {
    let mut c = cache(6);
    let tokens: Vec<u32> = (0..10).collect();
    fill(&mut c, 1, 0, 10, |p| p as f32);
    c.commit(1, &tokens);
    // Two full blocks are findable; the last token is always left to compute.
    assert_eq!(c.cached_prefix_len(&tokens[..9]), 8);
    assert_eq!(c.attach_prefix(2, &tokens[..9]), Ok(8));
    assert_eq!((c.exclusive_blocks(1), c.exclusive_blocks(2)), (1, 0));
    assert_eq!(c.blocks(0, 2), &c.blocks(0, 1)[..2]);
    assert_eq!(c.attach_prefix(3, &tokens[..8]), Ok(4));
    assert_eq!(
        c.attach_prefix(3, &tokens),
        Err(CacheError::NotEmpty { seq: 3 })
    );
    let other: Vec<u32> = (100..110).collect();
    assert_eq!(c.attach_prefix(4, &other), Ok(0));
    // Writing into a shared block is refused; reserving copies it first.
    assert_eq!(
        c.write(0, 2, 7, &[0.0; 8], &[0.0; 8]),
        Err(CacheError::Shared { seq: 2, pos: 7 })
    );
    assert_eq!(c.truncate(2, 6), 6);
    assert_eq!(c.blocks_needed(2, 8), 1);
    let shared = c.blocks(0, 1)[1];
    fill(&mut c, 2, 6, 8, |p| -(p as f32));
    assert_ne!(c.blocks(0, 2)[1], shared);
    assert_eq!(key(&c, 2, 5), 5.0, "copied from the shared block");
    assert_eq!(key(&c, 2, 6), -6.0);
    assert_eq!(key(&c, 1, 6), 6.0, "the other sequence keeps its values");
    // Freed sequences leave their blocks findable until the space is needed.
    for s in [1, 2, 3, 4] {
        c.remove(s);
    }
    assert_eq!((c.used_blocks(), c.free_blocks()), (0, 6));
    assert_eq!(c.cached_blocks(), 2);
    assert_eq!(c.attach_prefix(5, &tokens), Ok(8));
    assert_eq!(
        c.reserve(5, 25),
        Err(CacheError::TooLong {
            need: 25,
            capacity: 24
        })
    );
    c.clear();
    assert_eq!((c.cached_blocks(), c.attach_prefix(6, &tokens)), (0, Ok(0)));
}

/// Layer 0 sees everything, layer 1 a window of 6 positions; blocks of 4; one sequence
/// growing by at most 4 positions a step.
#[test]
fn where_every_layer_slides_the_pool_stays_whole() {
    let cfg = KvConfig::new(2, 2, 4, 4, 16, KvType::F32).with_windows(vec![Some(6); 2], 1, 4);
    assert_eq!(cfg.pool_blocks(Some(6)), 16);
}

fn windowed(n_blocks: usize) -> KvCache {
    let cfg = KvConfig::new(2, 2, 4, 4, n_blocks, KvType::F32);
    KvCache::new(cfg.with_windows(vec![None, Some(6)], 1, 4))
}

fn key_of(c: &KvCache, layer: usize, seq: SeqId, pos: usize) -> Option<f32> {
    let b = *c.blocks(layer, seq).get(pos / 4)?;
    match c.keys(layer) {
        KvStore::F32(ks) => Some(ks[c.offset(layer, b, 1, pos % 4)]),
        _ => unreachable!(),
    }
}

#[test]
fn a_window_layer_holds_only_its_window() {
    let mut c = windowed(16);
    // (6 + 4 + 3 * 4) / 4 + 1 blocks for the window group, and its hole.
    assert_eq!(c.config().pool_blocks(Some(6)), 7);
    let per_block = 2 * 2 * 4 * 4 * 4;
    assert_eq!(c.config().bytes(), (16 + 8) * per_block);
    let tokens: Vec<u32> = (0..64).collect();
    for step in 0..16 {
        fill(&mut c, 1, step * 4, step * 4 + 4, |p| p as f32);
        c.commit(1, &tokens);
        assert!(c.used_blocks_of(1) <= 4, "step {step}");
    }
    assert_eq!((c.used_blocks_of(0), c.used_blocks_of(1)), (16, 4));
    // The window layer's early blocks point at the (zero) hole; what the next queries
    // read (positions 59.. and the block before them) is still there.
    let hole = c.blocks(1, 1)[0];
    assert_eq!(hole, 7);
    assert!(c.blocks(1, 1)[..12].iter().all(|&b| b == hole));
    assert_eq!(key_of(&c, 1, 1, 3), Some(0.0));
    for p in 52..64 {
        assert_eq!(key_of(&c, 1, 1, p), Some(p as f32));
        assert_eq!(key_of(&c, 0, 1, p - 52), Some((p - 52) as f32));
    }
    // Positions in slid-out blocks take no writes.
    assert_eq!(
        c.write(1, 1, 3, &[0.0; 8], &[0.0; 8]),
        Err(CacheError::NotReserved { seq: 1, pos: 3 })
    );
    // A rollback of up to a block keeps everything; further back, nothing is kept.
    assert_eq!(c.truncate(1, 60), 60);
    assert_eq!(c.truncate(1, 56), 56);
    assert_eq!(c.truncate(1, 40), 0);
    assert_eq!(
        (c.seq_len(1), c.used_blocks_of(0), c.used_blocks_of(1)),
        (0, 0, 0)
    );
}

#[test]
fn a_prefix_needs_the_window_layers_last_blocks() {
    let mut c = windowed(32);
    let tokens: Vec<u32> = (0..64).collect();
    for step in 0..10 {
        fill(&mut c, 1, step * 4, step * 4 + 4, |p| p as f32);
        c.commit(1, &tokens);
    }
    c.remove(1);
    // 40 positions held: the whole-context layer keeps all ten blocks findable, the
    // window layer the last ones it held (the ones before were evicted for new ones).
    assert_eq!(c.cached_prefix_len(&tokens[..41]), 40);
    assert_eq!(c.attach_prefix(2, &tokens[..41]), Ok(40));
    assert_eq!(c.blocks(0, 2).len(), 10);
    assert_eq!(key_of(&c, 0, 2, 1), Some(1.0));
    // Position 40 reads from position 35: blocks 8 and 9 of the window layer.
    assert_eq!(c.blocks(1, 2)[..8], [7; 8]);
    assert_eq!(key_of(&c, 1, 2, 39), Some(39.0));
    assert_eq!(key_of(&c, 1, 2, 35), Some(35.0));
    c.remove(2);
    // The window pool (7 blocks) reused the blocks of positions 0..12 for positions
    // 28..40; those of 12..28 stay findable. A 20-position prefix reads blocks 3 and 4
    // of the window layer: taken. A 12-position one would read blocks 1 and 2, which
    // are gone, and so would every shorter one: nothing is taken.
    assert_eq!(c.cached_prefix_len(&tokens[..21]), 20);
    assert_eq!(c.cached_prefix_len(&tokens[..13]), 0);
    assert_eq!(c.attach_prefix(3, &tokens[..21]), Ok(20));
    for p in 12..20 {
        assert_eq!(key_of(&c, 1, 3, p), Some(p as f32), "{p}");
    }
    assert_eq!(c.attach_prefix(4, &tokens[..13]), Ok(0));
}

/// A quantized cache whose rows are not whole blocks of 32 refuses the write (no silent skip),
/// and one that fits stores what it is given.
#[test]
fn quantized_writes_store_or_fail() {
    let bad =
        KvConfig::new(1, 1, 16, 4, 4, KvType::F32).with_types(KvType::Q8_0, KvType::F32, true);
    assert!(bad.check().is_err());
    let mut c = KvCache::new(bad);
    c.reserve(0, 1).unwrap();
    let e = c.write(0, 0, 0, &[1.0; 16], &[1.0; 16]).unwrap_err();
    assert!(matches!(e, CacheError::Layout(_)), "{e}");
    let good =
        KvConfig::new(1, 1, 32, 4, 4, KvType::F32).with_types(KvType::Q8_0, KvType::Q4_0, true);
    assert!(good.check().is_ok());
    let mut c = KvCache::new(good);
    c.reserve(0, 2).unwrap();
    let row: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
    c.write(0, 0, 1, &row, &row).unwrap();
    let KvStore::Q8_0(k) = c.keys(0) else {
        panic!("keys are Q8_0")
    };
    let at = c.offset(0, c.blocks(0, 0)[0], 0, 1) / 32 * 34;
    let mut back = vec![0.0; 32];
    assert!(torchless_kernels::quant::dequantize(
        torchless_kernels::GgmlType::Q8_0,
        &k[at..at + 34],
        &mut back
    ));
    for (a, b) in back.iter().zip(&row) {
        assert!((a - b).abs() <= 16.0 / 127.0, "{a} vs {b}");
    }
}
