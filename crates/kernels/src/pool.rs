//! A persistent pool of worker threads for the compute kernels.
//!
//! `run` hands one closure to every thread (the caller is thread 0) and returns when all have
//! finished; `parallel_for` splits a range into chunks that threads take from a shared counter,
//! so a thread that the OS delays (another process sharing the cores) simply takes fewer chunks
//! instead of holding everyone up. Idle workers spin briefly, then yield, then sleep on a
//! condition variable: fast hand-off between the hundreds of small jobs of one token, no burned
//! cores between requests, and no collapse when the machine is oversubscribed.
//!
//! A job may itself call `run` or `parallel_for` on the same pool (a mixture-of-experts layer
//! splitting each expert's product, say): the nested call does not dispatch — that would wait
//! for workers busy with the outer job — but runs on the calling thread under its own thread
//! index, so per-thread scratch stays the calling thread's.
//!
//! The pool allocates nothing per job. It must not know what the jobs compute.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize) + Sync;

thread_local! {
    /// The pool whose job this thread is running (its `Shared` address) and the thread's index
    /// in it; `(0, 0)` outside any job.
    static IN_JOB: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Runs `f` with this thread marked as running a job of pool `id` as thread `tid`.
fn as_job_thread<R>(id: usize, tid: usize, f: impl FnOnce() -> R) -> R {
    let before = IN_JOB.with(|c| c.replace((id, tid)));
    let r = f();
    IN_JOB.with(|c| c.set(before));
    r
}

/// How long an idle thread spins, then yields, before it sleeps.
const SPIN_FOR: Duration = Duration::from_micros(50);
const YIELD_FOR: Duration = Duration::from_micros(2000);

struct Shared {
    /// The current job; written by the dispatcher only while no worker can be reading it.
    job: UnsafeCell<Option<*const Job>>,
    generation: AtomicUsize,
    remaining: AtomicUsize,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    wake_lock: Mutex<()>,
    wake: Condvar,
    caller_waiting: AtomicBool,
    done_lock: Mutex<()>,
    done: Condvar,
}

// SAFETY: `job` is written by the dispatching thread before it publishes a new generation
// (Release) and read by workers only after they observe that generation (Acquire); it is not
// written again until every worker has reported completion through `remaining`.
unsafe impl Sync for Shared {}
// SAFETY: the raw job pointer is only dereferenced under the protocol above.
unsafe impl Send for Shared {}

/// A fixed set of worker threads. One pool serves one engine; `run` takes `&self` but jobs
/// from two threads at once are serialized by `dispatch_lock`.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    dispatch_lock: Mutex<()>,
    n_threads: usize,
    /// Contention tracking: consecutive jobs whose workers finished late, and how many more
    /// `parallel_for` jobs the caller runs alone.
    late: AtomicUsize,
    solo_left: AtomicUsize,
    solo_len: AtomicUsize,
    /// Moving average of the share of each job the caller spent waiting for workers (‰).
    wait_avg: AtomicUsize,
}

/// When the caller spends more than this share (‰) of its jobs waiting for workers, on
/// average, they are being descheduled (the machine is shared) and the pool stops waiting for
/// them for a while. With work taken in small chunks a quiet machine stays far below it.
const LATE_AVG_PERMILLE: usize = 250;
const SOLO_MIN: usize = 1_000;
const SOLO_MAX: usize = 64_000;

