"""Load on ``tunearena serve``: the official ``openai`` client at several concurrency levels,
against the same model answering in one bare process.

    python bench/serve_load.py [RUN_DIR] [--arm ARM] [--requests 256]
                               [--concurrency 1 4 16] [--max-tokens 32]
                               [--set serve.KEY=VALUE ...]

``RUN_DIR`` (default ``runs/demo``, which ``tunearena demo`` writes) is served as a user
serves it, by ``tunearena serve RUN_DIR --arm ARM`` in a subprocess with its default settings
(one replica, this machine's CPUs, requests batched) unless ``--set`` changes them; ``ARM``
defaults to the verdict's. The
questions are the run's first benchmark's, cycled to ``--requests``; each is asked as a chat
completion at temperature 0 with ``max_tokens``.

Baseline: the same arm's ``Engine`` (the same weights, retrieval and prompt, no Ray, no
HTTP) answering the same questions one after another in this process, as a script calling
the model directly would. For each concurrency the bench prints throughput (requests/s and
completion tokens/s), latency p50/p95/p99 as the client saw it, errors, and the throughput
ratio against the baseline. Above 1 is batching paying for the server's overhead; at
concurrency 1 the ratio is that overhead alone.

Wall times on a shared machine are noisy; the ratios are the figures to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def questions(run_dir: Path, n: int) -> list[str]:
    """The run's first benchmark's questions, cycled to ``n``."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    path = next(Path(b["path"]) for b in config["evaluation"]["benchmarks"] if b.get("path"))
    found = [json.loads(line)["question"] for line in path.read_text().splitlines()
             if line.strip()]
    return [found[i % len(found)] for i in range(n)]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def bare(run_dir: Path, arm: str | None, asked: list[str], max_tokens: int) -> dict:
    """The arm's engine in this process, one question after another."""
    from tunearena.serve.arms import served_arms
    from tunearena.serve.engine import Engine, Sampling

    (served,) = served_arms(run_dir, [arm] if arm else [])
    engine = Engine(served)
    sampling = Sampling(max_tokens, stop=served.stop)
    engine.generate([(engine.render(asked[0]), sampling)])  # warm-up
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for q in asked:
        t = time.perf_counter()
        (answer,) = engine.generate([(engine.render(q), sampling)])
        latencies.append(time.perf_counter() - t)
        tokens += answer.completion_tokens
    wall = time.perf_counter() - t0
    return {"arm": served.name, "rps": len(asked) / wall, "tps": tokens / wall,
            "latencies": latencies, "errors": 0}


def load(url: str, arm: str, asked: list[str], concurrency: int, max_tokens: int) -> dict:
    """``asked`` sent by ``concurrency`` threads, each with the official client."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
    latencies, errors, tokens = [], 0, 0

    def one(question: str):
        t = time.perf_counter()
        try:
            reply = client.chat.completions.create(
                model=arm, messages=[{"role": "user", "content": question}], temperature=0,
                max_tokens=max_tokens)
            return time.perf_counter() - t, reply.usage.completion_tokens, None
        except openai.APIError as e:
            return time.perf_counter() - t, 0, e

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for latency, n, error in pool.map(one, asked):
            if error is None:
                latencies.append(latency)
                tokens += n
            else:
                errors += 1
    wall = time.perf_counter() - t0
    return {"rps": len(latencies) / wall, "tps": tokens / wall, "latencies": latencies,
            "errors": errors}


def start_server(run_dir: Path, arm: str, port: int, out: Path,
                 overrides: list[str]) -> subprocess.Popen:
    sets = [a for o in overrides for a in ("--set", o)]
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunearena.launch.cli", "serve", str(run_dir), "--arm", arm,
             "--port", str(port), *sets], stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while "serving at" not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"tunearena serve did not start:\n{out.read_text()}")
        time.sleep(1)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--arm", help="the arm to serve (default: the verdict's)")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="serve.KEY=VALUE", help="a serve setting, e.g. "
                        "serve.replicas=2 (repeatable)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asked = questions(args.run_dir, args.requests)
    base = bare(args.run_dir, args.arm, asked, args.max_tokens)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_load_{port}.out"
    server = start_server(args.run_dir, base["arm"], port, out, args.overrides)
    try:
        rows = [("bare process (baseline)", base)]
        for c in args.concurrency:
            rows.append((f"tunearena serve, concurrency {c}",
                         load(f"http://127.0.0.1:{port}/v1", base["arm"], asked, c,
                              args.max_tokens)))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(120)
    print(f"arm {base['arm']} of {args.run_dir}, {args.requests} chat requests, "
          f"max_tokens {args.max_tokens}, {os.cpu_count()} CPUs"
          + "".join(f", {o}" for o in args.overrides) + "\n")
    print("| | requests/s | tokens/s | p50 ms | p95 ms | p99 ms | errors | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        ms = [1000 * x for x in r["latencies"]] or [float("nan")]
        print(f"| {name} | {r['rps']:.1f} | {r['tps']:.0f} | {statistics.median(ms):.0f} | "
              f"{percentile(ms, 0.95):.0f} | {percentile(ms, 0.99):.0f} | {r['errors']} | "
              f"{r['rps'] / base['rps']:.2f} |")


if __name__ == "__main__":
    main()
