"""Checkpoint files are hashed by the rank that wrote them and refused when they changed.

Two ranks write their parts into their own directories, as Ray Train workers do, and the parts
are merged into one checkpoint dir, as Ray's upload does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs
import pytest

from tunearena.training import checkpoint as ckpt


def _checkpoint(tmp_path: Path) -> Path:
    merged = tmp_path / "storage" / "stage" / "step_0000004"
    for rank in (0, 1):
        part = tmp_path / f"rank{rank}"
        (part / "deepspeed").mkdir(parents=True)
        (part / "deepspeed" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(
            bytes([rank]) * 1000)
        (part / f"rng_rank{rank}.pt").write_bytes(b"rng" * rank)
        if rank == 0:
            (part / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"weights" * 100)
            (part / "latest").write_text("deepspeed")
            (part / ckpt.STATE_FILE).write_text(json.dumps({"world_size": 2, "step": 4}))
        ckpt.write_hashes(part, rank)
        shutil.copytree(part, merged, dirs_exist_ok=True)
    return merged


def _verify(path: Path, ranks: set[int] | None = None) -> None:
    ckpt.verify(pyarrow.fs.LocalFileSystem(), str(path), str(path), ranks)


def test_each_rank_lists_the_files_it_wrote(tmp_path):
    merged = _checkpoint(tmp_path)
    lists = {r: json.loads((merged / ckpt.HASH_FILE.format(rank=r)).read_text())["files"]
             for r in (0, 1)}
    assert sorted(lists[1]) == ["deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt",
                                "rng_rank1.pt"]
    assert "deepspeed/mp_rank_00_model_states.pt" in lists[0] and ckpt.STATE_FILE in lists[0]
    assert all(len(d) == 64 for files in lists.values() for d in files.values())
    _verify(merged)
    ckpt.verify_latest(str(tmp_path / "storage"), "stage", merged.name)


@pytest.mark.parametrize(("tamper", "words"), [
    (lambda d: (d / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"evil" * 175),
     "deepspeed/mp_rank_00_model_states.pt does not match the SHA-256"),
    (lambda d: (d / "deepspeed" / "zero_pp_rank_2_mp_rank_00_optim_states.pt").write_bytes(b"x"),
     "zero_pp_rank_2_mp_rank_00_optim_states.pt is not one of the files saved"),
    (lambda d: (d / "rng_rank1.pt").unlink(), "rng_rank1.pt is missing"),
    (lambda d: (d / ckpt.HASH_FILE.format(rank=1)).unlink(),
     "tunearena_hashes_rank1.json is missing"),
    (lambda d: [p.unlink() for p in d.glob("tunearena_hashes_rank*.json")],
     "no tunearena_hashes_rank<R>.json"),
])
def test_a_changed_checkpoint_is_refused_naming_the_file(tmp_path, tamper, words):
    merged = _checkpoint(tmp_path)
    tamper(merged)
    with pytest.raises(ckpt.CheckpointMismatch) as e:
        _verify(merged)
    message = str(e.value)
    assert words in message and str(merged) in message
    assert f"Delete the stage's checkpoint dir ({merged.parent})" in message


def test_a_rank_checks_only_the_files_it_reads(tmp_path):
    merged = _checkpoint(tmp_path)
    (merged / "deepspeed" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"y" * 1000)
    _verify(merged, ranks={0})  # rank 0 never reads rank 1's optimizer shard
    with pytest.raises(ckpt.CheckpointMismatch, match="zero_pp_rank_1"):
        _verify(merged, ranks={0, 1})
