//! Evaluates token ids with a model and prints the last logits' top 5 (a debugging aid;
//! combine with TORCHLESS_DUMP=1 to print every intermediate tensor).
//! Usage: cargo run --release -p torchless-model --example eval_ids -- MODEL.gguf 1,2,3 [precise]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(ids)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: eval_ids MODEL.gguf ID,ID,... [precise]");
        std::process::exit(2);
    };
    let ids: Vec<u32> = ids
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let precision = if args.get(3).is_some_and(|a| a == "precise") {
        torchless_model::Precision::F32
    } else {
        torchless_model::Precision::Reference
    };
    let opts = torchless_model::LoadOptions {
        precision,
        ..Default::default()
    };
    let model = match torchless_model::Model::load(path, &opts) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut s = torchless_model::Session::new(
        &model,
        torchless_model::SessionOptions {
            n_ctx: 512,
            ..Default::default()
        },
    );
    match s.eval(&ids) {
        Ok(logits) => {
            let mut idx: Vec<usize> = (0..logits.len()).collect();
            idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            for &i in &idx[..5] {
                println!("{i}\t{:.4}", logits[i]);
            }
        }
        Err(e) => eprintln!("error: {e}"),
    }
}
