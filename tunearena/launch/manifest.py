"""The run manifest: each pipeline step, its status, artifacts and the config it ran with.

``tunearena run --resume`` skips a step whose entry says ``done`` with the same config hash
and whose artifacts still exist; a step is otherwise ``running``, ``failed`` or ``interrupted``
(by a signal). Every write is atomic (a uniquely named temp file, then a rename), so a
killed driver leaves the last complete manifest behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunearena.errors import UserError
from tunearena.files import write_atomic
from tunearena.launch.interrupts import signal_name

STEP_KEYS = {"status", "config_hash", "artifacts"}
"""What every step's entry holds from its start on."""


class ManifestError(UserError, ValueError):
    """A ``manifest.json`` that cannot be read back."""


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The run's manifest, None when there is none; ``ManifestError`` when it is not the
    JSON object tunearena writes (cut short by a full disk, or edited by hand)."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("steps"), dict):
            raise ValueError("expected an object with a 'steps' object")
        for name, entry in data["steps"].items():
            if not (isinstance(entry, dict) and entry.keys() >= STEP_KEYS):
                raise ValueError(f"step {name!r} lacks one of {', '.join(sorted(STEP_KEYS))}")
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(
            f"{path}: not a readable run manifest ({e}); the record of which steps finished "
            f"is lost. Remove it and rerun with --resume to run every step again (training "
            f"continues from its checkpoints), or start a fresh run with --set name=...") from None
    return data


class Manifest:
    """``manifest.json`` of one run directory."""

    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.run_dir = run_dir
        self.data = data

    @classmethod
    def open(cls, run_dir: Path, config_hash: str, code_version: str) -> Manifest:
        """Load the run's manifest, or start one."""
        data = read_manifest(run_dir) or {"created": _now(), "steps": {}}
        data |= {"config_hash": config_hash, "code_version": code_version}
        manifest = cls(run_dir, data)
        manifest.save()
        return manifest

    def save(self) -> None:
        write_atomic(self.run_dir / "manifest.json", json.dumps(self.data, indent=1) + "\n")

    def is_done(self, step: str, step_hash: str) -> bool:
        """Completed with the same inputs, and every recorded artifact still on disk."""
        entry = self.data["steps"].get(step)
        return bool(
            entry
            and entry["status"] == "done"
            and entry["config_hash"] == step_hash
            and all((self.run_dir / a).exists() for a in entry["artifacts"].values())
        )

    def outputs(self, step: str) -> dict[str, Any]:
        return self.data["steps"][step].get("outputs", {})

    def start(self, step: str, step_hash: str) -> None:
        self.data["steps"][step] = {
            "status": "running", "config_hash": step_hash, "started": _now(), "artifacts": {},
        }
        self.save()

    def finish(self, step: str, artifacts: dict[str, str], outputs: dict[str, Any],
               duration_s: float) -> None:
        self.data["steps"][step] |= {
            "status": "done", "finished": _now(), "duration_s": round(duration_s, 2),
            "artifacts": artifacts, "outputs": outputs,
        }
        self.save()

    def fail(self, step: str, error: str) -> None:
        self.data["steps"][step] |= {"status": "failed", "finished": _now(), "error": error}
        self.save()

    def close_running(self, status: str, reason: str) -> list[str]:
        """Mark every step still ``running`` as ``interrupted`` (by the signal named in
        ``reason``; not a failure) or ``failed`` (with the error in ``reason``): a run stops
        its steps all at once, even those that run side by side, as the arms do. Returns
        their names."""
        running = [name for name, e in self.data["steps"].items() if e["status"] == "running"]
        for name in running:
            key = "signal" if status == "interrupted" else "error"
            self.data["steps"][name] |= {"status": status, "finished": _now(), key: reason}
        if running:
            self.save()
        return running

    @contextmanager
    def closing_steps(self) -> Iterator[None]:
        """Steps still running when the block raises are marked at once: ``interrupted``
        (with the signal's name) on ``KeyboardInterrupt``, which is how Ctrl-C and SIGTERM
        arrive, else ``failed`` with the error. At once, because a scheduler's SIGKILL may
        follow its SIGTERM within seconds."""
        try:
            yield
        except KeyboardInterrupt:
            self.close_running("interrupted", signal_name())
            raise
        except BaseException as e:
            self.close_running("failed", f"{type(e).__name__}: {e}")
            raise

    def mark_reused(self, step: str) -> None:
        self.data["steps"][step]["reused"] = _now()
        self.save()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDirExists(UserError, RuntimeError):
    """Refusing to overwrite an earlier run's results."""


def refuse_earlier_run(run_dir: Path) -> None:
    """Raise ``RunDirExists`` when ``run_dir`` holds a run, saying how far it got and how to
    continue it (``--resume``) or keep it (another name)."""
    try:
        data = read_manifest(run_dir)
    except ManifestError:
        data, state = {}, " (its manifest.json is unreadable)"
    else:
        if data is None:
            return
        stopped = [_stopped(name, entry) for name, entry in data["steps"].items()
                   if entry.get("status") in ("failed", "interrupted", "running")]
        state = f": {'; '.join(stopped)}" if stopped else ""
    raise RunDirExists(
        f"{run_dir} already holds a run{state}. Pass --resume to continue it (finished steps "
        f"are reused), or choose another name (--set name=...) to keep both")


def _stopped(step: str, entry: dict[str, Any]) -> str:
    if entry["status"] == "failed":
        error = (entry.get("error") or "no error recorded").splitlines()[0]
        return f"step {step} failed ({error[:200]})"
    if entry["status"] == "interrupted":
        return f"step {step} was interrupted ({entry.get('signal', 'a signal')})"
    return f"step {step} was running when its driver stopped (killed, or the machine went down)"
