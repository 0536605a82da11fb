"""Resumable checkpoints: what a worker saves and loads, and what the driver checks before a
stage restarts from one.

A checkpoint is DeepSpeed's own (every rank writes its shard into the same dir) plus
``tunearena_state.json`` from rank 0 (step, loss history, tracker run) and each rank's RNG
state, and each rank's list of the SHA-256 of the files it wrote
(``tunearena_hashes_rank<R>.json``). It lives in ``<storage>/<run name>/step_NNNNNNN``; the
stage's verified export in ``<storage>/<run name>/export``. The run's record
(``tunearena_checkpoints.json``, beside them) lists the latest ``checkpoint_keep`` of them,
each added by rank 0 once every rank has written its part; the latest is restored when a run
of the same name trains again: after a worker failure (``max_failures``) and on ``--resume``.
The workers write into storage themselves (not through Ray Train), so a run's checkpoints
stay its own when one worker group trains stage after stage.

DeepSpeed reads its files with ``torch.load(weights_only=False)``, which runs whatever code a
crafted file holds; so a checkpoint is loaded only when every file in it is one the ranks
listed and matches its hash (``verify``): the driver checks the whole checkpoint before any
worker starts, each rank the files it reads before DeepSpeed opens them.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunearena.cluster.storage import resolve_storage
from tunearena.errors import UserError

STATE_FILE = "tunearena_state.json"
HASH_FILE = "tunearena_hashes_rank{rank}.json"
"""Each rank's ``{"algorithm": "sha256", "rank": R, "files": {relative path: hex digest}}``."""
DEEPSPEED_TAG = "deepspeed"
RECORD_FILE = "tunearena_checkpoints.json"
"""A run's checkpoints in storage, oldest first: ``{"checkpoints": [{"dir": name, "metrics":
{...}}]}``. Only whole checkpoints are in it, so a dir a killed worker left half written is
never restored."""
EXPORT_DIR = "export"
"""The checkpoint dir that holds a stage's verified export (a Hugging Face model dir)."""


class ResumeError(UserError, RuntimeError):
    """A checkpoint this attempt cannot continue from; the message says why and what to do."""


class CheckpointMismatch(ResumeError):
    """A checkpoint whose files are not the ones its ranks saved (changed, added, missing,
    or never hashed); it is not loaded."""


@dataclass
class TrainState:
    """Where a stage stands after ``step`` optimizer steps: what a resumed attempt continues
    from, saved and restored as one."""

    world_size: int
    global_batch_size: int
    """The batch the steps were counted in; with ``world_size``, what a resume must match."""
    step: int = 0
    history: list[dict] = field(default_factory=list)
    """Logged metrics by step."""
    train_s: float = 0.0
    """Wall time of the training steps, over every attempt before this one."""
    train_tokens: int = 0
    """Tokens in the trained batches (padding excluded), over every attempt."""
    mlflow_run_id: str | None = None
    """The tracker's run, continued on resume."""
    placement: list[dict] = field(default_factory=list)
    """Where each rank ran when the checkpoint was written."""
    task_counts: list[int] = field(default_factory=list)
    """Sequences drawn per task so far."""
    best_val: float = math.inf
    """Best validation loss so far, and validations since it (early stopping)."""
    bad_evals: int = 0
    reference: dict[str, list] = field(default_factory=dict)
    """A ``dpo`` stage's reference log-probabilities per split (``preference_loop.py``),
    computed at the first step and kept so a resumed stage compares against its start."""

    def add_task_counts(self, counts) -> None:
        """Count the sequences a step drew from each task."""
        self.task_counts = [n + int(c) for n, c in zip(self.task_counts, counts, strict=True)]

    def observe_validation(self, val_loss: float, min_delta: float) -> None:
        """Count a validation towards early stopping: a new best, or one more that is not."""
        if val_loss < self.best_val - min_delta:
            self.best_val, self.bad_evals = val_loss, 0
        else:
            self.bad_evals += 1


