#!/usr/bin/env bash
# Serving throughput and latency of `torchless serve` and llama.cpp's `llama-server`, side by
# side on the same machine, models, prompts, lengths, thread count and number of parallel
# sequences.
#
#   bench/serve_compare.sh [--threads N] [--max-tokens M] [--per-client R] [--concurrency LIST]
#
# For SmolLM2-135M Q4_1 and Qwen2.5-Coder-0.5B Q4_K_M: starts each server in turn (torchless in
# its default batch-invariant numerics, torchless with --llama-cpp-numerics, then llama-server
# with as many slots as the highest concurrency), drives it with bench/serve_bench.py at
# concurrency 1, 4, 16 and 32, and prints the table (also appended to bench/RESULTS.md).
# llama-server comes from the build of bench/compare.sh (LLAMA_CPP_BUILD names another one);
# it is built there with -DLLAMA_BUILD_SERVER=ON. Not part of CI; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=2
MAXTOK=64
PER=4
CONC=1,4,16,32
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --max-tokens) MAXTOK=$2; shift 2 ;;
    --per-client) PER=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
SLOTS=$(echo "$CONC" | tr ',' '\n' | sort -n | tail -1)
CACHE=${TORCHLESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/torchless}
BUILD=${LLAMA_CPP_BUILD:-$CACHE/llamacpp/build}
LSERVER=$BUILD/bin/llama-server
[ -x "$LSERVER" ] || { echo "serve_compare: no llama-server in $BUILD (configure it with -DLLAMA_BUILD_SERVER=ON)" >&2; exit 2; }
cargo build --release --quiet
TL=target/release/torchless
OUT=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$OUT"' EXIT
PORT=18093
CTX=512

wait_up() {
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "serve_compare: the server did not come up" >&2; exit 1
}

run() { # label, command...
  local label=$1; shift
  "$@" >"$OUT/$label.log" 2>&1 &
  PID=$!
  wait_up
  python3 bench/serve_bench.py --url "http://127.0.0.1:$PORT" --concurrency "$CONC" \
    --max-tokens "$MAXTOK" --requests-per-client "$PER" --label "$label" | tee -a "$OUT/results.jsonl"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}

for m in smollm2 qwen2.5-coder-0.5b-instruct; do
  path=$($TL fetch "$m" | tail -1)
  name=$(basename "$path" .gguf)
  run "$name|torchless" $TL serve -m "$path" -t "$THREADS" -c "$CTX" --batch-size "$SLOTS" --port "$PORT"
  run "$name|torchless-llama-numerics" $TL serve -m "$path" -t "$THREADS" -c "$CTX" --batch-size "$SLOTS" --llama-cpp-numerics --port "$PORT"
  LD_LIBRARY_PATH="$BUILD/bin" run "$name|llama-server" "$LSERVER" -m "$path" -t "$THREADS" -tb "$THREADS" \
    -c $((CTX * SLOTS)) -np "$SLOTS" --port "$PORT" --no-webui
done

python3 - "$OUT/results.jsonl" <<'PY' | tee "$OUT/table.md"
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(dict)
for r in rows:
    model, eng = r["label"].split("|")
    by[(model, r["concurrency"])][eng] = r
print("| model | streams | torchless t/s | llama-server t/s | ratio | torchless (llama.cpp numerics) t/s | ITL p50 / p99 ms (torchless) | ITL p50 / p99 ms (llama-server) | TTFT p50 ms (torchless / llama-server) |")
print("|---|---|---|---|---|---|---|---|---|")
for (model, c), e in sorted(by.items()):
    t, l, n = e.get("torchless"), e.get("llama-server"), e.get("torchless-llama-numerics")
    f = lambda r, k: f"{r[k]:.1f}" if r else "-"
    ratio = f"{t['tokens_per_s'] / l['tokens_per_s']:.2f}" if t and l else "-"
    print(f"| {model} | {c} | {f(t,'tokens_per_s')} | {f(l,'tokens_per_s')} | {ratio} | {f(n,'tokens_per_s')} | "
          f"{f(t,'itl_p50_ms')} / {f(t,'itl_p99_ms')} | {f(l,'itl_p50_ms')} / {f(l,'itl_p99_ms')} | {f(t,'ttft_p50_ms')} / {f(l,'ttft_p50_ms')} |")
PY
{
  echo
  echo "## Serving, side by side ($(date -u +%Y-%m-%d), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $THREADS threads, $MAXTOK tokens per request, $PER requests per stream)"
  echo
  echo "bench/serve_compare.sh: streaming /v1/completions, greedy, ignore_eos; aggregate generated tokens/s over each level's wall time."
  echo
  cat "$OUT/table.md"
} >> bench/RESULTS.md
