"""Checkpoints that resume exactly: after a killed worker, and after a killed driver.

Real local Ray, two Ray Train workers, real DeepSpeed ZeRO-2 on gloo (fp32). Every run here
trains the same seeded stage, so an uninterrupted run gives the loss curve that an
interrupted one must reproduce step for step: same weights, optimizer state, lr schedule and
data position after the restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tunearena.cluster.config import ClusterConfig
from tunearena.training import checkpoint as ckpt
from tunearena.training.config import TrainingConfig
from tunearena.training.summary import TrainingSummary
from tunearena.training.trainer import run_stage

pytestmark = pytest.mark.slow

CLUSTER = ClusterConfig(num_workers=2, cpus_per_worker=1, use_gpu=False, max_failures=1)
TOTAL_STEPS = 32


@pytest.fixture(scope="module")
def cfg(tiny_text_file) -> TrainingConfig:
    return TrainingConfig(
        datasets=[{"path": tiny_text_file, "format": "text"}], validation_fraction=0.1, seq_len=32,
        micro_batch_size=2, grad_accum_steps=1, max_steps=TOTAL_STEPS, lr=5e-3, warmup_steps=4,
        zero_stage=2, precision="fp32", log_every_steps=1, eval_every_steps=1000,
        checkpoint_every_steps=4, checkpoint_keep=2, seed=0,
        # TINY_TEXT repeats each text four times on purpose: the repeats are kept.
        data_prep={"deduplicate": False, "near_duplicate_threshold": None},
    )


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tiny_model_dir, cfg, storage, tmp_path_factory) -> TrainingSummary:
    return run_stage("uninterrupted", str(tiny_model_dir), cfg, CLUSTER,
                     tmp_path_factory.mktemp("out") / "model", storage)


def losses(summary: TrainingSummary) -> list[float]:
    return [h["train_loss"] for h in summary.history if "train_loss" in h]


def wait_for_checkpoint(storage: Path, name: str, min_step: int, timeout_s: float = 120) -> tuple:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        latest = ckpt.latest(str(storage), name)
        if latest is not None and latest[1]["step"] >= min_step:
            return latest
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint at step >= {min_step} in {timeout_s} s")


def test_a_killed_worker_is_restarted_from_its_checkpoint(uninterrupted, tiny_model_dir, cfg,
                                                         storage, tmp_path):
    result: dict = {}

    def train():
        try:
            result["summary"] = run_stage("killed-worker", str(tiny_model_dir), cfg, CLUSTER,
                                          tmp_path / "model", storage)
        except BaseException as e:  # surfaced by the assertion below
            result["error"] = e

    thread = threading.Thread(target=train)
    thread.start()
    dir_name, _ = wait_for_checkpoint(storage, "killed-worker", 4)
    state = json.loads((storage / "killed-worker" / dir_name / ckpt.STATE_FILE).read_text())
    victim = next(w for w in state["placement"] if w["rank"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    summary = result["summary"]

    # It restarted from a checkpoint, not from scratch, and finished every step.
    assert 4 <= summary.resumed_from_step < TOTAL_STEPS
    assert summary.steps == TOTAL_STEPS
    # The new worker group has new processes.
    assert victim["pid"] not in {w.pid for w in summary.placement}
    # The loss continues where it left off: the whole curve is the uninterrupted one.
    assert losses(summary) == pytest.approx(losses(uninterrupted), abs=1e-5)
    assert summary.final_train_loss == pytest.approx(uninterrupted.final_train_loss,
                                                      abs=1e-5)


def test_a_stopped_run_resumes_to_the_same_final_loss(uninterrupted, ray_local, tiny_model_dir,
                                                      cfg, storage, tmp_path):
    # The driver is a separate process on the same Ray instance, killed like a closed laptop:
    # Ray then ends its trainer and workers, and only storage remains.
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    script = textwrap.dedent(f"""
        import ray
        from tunearena.cluster.config import ClusterConfig
        from tunearena.training.config import TrainingConfig
        from tunearena.training.trainer import run_stage
        ray.init(address={ray_local!r})
        cfg = TrainingConfig.model_validate_json(open({str(tmp_path / "cfg.json")!r}).read())
        cluster = ClusterConfig.model_validate_json({CLUSTER.model_dump_json()!r})
        run_stage("stopped", {str(tiny_model_dir)!r}, cfg, cluster,
                  {str(tmp_path / "first")!r}, {str(storage)!r})
    """)
    driver = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_for_checkpoint(storage, "stopped", 8)
    finally:
        driver.kill()
        driver.wait(timeout=60)
    assert not (tmp_path / "first").exists()  # it never finished
    stopped_at = ckpt.latest(str(storage), "stopped")
    assert stopped_at is not None and not stopped_at[1].get("exported")

    # A different worker count is refused before any worker starts, saying why.
    with pytest.raises(ckpt.ResumeError, match=r"written by 2 workers.*this attempt has 1"):
        run_stage("stopped", str(tiny_model_dir), cfg,
                  CLUSTER.model_copy(update={"num_workers": 1}), tmp_path / "model", storage)

    # A checkpoint whose files changed since they were saved is refused before any worker
    # starts (DeepSpeed would unpickle them), naming the file; the original still resumes.
    tampered = storage / "tampered"
    shutil.copytree(storage / "stopped", tampered)
    hashes = json.loads((tampered / stopped_at[0] / "tunearena_hashes_rank0.json").read_text())
    assert {"tunearena_state.json", "rng_rank0.pt"} <= hashes["files"].keys()
    states = tampered / stopped_at[0] / "deepspeed" / "mp_rank_00_model_states.pt"
    assert "deepspeed/mp_rank_00_model_states.pt" in hashes["files"]
    states.write_bytes(states.read_bytes() + b"\0")
    with pytest.raises(ckpt.CheckpointMismatch,
                       match=r"mp_rank_00_model_states.pt does not match the SHA-256.*Delete"):
        run_stage("tampered", str(tiny_model_dir), cfg, CLUSTER, tmp_path / "model", storage)
    shutil.rmtree(tampered)

    summary = run_stage("stopped", str(tiny_model_dir), cfg, CLUSTER, tmp_path / "model",
                        storage)
    assert summary.resumed_from_step == stopped_at[1]["step"]
    assert losses(summary) == pytest.approx(losses(uninterrupted), abs=1e-5)
    assert summary.final_train_loss == pytest.approx(uninterrupted.final_train_loss,
                                                      abs=1e-5)
    # Only the newest checkpoints are kept (checkpoint_keep: 2, the export among them).
    kept = sorted(p.name for p in (storage / "stopped").iterdir() if p.is_dir())
    assert len(kept) == 2 and "export" in kept, kept

    # Asked again, the finished stage is collected from its export without training.
    again = run_stage("stopped", str(tiny_model_dir), cfg, CLUSTER, tmp_path / "again", storage)
    assert again.final_train_loss == summary.final_train_loss
    assert (tmp_path / "again" / "model.safetensors").is_file()
