"""A run whose stage did not change the model stops at the probe, before any arm on a
fine-tuned model is scored, and keeps what it trained (and the base's scores, scored beside
the probe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunearena.launch.cli import main

pytestmark = pytest.mark.slow


def write_run(root: Path, model_dir: Path, ray_address: str, text_file: Path) -> Path:
    questions = root / "qa.jsonl"
    questions.write_text("".join(json.dumps(
        {"id": f"q{i}", "question": f"What is {i} plus one?", "choices": [str(i + 1), "zero"],
         "answer": 0}) + "\n" for i in range(4)))
    cfg = {
        "name": "probed", "runs_dir": str(root / "runs"), "model": {"base": str(model_dir)},
        "cluster": {"address": ray_address, "num_workers": 1, "cpus_per_worker": 1},
        "training": {"seq_len": 32, "micro_batch_size": 2, "max_steps": 2, "precision": "fp32",
                     "validation_fraction": 0.0, "zero_stage": 2},
        # A learning rate this small leaves every weight as it was: the base again.
        "stages": [{"name": "still", "lr": 1e-30,
                    "datasets": [{"path": str(text_file), "format": "text"}]}],
        "evaluation": {"benchmarks": [{"name": "sums", "path": str(questions), "kind": "domain"}],
                       "arms": ["base", "ft"], "latency_questions": 0,
                       "bootstrap_samples": 100},
    }
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_a_stage_equal_to_the_base_stops_the_run_at_the_probe(
        ray_local, tiny_model_dir, tiny_text_file, tmp_path, capsys):
    config = write_run(tmp_path, tiny_model_dir, ray_local, tiny_text_file)
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs" / "probed"
    assert "1 fine-tuned stage(s) answer exactly like the base model" in err
    assert str(run_dir / "models" / "still") in err
    steps = json.loads((run_dir / "manifest.json").read_text())["steps"]
    assert steps["train:still"]["status"] == "done"  # what was trained is kept
    assert steps["probe"]["status"] == "failed"
    # Nothing on a fine-tuned model was scored; the base's arm ran beside the probe.
    assert not any(name.startswith("evaluate:ft") for name in steps)
    assert steps["evaluate:base"]["status"] == "done"
