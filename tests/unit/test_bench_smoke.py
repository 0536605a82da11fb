"""Every bench/ script runs to its last line at its tiniest settings.

The figures mean nothing at these sizes; what is checked is that each script still reads
what tunearena hands it (a renamed summary field fails here, not on the day of a benchmark).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str, timeout_s: int = 900) -> str:
    """Run ``bench/<script>`` as a user does; its stdout, after asserting exit code 0."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


def test_retrieval():
    out = bench("retrieval.py", "--texts", "8", "--repeats", "1", "--passages", "40",
                "--queries", "4", "--factories", "HNSW32")
    assert "embedding throughput ratio tunearena/bare:" in out
    assert "ANN recall@5 vs Flat (HNSW32):" in out


@pytest.mark.slow
def test_train_throughput():
    out = bench("train_throughput.py", "--preset", "tiny", "--seq-len", "32", "--micro-batch",
                "2", "--steps", "10", "--workers", "1")
    assert "failed" not in out
    last = out.strip().splitlines()[-1].split()
    assert last[:2] == ["2", "2"]  # ZeRO-2, micro batch 2
    assert float(last[5]) > 0  # steady tokens/s, from the summary's history


@pytest.mark.slow
@pytest.mark.heavy
def test_overhead_against_the_torchrun_baseline():
    # Runs bench/torchrun_baseline.py under torchrun beside run_stage under Ray.
    out = bench("overhead.py", "--steps", "10", "--repeats", "1", "--workers", "1",
                "--hidden", "64", "--layers", "1", "--seq-len", "32", "--micro-batch", "1")
    assert "M params (hidden 64, 1 layers)" in out
    assert "ray #1" in out and "torchrun #1" in out
    assert "ratio ray/torchrun steady step time:" in out


@pytest.mark.slow
def test_memory():
    out = bench("memory.py", "--shapes", "tiny-full", "--steps", "2")
    line = next(x for x in out.splitlines()
                if x.startswith("ratio estimate/measured peak (tiny-full, sized buckets):"))
    assert float(line.split(":")[1].split()[0]) > 0
    assert "tiny-full           sized" in out


@pytest.mark.slow
@pytest.mark.heavy
def test_demo_time():
    out = bench("demo_time.py", *[a for s in (
        "stages.0.max_steps=2", "stages.1.max_steps=2", "stages.2.max_steps=2",
        "evaluation.limit=4", "evaluation.latency_questions=0",
        "evaluation.bootstrap_samples=100") for a in ("--set", s)])
    assert "training: 2 steps," in out
    assert "demo wall time / 600 s target =" in out
    # The lines a script reads: each a number where the line says.
    lines = {line.split(":")[0]: line.split(":")[1].split()[0] for line in out.splitlines()
             if line.startswith(("later-stage start-up:", "total:", "run dir ratio:"))}
    assert set(lines) == {"later-stage start-up", "total", "run dir ratio"}, out
    assert 0 <= float(lines["later-stage start-up"]) < float(lines["total"])
    # The run directory holds its exported models and index, and more.
    assert float(lines["run dir ratio"]) >= 1


@pytest.mark.slow
def test_scoring_against_bare_hflm():
    out = bench("scoring.py", "--questions", "4", "--repeats", "1", "--batch-size", "4")
    assert "ratio tunearena/HFLM (bench):" in out and "ratio tunearena/HFLM (bench__rag):" in out
    assert "same choices as HFLM (bench): yes" in out  # both paths did the same work
    assert "per-token time ratio rag/plain (tunearena):" in out


@pytest.mark.slow
@pytest.mark.heavy
def test_serve_load(tmp_path, tiny_model_dir):
    import json

    import yaml
    from serve_runs import make_run

    run = make_run(tmp_path, tiny_model_dir)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in ("A?", "B?")))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["evaluation"] = {"benchmarks": [{"path": str(questions)}]}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    out = bench("serve_load.py", str(run), "--arm", "base", "--requests", "4",
                "--concurrency", "1", "2", "--max-tokens", "4")
    rows = [line for line in out.splitlines() if line.startswith("| tunearena serve")]
    assert len(rows) == 2 and all(row.split("|")[7].strip() == "0" for row in rows)  # errors
    assert "| bare process (baseline) |" in out
