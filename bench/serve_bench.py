#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible server (torchless serve or llama-server).

    serve_bench.py --url http://127.0.0.1:8080 [--concurrency 1,4,16,32] [--max-tokens 64]
                   [--requests-per-client 2] [--label NAME]

N client threads each send streaming /v1/completions requests one after another (greedy,
ignore_eos, a fixed number of tokens, a different prompt per request). Prints one JSON line
per concurrency: aggregate generated tokens/s over the wall time of the level, time to first
token and inter-token latency (p50/p99, from the arrival times of the streamed chunks). Only
the standard library: nothing to install.
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

TOPICS = ["the sea", "a mountain village", "an old clock", "the first computer", "a winter night",
          "a lost letter", "the city at dawn", "a long train journey", "a small garden",
          "the last lighthouse keeper", "a market day", "a storm at sea", "an empty theatre",
          "the river in spring", "a library at midnight", "a bicycle trip"]


def prompt(i):
    t = TOPICS[i % len(TOPICS)]
    return (f"Request {i}. Write a short story about {t}. Describe the place, the people who live "
            f"there and what happens to them over one day, in simple words.")


def one(url, body):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
    times = []
    for raw in r:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        ev = json.loads(data)
        ch = ev.get("choices") or []
        if ch and ch[0].get("text"):
            times.append(time.perf_counter())
    c.close()
    return t0, times


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def level(url, conc, max_tokens, per_client, model):
    ttft, itl, errors = [], [], []
    lock = threading.Lock()
    counter = iter(range(conc * per_client))

    def client():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body = {"prompt": prompt(i + 1000 * conc), "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True, "model": model}
            try:
                t0, times = one(url, body)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                if times:
                    ttft.append(times[0] - t0)
                    itl.extend(b - a for a, b in zip(times, times[1:]))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    n = conc * per_client - len(errors)
    return {
        "concurrency": conc, "requests": n, "errors": len(errors),
        "tokens_per_s": n * max_tokens / wall,
        "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99),
        "itl_p50_ms": 1e3 * pct(itl, 50), "itl_p99_ms": 1e3 * pct(itl, 99),
        "wall_s": wall,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--label", default="")
    ap.add_argument("--model", default="")
    a = ap.parse_args()
    # One warm-up request.
    one(a.url, {"prompt": "Hello", "max_tokens": 4, "temperature": 0, "stream": True, "model": a.model})
    for c in [int(x) for x in a.concurrency.split(",")]:
        r = level(a.url, c, a.max_tokens, a.requests_per_client, a.model)
        r["label"] = a.label
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
