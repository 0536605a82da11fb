"""A run's checkpoints in storage: written by the ranks themselves, recorded once whole,
rotated, dropped once the export is collected, and the export linked rather than copied."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tunearena.files import disk_bytes
from tunearena.training import checkpoint as ckpt
from tunearena.training.loop import EXPORT_MARKER
from tunearena.training.summary import TrainingSummary
from tunearena.training.trainer import collect_export


def _write(storage: str, run: str, name: str, size: int = 1000) -> None:
    with ckpt.writing(storage, run, name) as d:
        (d / "weights.bin").write_bytes(b"w" * size)


def _dirs(storage: Path, run: str) -> list[str]:
    return sorted(p.name for p in (storage / run).iterdir() if p.is_dir())


def test_only_recorded_checkpoints_count_and_the_oldest_rotate_out(tmp_path):
    storage = str(tmp_path)
    assert ckpt.latest(storage, "run") is None
    for step in (4, 8, 12):
        name = ckpt.checkpoint_dir_name(step)
        _write(storage, "run", name)
        ckpt.commit(storage, "run", name, {"step": step}, keep=2)
    assert ckpt.latest(storage, "run") == ("step_0000012", {"step": 12})
    assert _dirs(tmp_path, "run") == ["step_0000008", "step_0000012"]
    # A dir a killed worker left half written is on disk but never the latest.
    _write(storage, "run", ckpt.checkpoint_dir_name(16))
    assert ckpt.latest(storage, "run")[0] == "step_0000012"
    # Written again, it is replaced rather than merged with what the dead attempt left.
    ckpt.discard(storage, "run", "step_0000016")
    assert not (tmp_path / "run" / "step_0000016").exists()


def test_a_finished_run_keeps_only_its_export(tmp_path):
    storage = str(tmp_path)
    for step in (4, 8):
        _write(storage, "run", ckpt.checkpoint_dir_name(step), 5000)
        ckpt.commit(storage, "run", ckpt.checkpoint_dir_name(step), {"step": step}, keep=3)
    assert ckpt.drop_resumable(storage, "run") == 0  # no export yet: a resume needs them
    assert _dirs(tmp_path, "run") == ["step_0000004", "step_0000008"]
    _write(storage, "run", ckpt.EXPORT_DIR, 100)
    ckpt.commit(storage, "run", ckpt.EXPORT_DIR, {"step": 10, "exported": True}, keep=3)
    assert ckpt.drop_resumable(storage, "run") == 10000
    assert _dirs(tmp_path, "run") == [ckpt.EXPORT_DIR]
    assert ckpt.latest(storage, "run") == (ckpt.EXPORT_DIR, {"step": 10, "exported": True})


def test_an_object_store_checkpoint_is_uploaded_when_written(tmp_path):
    uri = f"file://{tmp_path / 'bucket'}"
    _write(uri, "run", "step_0000004")
    ckpt.commit(uri, "run", "step_0000004", {"step": 4}, keep=2)
    assert (tmp_path / "bucket" / "run" / "step_0000004" / "weights.bin").stat().st_size == 1000
    assert ckpt.latest(uri, "run") == ("step_0000004", {"step": 4})


def test_the_export_is_linked_into_the_run_not_copied(tmp_path):
    storage = str(tmp_path / "ray")
    with ckpt.writing(storage, "run", ckpt.EXPORT_DIR) as d:
        (d / "model.safetensors").write_bytes(b"m" * 4096)
        (d / EXPORT_MARKER).write_text(_summary().model_dump_json())
    ckpt.commit(storage, "run", ckpt.EXPORT_DIR, {"step": 2, "exported": True}, keep=2)
    out = tmp_path / "models" / "s1"
    summary = collect_export("run", storage, out)
    assert summary.steps == 2
    exported = tmp_path / "ray" / "run" / ckpt.EXPORT_DIR / "model.safetensors"
    assert os.path.samefile(out / "model.safetensors", exported)
    # The model is on disk once: beside it, only the small record.
    assert disk_bytes(tmp_path) - disk_bytes(tmp_path / "models") < 4096


def test_a_run_without_an_export_is_not_collected(tmp_path):
    _write(str(tmp_path), "run", "step_0000004")
    ckpt.commit(str(tmp_path), "run", "step_0000004", {"step": 4}, keep=2)
    with pytest.raises(RuntimeError, match="finished without an exported model"):
        collect_export("run", str(tmp_path), tmp_path / "out")


def _summary() -> TrainingSummary:
    return TrainingSummary(
        steps=2, planned_steps=2, method="full", parameters=10, trainable_parameters=10,
        train_tokens=64, train_s=1.0, tokens_per_s=64.0, tokens_per_s_per_worker=32.0,
        device="cpu", global_batch_size=4, world_size=2, bf16=False, use_gpu=False,
        train_sequences=8, val_sequences=0, train_loss_tokens=60,
        mix={"target": {"t": 1.0}, "realised": {"t": 1.0}, "sequences": {"t": 8}})


def test_two_ranks_writing_one_checkpoint_each_hash_only_their_own_files(tmp_path):
    storage = str(tmp_path)
    # Rank 1 finishes first: rank 0 must not list (or hash) rank 1's files as its own.
    for rank in (1, 0):
        with ckpt.writing(storage, "run", "step_0000004", rank) as d:
            (d / "deepspeed").mkdir()
            (d / "deepspeed" / f"optim_rank{rank}.pt").write_bytes(bytes([rank]) * 100)
            if rank == 0:
                (d / ckpt.STATE_FILE).write_text('{"world_size": 2, "step": 4}')
            ckpt.write_hashes(d, rank)
    merged = tmp_path / "run" / "step_0000004"
    hashed = {r: set(json.loads((merged / ckpt.HASH_FILE.format(rank=r)).read_text())["files"])
              for r in (0, 1)}
    assert hashed[1] == {"deepspeed/optim_rank1.pt"}
    assert hashed[0] == {"deepspeed/optim_rank0.pt", ckpt.STATE_FILE}
    ckpt.verify_latest(storage, "run", "step_0000004")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["step_0000004"]