def checkpoint_dir_name(step: int) -> str:
    """Sortable dir names, so the storage listing reads in training order."""
    return f"step_{step:07d}"


def save(engine, directory: Path, rank: int, state: TrainState, exclude_frozen: bool) -> None:
    """Write this rank's part of a checkpoint into ``directory`` (a collective).

    ``exclude_frozen`` leaves a LoRA run's frozen base weights out: they never change, and
    they are most of the model.
    """
    engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG,
                           exclude_frozen_parameters=exclude_frozen)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, directory / f"rng_rank{rank}.pt")
    if rank == 0:
        (directory / STATE_FILE).write_text(json.dumps(asdict(state)))
    write_hashes(directory, rank)  # last: it covers every file this rank wrote


def load(engine, directory: Path, rank: int, world_size: int, exclude_frozen: bool) -> TrainState:
    """Restore engine, optimizer, lr schedule and RNG from ``directory``; returns the state."""
    # Before DeepSpeed unpickles anything: this rank's files and rank 0's (whose model
    # states every rank reads) must be the ones saved.
    verify(_local(), str(directory), str(directory), ranks={0, rank})
    state = json.loads((directory / STATE_FILE).read_text())
    check_world_size(state, world_size)
    load_path, _ = engine.load_checkpoint(
        str(directory), tag=DEEPSPEED_TAG, load_optimizer_states=True,
        load_lr_scheduler_states=True, load_module_strict=not exclude_frozen,
    )
    if load_path is None:
        raise ResumeError(f"DeepSpeed found no checkpoint in {directory}")
    rng = torch.load(directory / f"rng_rank{rank}.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return TrainState(**state)


def write_hashes(directory: Path, rank: int) -> None:
    """Record the SHA-256 of every file this rank put in ``directory`` (its part of a
    checkpoint), beside them, so the hashes travel and rotate with the checkpoint."""
    fs = _local()
    files = {name: _sha256(fs, f"{directory}/{name}") for name in _files(fs, str(directory))}
    (directory / HASH_FILE.format(rank=rank)).write_text(
        json.dumps({"algorithm": "sha256", "rank": rank, "files": files}, indent=0))


def verify(fs, root: str, where: str, ranks: set[int] | None = None) -> None:
    """Refuse the checkpoint at ``root`` on ``fs`` (named ``where`` in messages) unless every
    file in it is listed by one rank's hash file, every rank has one, and the files of
    ``ranks`` (default: all) match their hashes. Raises ``CheckpointMismatch``."""

    def refuse(what: str) -> CheckpointMismatch:
        return CheckpointMismatch(
            f"checkpoint {where}: {what}. It is not loaded: DeepSpeed's checkpoint files can run "
            f"code when read, so only the files the run saved are. Delete the stage's "
            f"checkpoint dir ({where.rstrip('/').rsplit('/', 1)[0]}) to train the stage from "
            f"scratch, or rerun without --resume")

    present = set(_files(fs, root))
    lists = {}
    for name in sorted(n for n in present if n.startswith("tunearena_hashes_rank")):
        with fs.open_input_stream(f"{root}/{name}") as f:
            record = json.loads(f.read())
        lists[int(record["rank"])] = record["files"]
        present.discard(name)
    if not lists:
        raise refuse(f"no {HASH_FILE.format(rank='<R>')} (the hashes of its files, recorded "
                     f"when it was saved)")
    if STATE_FILE not in present:
        raise refuse(f"{STATE_FILE} is missing")
    with fs.open_input_stream(f"{root}/{STATE_FILE}") as f:  # JSON: safe to read first
        world_size = int(json.loads(f.read())["world_size"])
    for rank in range(world_size):
        if rank not in lists:
            raise refuse(f"{HASH_FILE.format(rank=rank)} is missing")
    listed = {name for files in lists.values() for name in files}
    if present - listed:
        raise refuse(f"{min(present - listed)} is not one of the files saved (no hash was "
                     f"recorded for it)")
    if listed - present:
        raise refuse(f"{min(listed - present)} is missing")
    for rank in sorted(lists if ranks is None else ranks & lists.keys()):
        for name, digest in sorted(lists[rank].items()):
            if _sha256(fs, f"{root}/{name}") != digest:
                raise refuse(f"{name} does not match the SHA-256 recorded when it was saved "
                             f"(changed or corrupted since)")


def verify_latest(storage_path: str, run_name: str, dir_name: str) -> None:
    """``verify`` the whole checkpoint ``dir_name`` of a run in storage, from the driver."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(resolve_storage(storage_path))
    path = f"{root.rstrip('/')}/{run_name}/{dir_name}"
    verify(fs, path, path if "://" not in storage_path else
           f"{storage_path.rstrip('/')}/{run_name}/{dir_name}")


def _local():
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem()


def _files(fs, root: str) -> list[str]:
    """Paths (relative to ``root``) of the files under it, dot-files (Ray's markers) aside."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    names = [info.path[len(root.rstrip("/")) + 1:] for info in infos
             if info.type == pyarrow.fs.FileType.File]
    return sorted(n for n in names if not any(part.startswith(".") for part in n.split("/")))


def _sha256(fs, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def check_world_size(state: dict, world_size: int) -> None:
    """Refuse to resume on a different number of workers.

    ZeRO partitions the optimizer states per worker, and the global batch (so the data
    position and the lr schedule's step count) depends on the worker count too.
    """
    if state["world_size"] != world_size:
        raise ResumeError(
            f"the checkpoint at step {state['step']} was written by {state['world_size']} "
            f"workers (global batch {state['global_batch_size']}); this attempt has "
            f"{world_size}. Resume with cluster.num_workers: {state['world_size']}, or start "
            f"the stage afresh without --resume."
        )


def _run_root(storage_path: str, run_name: str):
    """(pyarrow filesystem, path) of a run's dir in storage."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(resolve_storage(storage_path))
    return fs, f"{root.rstrip('/')}/{run_name}"


def record(storage_path: str, run_name: str) -> list[dict]:
    """The run's recorded checkpoints, oldest first (``RECORD_FILE``); [] for none."""
    import pyarrow.fs

    fs, root = _run_root(storage_path, run_name)
    path = f"{root}/{RECORD_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return []
    with fs.open_input_stream(path) as f:
        return list(json.loads(f.read())["checkpoints"])


def latest(storage_path: str, run_name: str) -> tuple[str, dict] | None:
    """(dir name, metrics) of the run's latest recorded checkpoint; None for none."""
    entries = record(storage_path, run_name)
    return (entries[-1]["dir"], entries[-1]["metrics"]) if entries else None


def _write_record(storage_path: str, run_name: str, entries: list[dict]) -> None:
    text = json.dumps({"checkpoints": entries}, indent=1) + "\n"
    if "://" in storage_path:  # an object store's put is whole or absent
        fs, root = _run_root(storage_path, run_name)
        with fs.open_output_stream(f"{root}/{RECORD_FILE}") as f:
            f.write(text.encode())
    else:
        from tunearena.files import write_atomic

        write_atomic(Path(resolve_storage(storage_path)) / run_name / RECORD_FILE, text)


def discard(storage_path: str, run_name: str, dir_name: str) -> None:
    """Delete checkpoint dir ``dir_name`` of a run, if it exists (a dir left by a killed
    attempt, before the same checkpoint is written again)."""
    import pyarrow.fs

    fs, root = _run_root(storage_path, run_name)
    if fs.get_file_info(f"{root}/{dir_name}").type == pyarrow.fs.FileType.Directory:
        fs.delete_dir(f"{root}/{dir_name}")


@contextmanager
def writing(storage_path: str, run_name: str, dir_name: str, rank: int = 0) -> Iterator[Path]:
    """A local dir for rank ``rank`` to write its part of checkpoint ``dir_name`` of a run
    into, merged into the checkpoint when the block ends: a dir of its own beside the
    checkpoint in storage (each rank hashes only the files it wrote; the merge is a rename
    per file), or a temporary dir uploaded to an object store."""
    import shutil

    if "://" in storage_path:
        import pyarrow.fs

        fs, root = _run_root(storage_path, run_name)
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
            fs.create_dir(f"{root}/{dir_name}", recursive=True)  # a no-op on an object store
            pyarrow.fs.copy_files(tmp, f"{root}/{dir_name}", destination_filesystem=fs)
        return
    run_dir = Path(resolve_storage(storage_path)) / run_name
    own = run_dir / f".{dir_name}.rank{rank}"  # a dot-dir: never read as a checkpoint
    shutil.rmtree(own, ignore_errors=True)  # what a killed attempt of this rank left
    own.mkdir(parents=True)
    try:
        yield own
        for path in sorted(own.rglob("*")):
            if path.is_file():
                target = run_dir / dir_name / path.relative_to(own)
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)
    finally:
        shutil.rmtree(own, ignore_errors=True)


def commit(storage_path: str, run_name: str, dir_name: str, metrics: dict, keep: int) -> None:
    """Record checkpoint ``dir_name`` (whole: every rank has written its part) as the run's
    latest, with ``metrics``; the checkpoints beyond the latest ``keep`` are deleted."""
    entries = [e for e in record(storage_path, run_name) if e["dir"] != dir_name]
    entries.append({"dir": dir_name, "metrics": metrics})
    dropped, entries = entries[:-keep], entries[-keep:]
    _write_record(storage_path, run_name, entries)  # first: a listed dir always exists
    for entry in dropped:
        discard(storage_path, run_name, entry["dir"])


def drop_resumable(storage_path: str, run_name: str) -> int:
    """Delete a finished run's resumable checkpoints, keeping its export; returns the bytes
    freed. Nothing reads them again once the export is verified and collected."""
    entries = record(storage_path, run_name)
    kept = [e for e in entries if e["dir"] == EXPORT_DIR]
    if not kept:  # not finished: its checkpoints are what a resume needs
        return 0
    freed = 0
    _write_record(storage_path, run_name, kept)
    for entry in entries:
        if entry["dir"] != EXPORT_DIR:
            freed += _size(storage_path, run_name, entry["dir"])
            discard(storage_path, run_name, entry["dir"])
    return freed


def _size(storage_path: str, run_name: str, dir_name: str) -> int:
    import pyarrow.fs

    fs, root = _run_root(storage_path, run_name)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{dir_name}", recursive=True,
                                                     allow_not_found=True))
    return sum(i.size or 0 for i in infos if i.type == pyarrow.fs.FileType.File)


def open_checkpoint(storage_path: str, run_name: str, dir_name: str):
    """A Ray ``Checkpoint`` for a checkpoint dir in storage (local or an object store):
    ``as_directory()`` gives the dir itself, or a downloaded copy of it."""
    import ray.train

    fs, root = _run_root(storage_path, run_name)
    return ray.train.Checkpoint(path=f"{root}/{dir_name}", filesystem=fs)


def clear(storage_path: str, run_name: str) -> None:
    """Delete a run's checkpoints, so a fresh attempt does not restore an old one."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(resolve_storage(storage_path))
    path = f"{root.rstrip('/')}/{run_name}"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)


def clear_prefixed(storage_path: str, prefix: str) -> None:
    """Delete every run whose name starts with ``prefix`` (a sweep's experiment and its
    trials' runs), so a fresh sweep restores none of them."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(resolve_storage(storage_path))
    selector = pyarrow.fs.FileSelector(root.rstrip("/"), allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(prefix):
            fs.delete_dir(info.path)
