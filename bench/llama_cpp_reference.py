#!/usr/bin/env python3
"""Reference outputs of llama.cpp for a GGUF model, in the format of tests/data/smollm2-q4_1/.

Runs llama.cpp through llama-cpp-python (n_ctx 512, whole prompt in one batch, no flash
attention, f16 KV cache), as the project's shared reference data was made, and writes into OUT:
  logits/prompt{i}_top20.json      top-20 (id, logit) at every prompt position
  logits/prompt{i}_last_logits.f32.bin  the full last-position logits
  greedy.jsonl                      greedy continuations with per-step top1-top2 margins
With --long TEXT, also the long-context case: the first --long-tokens tokens of TEXT (with BOS)
as one prompt, then greedy steps, so that decoding runs past 384 positions:
  long.json                         prompt ids, greedy continuation with margins, the top-20
                                    (id, logit) at every one of the last 16 prompt positions and
                                    after every greedy step (the logits of each decoded token)
  logits/long_last_logits.f32.bin   the full last-position logits of that prompt

Usage: bench/llama_cpp_reference.py MODEL.gguf OUT [--threads N]
Needs llama_cpp importable (bench/compare.sh builds it; PYTHONPATH and LLAMA_CPP_LIB_PATH as it
sets them).
"""
import argparse, json, os, sys

import numpy as np
from llama_cpp import Llama

PROMPTS = [
    ("plain", "def fibonacci(n):"),
    # Long enough (over 8 tokens, not a multiple of 4) for llama.cpp's batched kernels: the
    # repacked ones four tokens at a time then one, the tiled K-quant ones.
    ("plain", "The three primary colors are red, yellow and blue; mixing two of them gives a color such as"),
    ("chat", "Write a Python function that reverses a string."),
    ("chat", "What is the capital of Japan?"),
]

def top20(row):
    """The 20 highest (id, logit) pairs of a row, lowest id first on ties."""
    return [[int(t), float(row[t])] for t in np.argsort(-row, kind="stable")[:20]]

def greedy_steps(m, row, steps, stop_at_eog):
    """Greedy continuation from the logits `row`: argmax (lowest id on ties), optionally
    stopping after an end-of-generation token. Returns (ids, top1 - top2 margins, the top-20
    after each evaluated step)."""
    gen, margins, after = [], [], []
    for _ in range(steps):
        order = np.argsort(-row, kind="stable")
        t = int(order[0])
        gen.append(t)
        margins.append(float(row[order[0]] - row[order[1]]))
        if stop_at_eog and (m._model.token_is_eog(t) if hasattr(m._model, "token_is_eog") else t == m.token_eos()):
            break
        m.eval([t])
        row = np.array(m.scores[m.n_tokens - 1], dtype=np.float32)
        after.append(top20(row))
    return gen, margins, after

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--long", help="a text file for the long-context case")
    ap.add_argument("--long-tokens", type=int, default=400)
    ap.add_argument("--n-ctx", type=int, default=512, help="context (and batch) size")
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out, "logits"), exist_ok=True)
    m = Llama(model_path=a.model, n_ctx=a.n_ctx, n_batch=a.n_ctx, n_threads=a.threads, logits_all=True,
              verbose=False, flash_attn=False)
    vocab = m.n_vocab()
    greedy = []
    for i, (kind, text) in enumerate(PROMPTS):
        tmpl = m.metadata.get("tokenizer.chat_template")
        if kind == "chat" and tmpl:
            msgs = [{"role": "user", "content": text}]
            from jinja2 import Template
            prompt = Template(tmpl).render(messages=msgs, add_generation_prompt=True,
                                           bos_token="", eos_token="")
        else:
            # A model without a chat template gets the chat prompts as plain text.
            kind = "plain"
            prompt = text
        ids = m.tokenize(prompt.encode(), add_bos=True, special=True)
        m.reset()
        m.eval(ids)
        scores = np.array(m.scores[: len(ids)], dtype=np.float32)
        top = [top20(row) for row in scores]
        if i < 2:
            json.dump({"prompt": prompt, "prompt_ids": ids, "n_vocab": vocab, "top20_per_position": top},
                      open(os.path.join(a.out, "logits", f"prompt{i}_top20.json"), "w"))
            scores[-1].astype("<f4").tofile(os.path.join(a.out, "logits", f"prompt{i}_last_logits.f32.bin"))
        gen, margins, _ = greedy_steps(m, scores[-1], a.steps, True)
        greedy.append({"kind": kind, "prompt": prompt, "prompt_ids": ids, "generated_ids": gen,
                       "top1_minus_top2_logit": margins})
    if a.long:
        ids = m.tokenize(open(a.long, encoding="utf-8").read().encode(), add_bos=True, special=False)
        ids = ids[: a.long_tokens]
        m.reset()
        m.eval(ids)
        scores = np.array(m.scores[: len(ids)], dtype=np.float32)
        scores[-1].astype("<f4").tofile(os.path.join(a.out, "logits", "long_last_logits.f32.bin"))
        top = [top20(row) for row in scores[-16:]]
        gen, margins, steps = greedy_steps(m, scores[-1], a.steps, False)
        json.dump({"prompt_ids": ids, "top20_last16": top, "generated_ids": gen,
                   "top1_minus_top2_logit": margins, "top20_after_each_step": steps},
                  open(os.path.join(a.out, "long.json"), "w"))
    with open(os.path.join(a.out, "greedy.jsonl"), "w") as f:
        for g in greedy:
            f.write(json.dumps(g) + "\n")
    print("wrote", a.out)

if __name__ == "__main__":
    main()
