"""Bad inputs, as a hostile but fair user would give them: each case is an input, the exit code
it must get, the words its message must contain, and the files that must come through it
unchanged. ``tunearena`` runs in process (``main(argv)``), so each case costs no interpreter
start; the cases that need real signals or two drivers live in the integration tests
(``test_run_guard.py``).

A case builds its input in ``tmp_path`` and returns the command line; files it lists under
``keep`` are hashed before and after the command, and must not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunearena.launch.cli import main
from tunearena.launch.lock import RunLock

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
DEMO_BASE = REPO / "examples" / "demo_world" / "base_model"


@dataclass(frozen=True)
class Case:
    """One bad input. ``build(tmp_path)`` writes what it needs and returns ``(argv, keep)``:
    the command line and the files that must come through unchanged."""

    name: str
    build: Callable[[Path], tuple[list[str], list[Path]]]
    code: int
    words: tuple[str, ...]
    no_traceback: bool = True
    marks: tuple = field(default=())


# --- model files: weights, hub ids, custom code ------------------------------------------

MODEL_CASES: list[Case] = [
]


# --- data and config: training files, corpus, index, YAML, --set --------------------------

DATA_CASES: list[Case] = [
]


# --- run directories, reports, cluster -----------------------------------------------------

_HELD_LOCKS: list[RunLock] = []  # held until the session ends, like a driver still running


def _run(tmp: Path, *extra: str) -> list[str]:
    """``tunearena run`` of the demo config into ``tmp/runs/r``."""
    return ["run", str(DEMO), "--set", f"runs_dir={tmp / 'runs'}", "--set", "name=r", *extra]


def _earlier_run(tmp: Path, **steps: dict) -> Path:
    """A run directory ``tmp/runs/r`` whose manifest holds ``steps``; returns the manifest."""
    run_dir = tmp / "runs" / "r"
    run_dir.mkdir(parents=True)
    entries = {name.replace("__", ":"): {"config_hash": "0123", "started": "2026-01-01T10:00:00",
                                         "artifacts": {}, **entry}
               for name, entry in steps.items()}
    path = run_dir / "manifest.json"
    path.write_text(json.dumps({"created": "2026-01-01T10:00:00", "steps": entries}))
    return path


def _truncated_manifest(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, index={"status": "done"})
    path.write_text(path.read_text()[:40])  # a disk that filled up mid-write
    return _run(tmp, "--resume"), [path]


def _manifest_without_hashes(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp)
    path.write_text(json.dumps({"steps": {"index": {"status": "done"}}}))
    return _run(tmp, "--resume"), [path]


def _locked_run_dir(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, prepare={"status": "done"}, train={"status": "running"})
    lock = RunLock(path.parent, "tunearena run first.yaml")
    lock.acquire()
    _HELD_LOCKS.append(lock)
    return _run(tmp, "--resume"), [path]


def _stale_lock(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, train={"status": "failed", "error": "RuntimeError: worker died"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names a driver that is gone; the kernel released its flock
    (path.parent / ".lock").write_text(json.dumps(
        {"pid": dead.pid, "host": "h1", "command": "tunearena run old.yaml", "since": "then"}))
    return _run(tmp), [path]


def _failed_run(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, prepare__s1={"status": "done"},
                        train__s1={"status": "failed", "error": "RuntimeError: worker died\nmore"})
    return _run(tmp), [path]


def _interrupted_run(tmp: Path) -> tuple[list[str], list[Path]]:
    path = _earlier_run(tmp, train__s1={"status": "interrupted", "signal": "SIGTERM"})
    return _run(tmp), [path]


RUN_CASES: list[Case] = [
    Case("truncated manifest, --resume", _truncated_manifest, 2,
         ("manifest.json: not a readable run manifest", "Remove it and rerun with --resume",
          "--set name=")),
    Case("manifest step without its hash, --resume", _manifest_without_hashes, 2,
         ("manifest.json: not a readable run manifest", "step 'index' lacks")),
    Case("run dir locked by a running driver, --resume", _locked_run_dir, 2,
         ("is in use by pid", f"pid {os.getpid()}", "(tunearena run first.yaml)",
          "one driver per run directory")),
    Case("stale lock of a dead driver, earlier run failed", _stale_lock, 2,
         ("the previous driver of this run", "(tunearena run old.yaml), died holding it",
          "step train failed (RuntimeError: worker died)", "Pass --resume to continue it")),
    Case("failed run, rerun without --resume", _failed_run, 2,
         ("already holds a run: step train:s1 failed (RuntimeError: worker died)",
          "Pass --resume to continue it", "--set name=...")),
    Case("interrupted run, rerun without --resume", _interrupted_run, 2,
         ("step train:s1 was interrupted (SIGTERM)", "Pass --resume to continue it")),
]


ALL_CASES = [*MODEL_CASES, *DATA_CASES, *RUN_CASES]


def _digest(path: Path) -> str:
    if path.is_dir():
        return "".join(_digest(p) for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=c.marks) for c in ALL_CASES])
def test_bad_input(case: Case, tmp_path, capsys):
    argv, keep = case.build(tmp_path)
    before = {p: _digest(p) for p in keep}
    code = main(argv)
    out, err = capsys.readouterr()
    said = " ".join((out + err).split())  # rich wraps long lines
    assert code == case.code, said
    for word in case.words:
        assert " ".join(word.split()) in said, f"{word!r} not in: {said}"
    if case.no_traceback:
        assert "Traceback" not in said
    for path, digest in before.items():
        assert path.exists() and _digest(path) == digest, f"{path} changed"
