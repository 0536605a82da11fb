"""A run's life with real signals and two real drivers: Ctrl-C and SIGTERM during training end
as interrupts (exit 130 / 143, the step marked ``interrupted``, nothing of the run left
running) that ``--resume`` continues, and a second driver on a busy run directory is refused
without harming the first.

Each driver is ``python -m tunearena.launch.cli run`` in a session of its own, starting its
own local Ray, as a user's terminal would; one Ray Train worker trains the tiny model.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

MAX_STEPS = 60  # long enough that a signal sent at step 1 lands in training
# The first driver of the two-driver test trains on while a second one starts (seconds) and is
# refused: 60 steps of the tiny model take about a second.
GUARDED_STEPS = 3000
HINT = "interrupted; completed steps are kept (rerun with --resume)"


@pytest.fixture(scope="module")
def config(tiny_model_dir, tmp_path_factory) -> Path:
    """A training-only experiment: one worker, no RAG, no evaluation."""
    root = tmp_path_factory.mktemp("guard")
    rng = random.Random(0)

    def word() -> str:
        return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))

    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"The {word()} bridge of {word().title()} "
                                                f"spans {20 + i} meters."}) + "\n"
                            for i in range(48)))
    cfg = {
        "name": "guard",
        "model": {"base": str(tiny_model_dir)},
        "cluster": {"address": "local", "num_cpus": 2, "num_workers": 1, "cpus_per_worker": 1,
                    "use_gpu": False},
        "training": {"datasets": [{"path": str(data)}], "validation_fraction": 0.1,
                     "seq_len": 32, "micro_batch_size": 2, "max_steps": MAX_STEPS, "lr": 1e-3,
                     "zero_stage": 0, "precision": "fp32", "log_every_steps": 1,
                     "eval_every_steps": 1000, "checkpoint_every_steps": 10},
        "rag": {"enabled": False},
        "evaluation": {"enabled": False, "arms": ["base"]},
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Driver:
    """One ``tunearena run`` in a new session (its own process group, as a terminal job)."""

    def __init__(self, config: Path, runs_dir: Path, *extra: str, name: str = "driver"):
        self.run_dir = runs_dir / "guard"
        self.log = runs_dir.parent / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunearena.launch.cli", "run", str(config),
                 "--set", f"runs_dir={runs_dir}", *extra],
                cwd=runs_dir.parent, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def steps(self) -> dict:
        try:
            return json.loads((self.run_dir / "manifest.json").read_text())["steps"]
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_for_training(self, timeout_s: float = 300) -> None:
        """Until the manifest says train is running and rank 0 has logged a step."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self.steps().get("train", {}).get("status") == "running"
                    and "step 1/" in self.output()):
                return
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.tail()}"
            time.sleep(0.2)
        raise TimeoutError(f"no training step after {timeout_s} s:\n{self.tail()}")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def wait(self, timeout_s: float = 300) -> int:
        return self.proc.wait(timeout=timeout_s)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def left_running(processes: list[psutil.Process], grace_s: float = 10) -> list[str]:
    """Those of ``processes`` still alive after ``grace_s``."""
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    return [f"{p.pid} {p.name()}" for p in alive if p.is_running()]


def interrupt_in_training(config: Path, tmp_path: Path, signum: int, group: bool) -> Driver:
    driver = Driver(config, tmp_path / "runs")
    try:
        driver.wait_for_training()
        processes = driver.descendants()
        assert any("raylet" in p.name() for p in processes), "the driver started no Ray?"
        if group:  # Ctrl-C in a terminal signals the whole foreground process group
            os.killpg(driver.proc.pid, signum)
        else:  # a scheduler or `kill` signals the driver
            driver.proc.send_signal(signum)
        code = driver.wait(timeout_s=120)
        assert code == 128 + signum, driver.tail()
        assert left_running(processes) == []
    finally:
        driver.kill()
    train = driver.steps()["train"]
    assert train["status"] == "interrupted", train
    assert train["signal"] == signal.Signals(signum).name
    assert HINT in " ".join(driver.output().split())
    assert "Traceback" not in driver.output()
    return driver


def test_ctrl_c_in_training_is_an_interrupt_that_resume_continues(config, tmp_path):
    interrupted = interrupt_in_training(config, tmp_path, signal.SIGINT, group=True)
    resumed = Driver(config, tmp_path / "runs", "--resume", name="resumed")
    try:
        assert resumed.wait(timeout_s=600) == 0, resumed.tail()
    finally:
        resumed.kill()
    steps = resumed.steps()
    assert steps["train"]["status"] == "done"
    assert "reused" in steps["prepare"], "the finished prepare step is kept"
    assert steps["train"]["outputs"]["steps"] == MAX_STEPS
    assert (interrupted.run_dir / "models" / "ft").is_dir()


@pytest.mark.heavy  # Ctrl-C's twin; the handler is shared
def test_sigterm_in_training_exits_143_and_marks_the_step_interrupted(config, tmp_path):
    interrupt_in_training(config, tmp_path, signal.SIGTERM, group=False)


def test_a_second_driver_is_refused_while_the_first_trains_unharmed(config, tmp_path):
    first = Driver(config, tmp_path / "runs", "--set", f"training.max_steps={GUARDED_STEPS}",
                   "--set", "training.checkpoint_every_steps=1000", name="first")
    try:
        first.wait_for_training()
        second = subprocess.run(
            [sys.executable, "-m", "tunearena.launch.cli", "run", str(config), "--resume",
             "--set", f"runs_dir={tmp_path / 'runs'}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
        said = " ".join((second.stdout + second.stderr).split())
        assert second.returncode == 2, said
        assert f"is in use by pid {first.proc.pid}" in said
        assert "one driver per run directory" in said and "Traceback" not in said
        assert first.steps()["train"]["status"] == "running", "the second driver wrote nothing"
        assert first.wait(timeout_s=600) == 0, first.tail()
    finally:
        first.kill()
    train = first.steps()["train"]
    assert train["status"] == "done" and train["outputs"]["steps"] == GUARDED_STEPS
    assert (first.run_dir / "models" / "ft" / "model.safetensors").is_file()
