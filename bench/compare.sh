#!/usr/bin/env bash
# Side-by-side speed of torchless and llama.cpp on the same machine, same models, same threads.
#
#   bench/compare.sh [--threads N] [--reps R] [--quick] [--no-contention] [--serve]
#
# 1. Builds llama.cpp (llama-bench, llama-quantize) from the llama-cpp-python source package on
#    PyPI, which vendors it, into $CACHE/llamacpp (about 20 minutes the first time on 2 cores).
# 2. Fetches the models (torchless fetch) and makes requantized variants of SmolLM2 (F16, Q8_0,
#    Q4_0, Q4_K_M) with llama-quantize.
# 3. Runs llama-bench and `torchless bench` alternately on every model (pp512, tg128), then
#    SmolLM2 Q4_1 generation with 2048 tokens already in the context (tg128 @ d2048; not with
#    --quick), and once more with a competing busy process (`yes > /dev/null`).
# 4. Prints the table (both figures and the ratio) and writes it to bench/RESULTS.md with the
#    machine's description, the date, the load average before and after, and how busy the CPUs
#    were in the 10 s just before and just after (someone else's work shows there).
#
# 5. With --serve, then runs bench/serve_compare.sh: `torchless serve` against llama-server
#    with as many parallel slots, at 1, 4, 16 and 32 concurrent streams.
#
# Not part of CI. Run it on a quiet machine: nothing else should be running.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=$(python3 -c 'import os;print(len({(l.split(":")[1].strip()) for l in open("/proc/cpuinfo") if l.startswith("core id")}) or os.cpu_count())' 2>/dev/null || nproc)
REPS=5
QUICK=0
CONTENTION=1
SERVE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-contention) CONTENTION=0; shift ;;
    --serve) SERVE=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

CACHE=${TORCHLESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/torchless}
LCPP=$CACHE/llamacpp
MODELS=$CACHE/models
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"; [ -n "${YES_PID:-}" ] && kill "$YES_PID" 2>/dev/null || true' EXIT

# --- 1. llama.cpp -------------------------------------------------------------------------
VERSION=0.3.36
SRC=$LCPP/llama_cpp_python-$VERSION/vendor/llama.cpp
# LLAMA_CPP_BUILD names an existing build to measure instead (e.g. the AVX2 reference build
# that bench/llama_cpp_reference.py uses, where it is also the machine's best).
BUILD=${LLAMA_CPP_BUILD:-$LCPP/build}
if [ ! -x "$BUILD/bin/llama-bench" ] || [ ! -x "$BUILD/bin/llama-quantize" ]; then
  [ -n "${LLAMA_CPP_BUILD:-}" ] && { echo "compare: no llama-bench in $BUILD" >&2; exit 2; }
  echo "compare: building llama.cpp from llama-cpp-python==$VERSION (takes a while)" >&2
  mkdir -p "$LCPP"
  if [ ! -d "$SRC" ]; then
    python3 -m pip download --no-deps --no-binary llama-cpp-python --dest "$LCPP/dl" "llama-cpp-python==$VERSION" >&2
    tar xzf "$LCPP/dl/llama_cpp_python-$VERSION.tar.gz" -C "$LCPP"
  fi
  command -v cmake >/dev/null || python3 -m pip install cmake ninja >&2
  GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
  # The machine's best build without AMX: -march=native turns ggml's AMX path on whatever the
  # GGML_AMX_* switches say (and that path crashes in these virtual machines), so on a CPU
  # with AMX the instruction sets are named one by one instead.
  ISA_FLAGS="-DGGML_NATIVE=ON"
  if grep -qw amx_int8 /proc/cpuinfo; then
    has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
    ISA_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
      -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni)
      -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AVX_VNNI=$(has avx_vnni)"
  fi
  # shellcheck disable=SC2086 # one switch per word
  cmake -S "$SRC" -B "$LCPP/build" $GEN -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF $ISA_FLAGS \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF >&2
  cmake --build "$LCPP/build" -j "$(nproc)" --target llama-bench llama-quantize >&2
fi
if [ "$SERVE" = 1 ] && [ ! -x "$BUILD/bin/llama-server" ]; then
  echo "compare: building llama-server in $BUILD" >&2
  cmake -B "$BUILD" -DLLAMA_BUILD_SERVER=ON >&2
  cmake --build "$BUILD" -j "$(nproc)" --target llama-server >&2
fi
LB=$BUILD/bin/llama-bench
LQ=$BUILD/bin/llama-quantize
# How that build was configured (for the report): its instruction-set switches.
BUILD_FLAGS=$(grep -E '^GGML_(NATIVE|AVX|AVX2|AVX512|AVX512_VNNI|AVX_VNNI|FMA|F16C|AMX_INT8):BOOL=ON' "$BUILD/CMakeCache.txt" 2>/dev/null | cut -d: -f1 | tr '\n' ' ')

