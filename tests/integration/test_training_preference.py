"""Preference stages (DPO, SimPO) on real Ray Train workers and DeepSpeed (gloo, fp32).

Pairs whose chosen reply is the right city and whose rejected reply is a wrong one: after a
few steps the reward accuracy on those pairs rises and the export reloads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunearena.cluster.config import ClusterConfig
from tunearena.training.config import TrainingConfig
from tunearena.training.trainer import run_stage

pytestmark = pytest.mark.slow

CITIES = ["Velmo", "Tarrow", "Bafe", "Loda", "Peve", "Dane", "Kiro", "Moss"]


def pairs_file(tmp_path: Path) -> Path:
    rows = []
    for i, land in enumerate(["Norland", "Sudmark", "Ostria", "Wenholt", "Zarn", "Quill"] * 4):
        # Each land keeps its capital; each copy rejects another wrong one.
        right, wrong = CITIES[i % 6], CITIES[(i % 6 + 1 + i // 6) % 8]
        rows.append({"prompt": f"Question: What is the capital of {land}?\nAnswer:",
                     "chosen": f" {right}", "rejected": f" {wrong}"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train(tmp_path: Path, model_dir: Path, name: str, **overrides):
    path = pairs_file(tmp_path)
    # Validation on the training pairs themselves: does the stage learn the pairs it sees?
    cfg = TrainingConfig.model_validate({
        "datasets": [{"path": path, "format": "preference", "validation_path": path}],
        "kind": "dpo", "seq_len": 64, "micro_batch_size": 2, "lr_schedule": "constant",
        "max_steps": 24, "lr": 5e-3, "zero_stage": 2, "precision": "fp32",
        "log_every_steps": 1, "eval_every_steps": 12, "seed": 0,
        "data_prep": {"deduplicate": False, "near_duplicate_threshold": None},
    } | overrides)
    return run_stage(name, str(model_dir), cfg,
                     ClusterConfig(num_workers=2, cpus_per_worker=1, use_gpu=False),
                     tmp_path / name, tmp_path / "ray")


@pytest.mark.parametrize(("name", "overrides"), [
    ("dpo-full-z3", {"zero_stage": 3}),
    ("dpo-lora-z2", {"method": "lora", "lr": 3e-2, "lora": {"rank": 4, "dropout": 0.0}}),
    ("simpo-full-z2", {"kind": "simpo", "preference": {"beta": 2.0, "gamma": 0.5}}),
])
def test_a_preference_stage_learns_its_pairs(ray_local, tiny_model_dir, tmp_path, name,
                                             overrides):
    summary = train(tmp_path, tiny_model_dir, name, **overrides)
    assert summary.kind == overrides.get("kind", "dpo")
    validations = [h for h in summary.history if "val_reward_accuracy" in h]
    assert [h["step"] for h in validations] == [12, 24]
    if summary.kind == "dpo":
        # Policy and reference are one model at the start: loss log 2, every reward 0.
        assert summary.history[0]["train_loss"] == pytest.approx(math.log(2), abs=0.05)
    # Every reward is 0 at the start (accuracy 0, margin 0): the pairs are being learned.
    assert summary.reward_accuracy == validations[-1]["val_reward_accuracy"] >= 0.6
    assert summary.reward_margin == validations[-1]["val_reward_margin"] \
        > validations[0]["val_reward_margin"] > 0
    assert summary.final_val_loss < validations[0]["val_loss"]
    assert summary.export_check  # the export reloads to the trained loss
