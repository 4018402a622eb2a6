#!/usr/bin/env bash
# Makes tests/data/pre-tokenizers/reference.jsonl: llama.cpp's token ids for every text of
# tests/data/pre-tokenizers/texts.json under every pre-tokenizer name the test checks, with
# SmolLM2's vocabulary and merges (vocabulary-only GGUFs written by the test suite).
#
#   LLAMA_CPP_BUILD=~/.cache/torchless/llamacpp/build-avx2 bench/pre_tokenizer_reference.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOK=${LLAMA_CPP_BUILD:?set LLAMA_CPP_BUILD to a llama.cpp build with llama-tokenize}/bin/llama-tokenize
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TORCHLESS_PRE_VOCAB_DIR=$WORK cargo test --release --test tokenizer_golden \
  write_pre_tokenizer_vocabs -- --ignored >&2
python3 - "$TOK" "$WORK" <<'PY'
import json, subprocess, sys, pathlib
tok, work = sys.argv[1], pathlib.Path(sys.argv[2])
texts = json.loads(pathlib.Path("tests/data/pre-tokenizers/texts.json").read_text())
out = open("tests/data/pre-tokenizers/reference.jsonl", "w")
for vocab in sorted(work.glob("*.gguf")):
    pre = vocab.stem
    for text in texts:
        f = work / "text.txt"
        f.write_bytes(text.encode())
        if text == "":
            ids = []
        else:
            r = subprocess.run([tok, "-m", str(vocab), "-f", str(f), "--ids", "--no-escape",
                                "--no-bos", "--log-disable"], capture_output=True, text=True,
                               check=True)
            ids = json.loads(r.stdout.strip().splitlines()[-1])
        out.write(json.dumps({"pre": pre, "text": text, "ids": ids}, ensure_ascii=False) + "\n")
PY
echo "wrote tests/data/pre-tokenizers/reference.jsonl" >&2