# --- 2. models ----------------------------------------------------------------------------
cargo build --release >&2
TL=target/release/torchless
for m in smollm2 qwen2.5-coder-0.5b qwen2.5-coder-1.5b gemma-3-270m; do
  [ "$QUICK" = 1 ] && [ "$m" = qwen2.5-coder-1.5b ] && continue
  $TL fetch "$m" >/dev/null
done
BASE=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
for t in F16 Q8_0 Q4_0 Q4_K_M; do
  f=$MODELS/SmolLM2-135M-Instruct.$t.gguf
  [ -f "$f" ] || "$LQ" --allow-requantize "$BASE" "$f" "$t" >/dev/null 2>&1
done

LIST=("SmolLM2 Q4_1|$BASE" "SmolLM2 Q8_0|$MODELS/SmolLM2-135M-Instruct.Q8_0.gguf"
      "SmolLM2 Q4_0|$MODELS/SmolLM2-135M-Instruct.Q4_0.gguf" "SmolLM2 F16|$MODELS/SmolLM2-135M-Instruct.F16.gguf"
      "SmolLM2 Q4_K_M|$MODELS/SmolLM2-135M-Instruct.Q4_K_M.gguf"
      "Qwen2.5-Coder-0.5B Q4_K_M|$MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
      "Gemma-3-270M Q4_K_M|$MODELS/gemma-3-270m-q4_k_m.gguf")
[ "$QUICK" = 1 ] || LIST+=("Qwen2.5-Coder-1.5B Q4_K_M|$MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")

# --- 3. measure ---------------------------------------------------------------------------
# Share of CPU time (all cores) that something was using over the next N seconds.
busy_pct() {
  python3 - "$1" <<'PY'
import sys, time
def sample():
    f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return sum(f), f[3] + f[4]
t0, i0 = sample(); time.sleep(float(sys.argv[1])); t1, i1 = sample()
print(f"{100.0 * (1 - (i1 - i0) / max(t1 - t0, 1)):.0f}%")
PY
}
# A quiet start: wait (at most five minutes) for the builds above and anything else to settle.
for _ in $(seq 60); do
  awk '{ exit !($1 < 0.5) }' /proc/loadavg && break
  sleep 5
done
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg), CPU busy over 10 s: $(busy_pct 10)"
run_pair() { # label model tag
  local label=$1 model=$2 tag=$3
  echo "compare: $label ($tag): llama.cpp" >&2
  "$LB" -m "$model" -t "$THREADS" -r "$REPS" -p 512 -n 128 -o json > "$OUT/$tag.llama.json" 2>/dev/null
  echo "compare: $label ($tag): torchless" >&2
  "$TL" bench -m "$model" -t "$THREADS" -r "$REPS" -p 512 -n 128 --json > "$OUT/$tag.torchless.json" 2>/dev/null
  echo "$label|$tag" >> "$OUT/index"
}
i=0
for entry in "${LIST[@]}"; do
  run_pair "${entry%%|*}" "${entry#*|}" "m$i"
  i=$((i + 1))
done
if [ "$QUICK" = 0 ]; then
  echo "compare: SmolLM2 Q4_1 at depth 2048: llama.cpp" >&2
  "$LB" -m "$BASE" -t "$THREADS" -r "$REPS" -p 0 -n 128 -d 2048 -o json > "$OUT/deep.llama.json" 2>/dev/null
  echo "compare: SmolLM2 Q4_1 at depth 2048: torchless" >&2
  "$TL" bench -m "$BASE" -t "$THREADS" -r "$REPS" -p 0 -n 128 -d 2048 --json > "$OUT/deep.torchless.json" 2>/dev/null
fi
if [ "$CONTENTION" = 1 ]; then
  yes > /dev/null &
  YES_PID=$!
  echo "compare: SmolLM2 Q4_1 with a competing busy process" >&2
  "$LB" -m "$BASE" -t "$THREADS" -r "$REPS" -p 0 -n 128 -o json > "$OUT/busy.llama.json" 2>/dev/null
  "$TL" bench -m "$BASE" -t "$THREADS" -r "$REPS" -p 0 -n 128 --json > "$OUT/busy.torchless.json" 2>/dev/null
  kill "$YES_PID"; YES_PID=""
fi
# Our own threads dominate the load average now; what matters is whether anything else is
# still running once we stop.
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg) (raised by the benchmark itself), CPU busy over the 10 s after: $(busy_pct 10)"

