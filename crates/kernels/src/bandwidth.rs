//! Measures how fast this machine streams memory into the cores: the ceiling of token
//! generation, which must read every weight once per token.

use std::time::Instant;

use crate::pool::ThreadPool;

/// Sums `data` as fast as the hardware allows (the sum keeps the loads from being elided).
#[inline(never)]
fn read_sum(data: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    chunks
        .remainder()
        .iter()
        .fold(acc.iter().fold(0u64, |a, &b| a.wrapping_add(b)), |a, &b| {
            a.wrapping_add(b)
        })
}

/// Best read bandwidth in bytes per second over `reps` passes of a `bytes`-sized buffer,
/// split over the pool's threads.
pub fn measure_read(pool: &ThreadPool, bytes: usize, reps: usize) -> f64 {
    let n = (bytes / 8).max(1024);
    let data: Vec<u64> = (0..n as u64).collect();
    let per = n.div_ceil(pool.n_threads());
    let mut best = 0.0f64;
    let sink = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        pool.run(|tid| {
            let start = (tid * per).min(n);
            let end = ((tid + 1) * per).min(n);
            sink.fetch_add(
                read_sum(&data[start..end]),
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max((n * 8) as f64 / secs);
    }
    std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
    best
}
