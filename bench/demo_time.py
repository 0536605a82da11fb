"""Time the demo end to end and per step, against the 10-minute target.

    python bench/demo_time.py [--runs-dir DIR] [--set KEY=VALUE ...]

Runs ``tunearena demo`` in a fresh run directory (a subprocess, as a user would; under
``--runs-dir``, which must not hold a ``demo`` run yet, to keep it), then reads
each step's wall time from the run manifest, and each stage's start-up (the driver's launch
to the first step, less that step) apart from its steps. Prints the whole run's wall time as
a ratio of the target (<= 1.00 meets it), and the run directory's size over what it must keep
(the exported models plus the index). Absolute times on shared machines are noisy; the
ratios are the figures to compare. Lines a script reads: ``later-stage start-up: X s`` (the
slowest stage after the first), ``total: X s`` and ``run dir ratio: R``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunearena.evaluation.results import load_results
from tunearena.files import disk_bytes

TARGET_S = 600.0  # the demo must finish within 10 minutes on a 2-core, 24 GiB machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--runs-dir", type=Path, help="keep the run here (default: a temporary dir)")
    args = parser.parse_args()
    if args.runs_dir is not None and (args.runs_dir / "demo").exists():
        parser.error(f"{args.runs_dir / 'demo'} exists: the timed run must start fresh")
    with (tempfile.TemporaryDirectory() if args.runs_dir is None
          else contextlib.nullcontext(str(args.runs_dir))) as runs:
        cmd = [sys.executable, "-m", "tunearena.launch.cli", "demo", "--set", f"runs_dir={runs}"]
        for override in args.overrides:
            cmd += ["--set", override]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall_s = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            return proc.returncode
        run_dir = Path(runs) / "demo"
        manifest = json.loads((run_dir / "manifest.json").read_text())
        # Typed: a renamed or missing field fails here, not as a wrong figure.
        results = load_results(run_dir / "results.json")
        run_bytes = disk_bytes(run_dir)
        kept_bytes = disk_bytes(run_dir / "models", run_dir / "index")
    steps = manifest["steps"]
    accounted = sum(s["duration_s"] for s in steps.values())
    print(f"{'step':<22}{'wall s':>10}{'share':>9}")
    for name, step in steps.items():
        print(f"{name:<22}{step['duration_s']:>10.1f}{step['duration_s'] / wall_s:>9.1%}")
    print(f"{'(start-up, checks)':<22}{wall_s - accounted:>10.1f}{(wall_s - accounted) / wall_s:>9.1%}")
    startups = stage_startups(steps)
    print(f"\n{'stage':<22}{'start-up s':>11}{'steps s':>10}")
    for name, (startup_s, steps_s) in startups.items():
        print(f"{name:<22}{startup_s:>11.1f}{steps_s:>10.1f}")
    if len(startups) > 1:
        later = max(startup_s for startup_s, _ in list(startups.values())[1:])
        print(f"later-stage start-up: {later:.1f} s")
    print(f"total: {wall_s:.1f} s")
    print(f"run dir: {run_bytes / 1e6:.1f} MB; exported models and index: "
          f"{kept_bytes / 1e6:.1f} MB")
    print(f"run dir ratio: {run_bytes / kept_bytes:.2f}")
    training = results.training
    if training is not None:
        print(f"training: {training.steps} steps, {training.tokens_per_s:.0f} tokens/s, "
              f"time to first step {training.time_to_first_step_s:.2f} s")
    print(f"demo wall time / {TARGET_S:.0f} s target = {wall_s / TARGET_S:.2f}")
    return 0


def stage_startups(steps: dict) -> dict[str, tuple[float, float]]:
    """Each trained stage's (start-up s, steps s), in training order: the driver's launch of
    the stage to its first step, less that step's own time; and the steps' time."""
    out = {}
    for name, step in steps.items():
        if not name.startswith("train") or "reused" in step:
            continue
        summary = step["outputs"]
        step_times = summary.get("step_time_s") or [0.0]
        first = summary.get("time_to_first_step_s") or 0.0
        out[name.removeprefix("train:")] = (first - step_times[0], sum(step_times))
    return out


if __name__ == "__main__":
    sys.exit(main())
