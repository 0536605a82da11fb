"""A swept stage through ``tunearena run``: four learning rates of a tiny random Llama on real
Ray Tune, each trial a real Ray Train run with DeepSpeed ZeRO-2 on gloo, ASHA comparing their
validation losses; the driver killed after the first trial finished and the run resumed; the
best trials scored with lm-eval and the stage's model chosen by domain gain within the
forgetting tolerance.

The test's Ray starts its dashboard, as a run's own local Ray does for a sweep: Ray Train
removes a stopped trial's placement group through the State API it serves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import local_ray

from tunearena.launch.cli import main

pytestmark = pytest.mark.slow

NAME = "sweep"
STEPS, EVAL_EVERY = 24, 4
# The best learning rates first: ASHA, comparing later trials against those already seen at
# the same validation, stops the ones that barely move.
LRS = [2e-2, 1e-2, 1e-6, 1e-7]
TOLERANCE = 0.5


@pytest.fixture(scope="module")
def ray_dashboard():
    """A local Ray of two CPUs with its dashboard; yields its GCS address."""
    with local_ray(dashboard=True) as address:
        yield address


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def experiment(root: Path, model_dir: Path, address: str) -> Path:
    text = [{"text": f"The tower number {i} in the valley stands {10 + 3 * i} meters tall, "
                     f"built in {1900 + i}."} for i in range(40)]
    domain = [{"id": f"d{i}", "question": f"How tall is tower {i}?",
               "choices": [f"{10 + 3 * i} meters", f"{11 + 3 * i} meters", "no one knows"],
               "answer": 0} for i in range(6)]
    general = [{"id": f"g{i}", "question": f"Which of these is {what}?", "choices": choices,
                "answer": 0}
               for i, (what, choices) in enumerate([("a colour", ["red", "seven", "dog"]),
                                                    ("a number", ["seven", "red", "dog"]),
                                                    ("an animal", ["dog", "red", "seven"])])]
    cfg = {
        "name": NAME,
        "runs_dir": str(root / "runs"),
        "model": {"base": str(model_dir)},
        "cluster": {"address": address, "num_workers": 1, "cpus_per_worker": 1,
                    "use_gpu": False, "max_failures": 0},
        "training": {
            "datasets": [{"path": str(write_jsonl(root / "facts.jsonl", text)),
                          "format": "text"}],
            "validation_fraction": 0.2, "seq_len": 32, "micro_batch_size": 2,
            "max_steps": STEPS, "warmup_steps": 0, "precision": "fp32", "zero_stage": 2,
            "log_every_steps": 4, "eval_every_steps": EVAL_EVERY,
            "checkpoint_every_steps": 1000, "seed": 0,
            "data_prep": {"deduplicate": False, "near_duplicate_threshold": None},
        },
        "stages": [{"name": "s", "sweep": {
            "space": {"lr": {"grid": LRS}}, "max_concurrent_trials": 2, "grace_period": 1,
            "reduction_factor": 2, "fully_scored": 2}}],
        "evaluation": {
            "benchmarks": [
                {"name": "towers", "path": str(write_jsonl(root / "towers.jsonl", domain)),
                 "kind": "domain"},
                {"name": "trivia", "path": str(write_jsonl(root / "trivia.jsonl", general)),
                 "kind": "general"}],
            "arms": ["base", "ft"], "bootstrap_samples": 100,
            "forgetting_tolerance": TOLERANCE, "latency_questions": 0, "probe": False,
        },
    }
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def swept(ray_dashboard, tiny_model_dir, tmp_path_factory):
    """The run, its driver killed once the first trial has exported, then resumed. Returns
    the run directory and each trial's exported summary file's mtime at the kill."""
    root = tmp_path_factory.mktemp("sweep")
    config = experiment(root, tiny_model_dir, ray_dashboard)
    trials_dir = root / "runs" / NAME / "sweeps" / "s"
    log = root / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "tunearena.launch.cli", "run",
                                   str(config)], cwd=root, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not list(trials_dir.glob("*.json")):
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        driver.kill()
        driver.wait()
    at_kill = {p.stem: p.stat().st_mtime_ns for p in trials_dir.glob("*.json")}
    assert main(["run", str(config), "--resume"]) == 0
    return root / "runs" / NAME, at_kill


def _accuracy(run_dir: Path, arm: str) -> dict[str, float]:
    samples = json.loads((run_dir / "eval" / f"{arm}.json").read_text())
    return {name: sum(r["acc"] for r in rows) / len(rows) for name, rows in samples.items()}


def test_asha_stops_a_trial_and_the_resume_reuses_finished_trials(swept):
    run_dir, at_kill = swept
    sweep = json.loads((run_dir / "results.json").read_text())["stages"]["stages"]["s"]["sweep"]
    trials = {t["trial"]: t for t in sweep["trials"]}
    assert sorted(t["params"]["lr"] for t in trials.values()) == sorted(LRS)
    stopped = [t for t in trials.values() if t["status"] == "stopped early"]
    assert stopped, sweep["trials"]
    assert all(t["evaluations"] < STEPS // EVAL_EVERY for t in stopped)
    # A trial finished before the kill was not trained again: its export is untouched.
    assert at_kill
    for trial, mtime in at_kill.items():
        assert trials[trial]["status"] == "finished"
        assert (run_dir / "sweeps" / "s" / f"{trial}.json").stat().st_mtime_ns == mtime
    assert sweep["device_hours"] == pytest.approx(
        sum(t["device_hours"] for t in trials.values()))


def test_the_stage_is_the_scored_trial_with_the_largest_gain_within_tolerance(swept):
    run_dir, _ = swept
    results = json.loads((run_dir / "results.json").read_text())
    sweep = results["stages"]["stages"]["s"]["sweep"]
    base = _accuracy(run_dir, "base")
    # Recomputed from the scored samples: gain on the domain benchmark, drop on the general.
    rows = {}
    for trial in sweep["scored"]:
        acc = _accuracy(run_dir, f"ft@s#{trial}")
        rows[trial] = (acc["towers"] - base["towers"], base["trivia"] - acc["trivia"])
    finished = [t for t in sweep["trials"] if t["status"] == "finished"]
    by_loss = sorted(finished, key=lambda t: t["val_loss"])[:2]
    assert sweep["scored"] == [t["trial"] for t in by_loss]
    within = [t for t in sweep["scored"] if rows[t][1] <= TOLERANCE + 1e-9]
    expected = (max(within, key=lambda t: (rows[t][0], -sweep["scored"].index(t))) if within
                else min(sweep["scored"], key=lambda t: rows[t][1]))
    assert sweep["chosen"] == expected
    for t in sweep["trials"]:
        if t["trial"] in rows:
            assert (t["domain_gain"], t["forgetting"]) == pytest.approx(rows[t["trial"]])
    # The stage's model is the chosen trial's, byte for byte, and ft scores as it did.
    chosen = run_dir / "sweeps" / "s" / expected
    for f in chosen.glob("*.safetensors"):
        assert (run_dir / "models" / "s" / f.name).read_bytes() == f.read_bytes()
    assert _accuracy(run_dir, "ft@s") == _accuracy(run_dir, f"ft@s#{expected}")
    report = (run_dir / "report.md").read_text()
    assert "### Sweep: stage s" in report and f"{expected} (the stage's model)" in report