# --- 4. report ----------------------------------------------------------------------------
python3 - "$OUT" "$THREADS" "$REPS" "$LOAD_BEFORE" "$LOAD_AFTER" "$BUILD_FLAGS" <<'EOF'
import json, os, platform, subprocess, sys, datetime
out, threads, reps, load_before, load_after, build_flags = sys.argv[1:7]

def llama(path):
    rows = json.load(open(path))
    res = {}
    for r in rows:
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        if r.get("n_depth"):
            test += f" @ d{r['n_depth']}"
        res[test] = (r["avg_ts"], r["stddev_ts"])
    return res

def ours(path):
    j = json.load(open(path))
    return {r["test"]: (r["tokens_per_s"], r["stddev"]) for r in j["results"]}, j

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
isa = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                   "avx512_bf16", "avx512_fp16", "amx_int8") if f" {f} " in flags + " "]
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
lines = []
lines.append(f"Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {cpu} ({os.cpu_count()} CPUs, {', '.join(isa)}; "
             f"{int(mem) // 1024} MiB RAM), {threads} threads, {reps} repetitions, llama.cpp from llama-cpp-python 0.3.36 "
             f"(built Release with {build_flags.strip() or 'the default switches'}). Load average before: {load_before}; after: {load_after}.")
lines.append("")
lines.append("| model | test | llama.cpp t/s | torchless t/s | ratio |")
lines.append("| --- | --- | ---: | ---: | ---: |")
extra = []
for entry in open(os.path.join(out, "index")).read().split("\n"):
    if not entry:
        continue
    label, tag = entry.split("|")
    l = llama(os.path.join(out, f"{tag}.llama.json"))
    t, j = ours(os.path.join(out, f"{tag}.torchless.json"))
    for test in ("pp512", "tg128"):
        if test in l and test in t:
            lines.append(f"| {label} | {test} | {l[test][0]:.2f} ± {l[test][1]:.2f} | {t[test][0]:.2f} ± {t[test][1]:.2f} | {t[test][0] / l[test][0]:.2f} |")
    if "tg128" in t:
        extra.append(f"- {label}: generation {t['tg128'][0]:.1f} t/s = {100 * t['tg128'][0] / j['generation_bound_tokens_per_s']:.0f}% of the bandwidth bound "
                     f"({j['weight_bytes_per_token'] / 2**20:.1f} MiB of weights per token at a measured {j['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s "
                     f"= {j['generation_bound_tokens_per_s']:.1f} t/s); llama.cpp at {100 * l.get('tg128', (0,))[0] / j['generation_bound_tokens_per_s']:.0f}%; "
                     f"peak RSS {(j.get('peak_rss_bytes') or 0) / 2**20:.0f} MiB; kernels {j['kernels']}")
deep = os.path.join(out, "deep.torchless.json")
if os.path.exists(deep):
    t, _ = ours(deep)
    l = llama(os.path.join(out, "deep.llama.json"))
    for test in t:
        if test in l:
            lines.append(f"| SmolLM2 Q4_1 | {test} | {l[test][0]:.2f} ± {l[test][1]:.2f} | {t[test][0]:.2f} ± {t[test][1]:.2f} | {t[test][0] / l[test][0]:.2f} |")
busy = os.path.join(out, "busy.torchless.json")
if os.path.exists(busy):
    t, _ = ours(busy)
    l = llama(os.path.join(out, "busy.llama.json"))
    quiet_t = quiet_l = None
    first = open(os.path.join(out, "index")).read().split("\n")[0].split("|")[1]
    quiet_t = ours(os.path.join(out, f"{first}.torchless.json"))[0]["tg128"][0]
    quiet_l = llama(os.path.join(out, f"{first}.llama.json"))["tg128"][0]
    lines.append(f"| SmolLM2 Q4_1, busy neighbour | tg128 | {l['tg128'][0]:.2f} ± {l['tg128'][1]:.2f} ({100 * l['tg128'][0] / quiet_l:.0f}% of quiet) "
                 f"| {t['tg128'][0]:.2f} ± {t['tg128'][1]:.2f} ({100 * t['tg128'][0] / quiet_t:.0f}% of quiet) | {t['tg128'][0] / l['tg128'][0]:.2f} |")
lines.append("")
lines.extend(extra)
table = "\n".join(lines)
print(table)
with open("bench/RESULTS.md", "w") as f:
    f.write("# Benchmark results: torchless vs llama.cpp\n\n")
    f.write("Made by `bench/compare.sh` (both engines alternately, same models, same threads; ratio = torchless / llama.cpp).\n\n")
    f.write(table + "\n")
EOF

if [ "$SERVE" = 1 ]; then
  LLAMA_CPP_BUILD=$BUILD bench/serve_compare.sh --threads "$THREADS"
fi
