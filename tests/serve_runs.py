"""A finished run's directory as far as ``tunearena serve`` reads it, written without running
one: its results (with the verdict the given scores make), config, a stage's model dir and
an index file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import summarise

BENCH = [BenchmarkConfig(name="dom", path="dom.jsonl", kind="domain", track="generative")]


def _answers(n: int, right: int) -> list[dict]:
    return [{"id": f"q{i}", "exact_match": int(i < right), "f1": float(i < right),
             "prediction": " x"} for i in range(n)]


def make_run(tmp_path: Path, base_model: Path, base_right: int = 2, rag_right: int = 30,
             with_index: bool = True) -> Path:
    """A run directory as ``tunearena run`` leaves it, as far as serving reads it: results
    (the verdict from these scores), config, the stage ``qa``'s model (a copy of
    ``base_model``) and an index file."""
    run = tmp_path / "run"
    samples = {"base": {"dom": _answers(40, base_right)},
               "base+rag": {"dom": _answers(40, rag_right)},
               "ft@qa": {"dom": _answers(40, base_right)}}
    base = base_model
    extra = {"run": {"name": "run", "base_model": str(base), "prompt_format": "plain"},
             "retrieval": {"index": {"n_chunks": 3}, "dom": {"k": 3}}}
    results = summarise(samples, BENCH, EvaluationConfig(
        benchmarks=BENCH, arms=["base", "base+rag", "ft@qa"], bootstrap_samples=200),
        ReportConfig(), extra)
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results.to_json()), encoding="utf-8")
    (run / "config.yaml").write_text(yaml.safe_dump({"rag": {"top_k": 3}}), encoding="utf-8")
    shutil.copytree(base_model, run / "models" / "qa")
    if with_index:
        (run / "index").mkdir()
        (run / "index" / "index.faiss").write_bytes(b"")
    return run
