#!/usr/bin/env bash
# Draft-model speculative decoding against plain decoding, on a fixed set of code prompts, with
# llama.cpp's speculative example on the same pair in the same run.
#
#   bench/speculative.sh [--threads N] [--n-predict N] [--draft-vocab N]
#
# For each prompt (two raw code openings, two chat requests for code), greedy, in turn:
#   - torchless plain decoding of the target;
#   - torchless --draft-model (adaptive length), with the draft's whole vocabulary and with
#     --draft-vocab N (default 32768);
#   - llama.cpp's llama-speculative with the same pair, draft 5 (when built: bench/compare.sh
#     builds it; LLAMA_CPP_BUILD names another build).
# Prints one line per run: tokens/s, and the speculation summary. Not part of CI; run it on a
# quiet machine, nothing else running.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=2
N=128
WINDOW=32768
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --n-predict) N=$2; shift 2 ;;
    --draft-vocab) WINDOW=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

CACHE=${TORCHLESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/torchless}
BUILD=${LLAMA_CPP_BUILD:-$CACHE/llamacpp/build}
TARGET=${TARGET:-$CACHE/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}
DRAFT=${DRAFT:-$CACHE/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
cargo build --release --quiet
T=target/release/torchless
[ -f "$TARGET" ] || $T fetch qwen2.5-coder-1.5b
[ -f "$DRAFT" ] || $T fetch qwen2.5-coder-0.5b

RAW1=$'# Python: a binary search tree with insert, delete, search and in-order traversal\nclass Node:\n'
RAW2=$'// Rust: split a CSV line into fields, with quoted fields and escaped quotes\npub fn split_csv_line(line: &str) -> Vec<String> {\n'
CHAT1='Write a Python function that merges two sorted lists into one sorted list, with a docstring.'
CHAT2='Write a C function that reverses a singly linked list in place, and a main that tests it.'

summary() { grep -E '^(speculation|prompt:)' | sed 's/^/    /'; }

run() { # name, prompt, extra args...
  local name=$1 prompt=$2; shift 2
  echo "  $name"
  $T generate -m "$TARGET" -t "$THREADS" --temp 0 -n "$N" --ignore-eos -p "$prompt" "$@" 2>&1 >/dev/null | summary
}

for p in RAW1 RAW2 CHAT1 CHAT2; do
  prompt=${!p}
  extra=()
  [[ $p == CHAT* ]] && extra=(--chat)
  echo "== $p"
  run "plain" "$prompt" "${extra[@]}"
  run "draft, whole vocabulary" "$prompt" "${extra[@]}" --draft-model "$DRAFT"
  run "draft, --draft-vocab $WINDOW" "$prompt" "${extra[@]}" --draft-model "$DRAFT" --draft-vocab "$WINDOW"
  if [ -x "$BUILD/bin/llama-speculative" ]; then
    echo "  llama.cpp llama-speculative, draft 5"
    [[ $p == CHAT* ]] && prompt=$'<|im_start|>user\n'"$prompt"$'<|im_end|>\n<|im_start|>assistant\n'
    LD_LIBRARY_PATH=$BUILD/bin "$BUILD/bin/llama-speculative" -m "$TARGET" -md "$DRAFT" -p "$prompt" \
      -n "$N" --ignore-eos -t "$THREADS" -td "$THREADS" --temp 0 --top-k 1 --spec-draft-n-max 5 \
      -c 4096 2>&1 | grep -E 'decoded|accept' | sed 's/^/    /' || true
  fi
done
if [ -x "$BUILD/bin/llama-bench" ]; then
  echo "== llama.cpp plain (llama-bench tg$N)"
  LD_LIBRARY_PATH=$BUILD/bin "$BUILD/bin/llama-bench" -m "$TARGET" -t "$THREADS" -p 0 -n "$N" -r 1 \
    -o md 2>/dev/null | grep -E 'tg' | sed 's/^/    /'
fi
