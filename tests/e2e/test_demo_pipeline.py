"""The demo pipeline end to end, shrunk by overrides: train, index, retrieve, evaluate, report."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from tunearena.launch.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHRINK = ["training.max_steps=4", "training.eval_every_steps=2", "training.log_every_steps=2",
          "evaluation.limit=12", "evaluation.bootstrap_samples=200"]


def demo(runs_dir: Path, *extra: str) -> int:
    args = ["demo"]
    for override in [f"runs_dir={runs_dir}", *SHRINK]:
        args += ["--set", override]
    return main(args + list(extra))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert demo(runs) == 0
    return runs / "demo"


def test_demo_writes_every_arm_on_every_benchmark(demo_run):
    results = json.loads((demo_run / "results.json").read_text())
    assert results["arms"] == ["base", "base+rag", "ft", "ft+rag"]
    for name in ("lumora_products", "world_facts"):
        bench = results["benchmarks"][name]
        assert bench["n"] == 12
        for arm in results["arms"]:
            row = bench["arms"][arm]
            assert 0.0 <= row["acc_ci"][0] <= row["acc"] <= row["acc_ci"][1] <= 1.0
            per_question = results["samples"][arm][name]
            assert len(per_question) == 12
            assert row["acc"] == pytest.approx(sum(s["acc"] for s in per_question) / 12)
    # The arms share their questions: same ids, same order.
    ids = [s["id"] for s in results["samples"]["base"]["lumora_products"]]
    assert ids == [s["id"] for s in results["samples"]["ft+rag"]["lumora_products"]]
    assert results["training"]["steps"] == 4
    assert results["retrieval"]["lumora_products"]["k"] == 2
    retrieval = results["retrieval"]["lumora_products"]
    assert 0.0 <= retrieval["recall_at_k"] <= 1.0
    # The k sweep: one search, recall of the gold document never falling as k grows.
    curve = [retrieval["recall_curve"][k] for k in ("1", "2", "3", "5", "10")]
    assert curve == sorted(curve) and curve[1] == retrieval["recall_at_k"]  # top_k is 2
    # Questions where retrieval hurt or helped, counted from the per-question scores.
    base = {s["id"]: s["acc"] for s in results["samples"]["base"]["lumora_products"]}
    rag = {s["id"]: s["acc"] for s in results["samples"]["base+rag"]["lumora_products"]}
    assert retrieval["hurt_questions"] == sum(base[q] and not rag[q] for q in base)
    assert retrieval["helped_questions"] == sum(rag[q] and not base[q] for q in base)


def test_demo_report_and_run_directory(demo_run):
    report = (demo_run / "report.md").read_text()
    assert "### lumora_products (domain, n = 12)" in report
    assert "| ft+rag |" in report and "## Forgetting" in report
    assert report.startswith("# tunearena report: demo\n\n## Verdict: ")
    page = html.unescape((demo_run / "report.html").read_text())
    assert json.loads((demo_run / "results.json").read_text())["decision"]["sentence"] in page
    manifest = json.loads((demo_run / "manifest.json").read_text())
    steps = manifest["steps"]
    assert list(steps) == ["train", "index", "retrieve", "evaluate:base", "evaluate:base+rag",
                           "evaluate:ft", "evaluate:ft+rag", "report"]
    assert all(s["status"] == "done" for s in steps.values())
    assert (demo_run / "models" / "ft" / "model.safetensors").is_file()
    assert "max_steps: 4" in (demo_run / "config.yaml").read_text()
    # RAG prompts carry the retrieved passages; plain prompts do not.
    rag_task = (demo_run / "tasks" / "lumora_products__rag.jsonl").read_text().splitlines()
    plain_task = (demo_run / "tasks" / "lumora_products.jsonl").read_text().splitlines()
    assert json.loads(rag_task[0])["prompt"].startswith("Context: ")
    assert json.loads(plain_task[0])["prompt"].startswith("Question: ")


def test_resume_reuses_every_completed_step(demo_run):
    before = (demo_run / "results.json").read_text()
    t0 = time.perf_counter()
    assert demo(demo_run.parent, "--resume") == 0
    elapsed = time.perf_counter() - t0
    steps = json.loads((demo_run / "manifest.json").read_text())["steps"]
    assert all("reused" in s for s in steps.values()), steps
    assert (demo_run / "results.json").read_text() == before
    assert not ray.is_initialized()
    assert elapsed < 120  # nothing was recomputed: no Ray start, no training


def test_resume_reruns_only_what_a_changed_setting_invalidates(demo_run):
    assert main(["demo", "--resume", "--set", f"runs_dir={demo_run.parent}", *sum(
        (["--set", o] for o in SHRINK + ["report.forgetting_tolerance=0.05"]), [])]) == 0
    steps = json.loads((demo_run / "manifest.json").read_text())["steps"]
    assert steps["report"]["status"] == "done" and "reused" not in steps["report"]
    assert all("reused" in steps[s] for s in ("train", "index", "retrieve", "evaluate:ft"))
    results = json.loads((demo_run / "results.json").read_text())
    assert results["settings"]["forgetting_tolerance"] == 0.05


def test_existing_run_is_never_overwritten(demo_run, capsys):
    assert demo(demo_run.parent) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_broken_input_fails_fast_naming_file_and_line(tmp_path):
    bad = tmp_path / "qa_train.jsonl"
    good = (REPO / "examples/demo_world/domain/qa_train.jsonl").read_text().splitlines()
    bad.write_text("\n".join(good[:2] + ['{"prompt": "Question: broken'] + good[2:5]) + "\n")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tunearena.launch.cli", "demo", "--set", f"runs_dir={tmp_path}",
         "--set", f"training.datasets.1.path={bad}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"{bad}:3: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "demo").exists(), "nothing may start on broken input"
    assert time.perf_counter() - t0 < 60
