//! Prints the measured read bandwidth for 1..=N threads.
fn main() {
    for t in 1..=2 {
        let pool = torchless_kernels::ThreadPool::new(t);
        let bw = torchless_kernels::bandwidth::measure_read(&pool, 256 << 20, 5);
        println!("{t} threads: {:.1} GB/s", bw / 1e9);
    }
}
