"""The run manifest: each pipeline step, its status, artifacts and the config it ran with.

``tunearena run --resume`` skips a step whose entry says ``done`` with the same config hash
and whose artifacts still exist. Every write is atomic (temp file, then rename), so a killed
driver leaves the last complete manifest behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunearena.files import write_atomic


class Manifest:
    """``manifest.json`` of one run directory."""

    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.run_dir = run_dir
        self.data = data

    @classmethod
    def open(cls, run_dir: Path, config_hash: str, code_version: str) -> Manifest:
        """Load the run's manifest, or start one."""
        path = run_dir / "manifest.json"
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            data = {"created": _now(), "steps": {}}
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

    def mark_reused(self, step: str) -> None:
        self.data["steps"][step]["reused"] = _now()
        self.save()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