impl ThreadPool {
    /// A pool of `n_threads` threads in all, counting the caller (so `n_threads - 1` workers).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            generation: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
            caller_waiting: AtomicBool::new(false),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(n_threads - 1);
        for idx in 1..n_threads {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("torchless-worker-{idx}"))
                .spawn(move || worker_loop(&s, idx));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    tracing::warn!("could not start worker thread {idx}: {e}; using fewer threads");
                    break;
                }
            }
        }
        let n_threads = workers.len() + 1;
        ThreadPool {
            shared,
            workers,
            dispatch_lock: Mutex::new(()),
            n_threads,
            late: AtomicUsize::new(0),
            solo_left: AtomicUsize::new(0),
            solo_len: AtomicUsize::new(SOLO_MIN),
            wait_avg: AtomicUsize::new(0),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// This pool's identity for [`IN_JOB`].
    fn id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// The calling thread's index when it is running one of this pool's jobs.
    fn nested(&self) -> Option<usize> {
        let (id, tid) = IN_JOB.with(|c| c.get());
        (id == self.id()).then_some(tid)
    }

    /// Runs `f(thread_index)` on every thread of the pool and returns when all calls returned.
    /// Called from inside one of this pool's jobs, it runs `f` once, on the calling thread
    /// with that thread's index.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        if let Some(tid) = self.nested() {
            f(tid);
            return;
        }
        self.run_timed(f);
    }

    /// [`ThreadPool::run`], returning how long the caller waited for the workers after its own
    /// part was done.
    fn run_timed<F: Fn(usize) + Sync>(&self, f: F) -> Duration {
        if self.n_threads == 1 {
            f(0);
            return Duration::ZERO;
        }
        let _guard = self.dispatch_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job: &(dyn Fn(usize) + Sync + '_) = &f;
        // SAFETY: erases the lifetime of `f`; `run` does not return before every worker has
        // finished with the pointer (`remaining` reaches zero), so it never dangles.
        let ptr: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
        // SAFETY: no worker reads `job` until the generation below is published.
        unsafe { *s.job.get() = Some(ptr) };
        s.remaining.store(self.n_threads - 1, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let id = self.id();
        let mine = catch_unwind(AssertUnwindSafe(|| as_job_thread(id, 0, || f(0))));
        let caller_done = Instant::now();
        wait_until(
            || s.remaining.load(Ordering::Acquire) == 0,
            || {
                s.caller_waiting.store(true, Ordering::SeqCst);
                let mut l = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
                while s.remaining.load(Ordering::SeqCst) != 0 {
                    l = s.done.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.caller_waiting.store(false, Ordering::SeqCst);
            },
        );
        // SAFETY: all workers are done with the job.
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            // A kernel bug, not an input error: surface it on the calling thread.
            resume_unwind(Box::new("a worker thread panicked"));
        }
        caller_done.elapsed()
    }

    /// Calls `f(thread, range)` on consecutive sub-ranges of `0..n` of at most `grain` items,
    /// spread over the threads; chunks are taken first come, first served. `thread` is the
    /// index of the calling thread (for per-thread scratch space).
    ///
    /// Called from inside one of this pool's jobs, it runs the whole range on the calling
    /// thread, with that thread's index.
    pub fn parallel_for<F: Fn(usize, Range<usize>) + Sync>(&self, n: usize, grain: usize, f: F) {
        let grain = grain.max(1);
        if n == 0 {
            return;
        }
        if let Some(tid) = self.nested() {
            f(tid, 0..n);
            return;
        }
        if self.n_threads == 1 || n <= grain {
            f(0, 0..n);
            return;
        }
        // When the workers keep arriving late (the OS is giving their cores to another
        // process), waiting for them costs more than doing their share: the caller works
        // alone for a while, then tries again.
        if self.solo_left.load(Ordering::Relaxed) > 0 {
            self.solo_left.fetch_sub(1, Ordering::Relaxed);
            f(0, 0..n);
            return;
        }
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        let waited = self.run_timed(|tid| loop {
            let start = next.fetch_add(grain, Ordering::Relaxed);
            if start >= n {
                break;
            }
            f(tid, start..(start + grain).min(n));
        });
        let total = started.elapsed().as_nanos().max(1);
        let share = (waited.as_nanos() * 1000 / total) as usize;
        let avg = (self.wait_avg.load(Ordering::Relaxed) * 15 + share) / 16;
        self.wait_avg.store(avg, Ordering::Relaxed);
        if avg > LATE_AVG_PERMILLE {
            let len = self.solo_len.load(Ordering::Relaxed);
            self.solo_left.store(len, Ordering::Relaxed);
            self.solo_len
                .store((len * 2).min(SOLO_MAX), Ordering::Relaxed);
            self.wait_avg.store(0, Ordering::Relaxed);
            self.late.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("workers are being descheduled; computing alone for {len} jobs");
        } else if avg < LATE_AVG_PERMILLE / 4 && self.late.swap(0, Ordering::Relaxed) > 0 {
            // Workers keep up again: contention is over, forget the back-off.
            self.solo_len.store(SOLO_MIN, Ordering::Relaxed);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _l = self
                .shared
                .wake_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Spins, then yields, then calls `sleep` (which must block until `ready` holds).
#[inline]
fn wait_until(ready: impl Fn() -> bool, sleep: impl FnOnce()) {
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        if ready() {
            return;
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) {
            let waited = start.elapsed();
            if waited > YIELD_FOR {
                break;
            }
            if waited > SPIN_FOR {
                std::thread::yield_now();
                continue;
            }
        }
        std::hint::spin_loop();
    }
    sleep();
}

fn worker_loop(s: &Shared, idx: usize) {
    let mut seen = 0usize;
    loop {
        wait_until(
            || s.generation.load(Ordering::Acquire) != seen,
            || {
                let mut l = s.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.generation.load(Ordering::SeqCst) == seen {
                    l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            },
        );
        seen = s.generation.load(Ordering::Acquire);
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the generation we observed was published after `job` was written, and the
        // dispatcher keeps the closure alive until we decrement `remaining`.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            // SAFETY: see above; the pointer is live for the duration of this job.
            let f = unsafe { &*job };
            let id = s as *const Shared as usize;
            if catch_unwind(AssertUnwindSafe(|| as_job_thread(id, idx, || f(idx)))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        if s.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && s.caller_waiting.load(Ordering::SeqCst)
        {
            let _l = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_once_per_job() {
        let pool = ThreadPool::new(3);
        for _ in 0..200 {
            let hits = [
                AtomicUsize::new(0),
                AtomicUsize::new(0),
                AtomicUsize::new(0),
            ];
            pool.run(|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            for h in &hits[..pool.n_threads()] {
                assert_eq!(h.load(Ordering::Relaxed), 1);
            }
        }
    }

    /// A job that calls the pool again (as a per-expert split would) finishes, covers every
    /// inner index once and sees only its own thread's index.
    #[test]
    fn nested_jobs_run_on_the_calling_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = ThreadPool::new(3);
            let seen: Vec<AtomicUsize> = (0..64 * 50).map(|_| AtomicUsize::new(0)).collect();
            let wrong_thread = AtomicBool::new(false);
            pool.parallel_for(64, 1, |outer_tid, outer| {
                for o in outer {
                    pool.parallel_for(50, 3, |tid, inner| {
                        if tid != outer_tid {
                            wrong_thread.store(true, Ordering::Relaxed);
                        }
                        for i in inner {
                            seen[o * 50 + i].fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    pool.run(|tid| {
                        if tid != outer_tid {
                            wrong_thread.store(true, Ordering::Relaxed);
                        }
                    });
                }
            });
            let once = seen.iter().all(|s| s.load(Ordering::Relaxed) == 1);
            let _ = tx.send((once, wrong_thread.load(Ordering::Relaxed)));
        });
        let got = rx.recv_timeout(Duration::from_secs(60));
        assert_eq!(got, Ok((true, false)), "nested jobs deadlocked or misran");
    }

    #[test]
    fn parallel_for_covers_every_index_exactly_once() {
        let pool = ThreadPool::new(2);
        for n in [0usize, 1, 7, 64, 1000] {
            let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.parallel_for(n, 3, |_, r| {
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(YIELD_FOR * 3);
        let count = AtomicUsize::new(0);
        pool.run(|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
