"""``tunearena submit``, ``status``, ``logs`` and ``stop`` against a real Ray head.

The test starts the head the way a site does (``ray start --head``, with its dashboard and
token authentication), submits the shrunk demo as a Ray job, stops it once its first stage is
trained, and submits it again with ``--resume``: the job finishes to a report, and the
manifest shows which steps were reused rather than redone. Every command runs as the user
runs it, in a subprocess; the head and everything under it are killed by pid afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tunearena.launch.cli import DEMO_CONFIG

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHRINK = ["training.max_steps=4", "training.checkpoint_every_steps=2", "evaluation.limit=10",
          "evaluation.latency_questions=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(root: psutil.Process, also: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL, ``root``, every process under it and ``also``."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    procs += also
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def head():
    """A Ray head started by ``ray start --head``: (dashboard URL, environment for commands)."""
    # A short temp dir: Ray's unix socket paths must stay under 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="tajob"))
    dashboard_port = free_port()
    env = os.environ | {
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    log = temp_dir / "ray-start.log"
    cmd = [shutil.which("ray") or "ray", "start", "--head", "--block", "--num-cpus=4",
           f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
           f"--port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
           f"--dashboard-agent-listen-port={free_port()}"]
    with log.open("w") as out:
        ray_start = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
    root = psutil.Process(ray_start.pid)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            probe = tunearena(env, "status", "--address", address)
            if probe.returncode == 0:
                break
            if ray_start.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not come up:\n{log.read_text()[-3000:]}\n"
                            f"{probe.stderr}")
            time.sleep(2)
        yield address, env
    finally:
        # Everything the head started (raylet, workers, the job's driver) hangs under it;
        # anything that got re-parented still names the temp dir on its command line.
        strays = [p for p in psutil.process_iter(["cmdline"])
                  if p.pid != os.getpid() and str(temp_dir) in " ".join(p.info["cmdline"] or [])]
        kill_tree(root, strays)
        shutil.rmtree(temp_dir, ignore_errors=True)


def tunearena(env: dict, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunearena.launch.cli", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def submit(env: dict, address: str, runs_dir: Path, *extra: str) -> str:
    sets = [arg for s in SHRINK for arg in ("--set", s)]
    done = tunearena(env, "submit", str(DEMO_CONFIG.relative_to(REPO)), "--address", address,
                     "--set", f"runs_dir={runs_dir}", *sets, *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"submitted job (\S+)", done.stdout)
    assert match, done.stdout
    return match.group(1)


def wait_for(predicate, what: str, timeout_s: float = 300, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)
    return value


def manifest_steps(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "manifest.json").read_text())["steps"]
    except (OSError, ValueError, KeyError):
        return {}


@pytest.mark.heavy
def test_a_stopped_job_is_resubmitted_and_finishes_reusing_its_steps(head, tmp_path):
    address, env = head
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / "demo"
    first = submit(env, address, runs_dir)

    # status shows the running job with its latest output.
    wait_for(lambda: "RUNNING" in tunearena(env, "status", first, "--address", address).stdout,
             "the job to run", timeout_s=60)
    # Stop it once its first stage is trained and exported, like a user who needs the GPUs back.
    wait_for(lambda: manifest_steps(run_dir).get("train:docs", {}).get("status") == "done",
             "the first stage to finish")
    stopped = tunearena(env, "stop", first, "--address", address)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "STOPPED" in stopped.stdout and "--resume" in stopped.stdout
    status = tunearena(env, "status", first, "--address", address)
    assert "STOPPED" in status.stdout and str(run_dir) in status.stdout
    steps = manifest_steps(run_dir)
    assert steps["train:docs"]["status"] == "done"
    # The step that was running when the job stopped is on record as interrupted by the
    # SIGTERM that `ray job stop` sends (within the 3 s it waits before SIGKILL).
    assert "report" not in steps and not (run_dir / "report.html").exists()
    unfinished = [name for name, step in steps.items() if step["status"] != "done"]
    assert unfinished and all(steps[n]["status"] == "interrupted"
                              and steps[n]["signal"] == "SIGTERM" for n in unfinished), steps

    # Submitted again with --resume: it finishes, reusing what the first job finished.
    second = submit(env, address, runs_dir, "--resume")
    followed = tunearena(env, "logs", second, "--address", address, "--follow", timeout_s=600)
    assert followed.returncode == 0, followed.stdout[-3000:] + followed.stderr
    assert "train:docs: reused from the previous attempt" in followed.stdout, followed.stdout
    assert f"report: {run_dir / 'report.html'}" in followed.stdout
    assert followed.stdout.rstrip().endswith(f"job {second}: SUCCEEDED")
    steps = manifest_steps(run_dir)
    assert all(step["status"] == "done" for step in steps.values()), steps
    reused = {name for name, step in steps.items() if "reused" in step}
    assert {"prepare:docs", "prepare:qa", "prepare:qa_replay", "train:docs"} <= reused
    assert "report" not in reused and (run_dir / "report.html").is_file()

    # logs (without --follow) and status tell the same story afterwards.
    logs = tunearena(env, "logs", second, "--address", address)
    assert "reused from the previous attempt" in logs.stdout
    status = tunearena(env, "status", second, "--address", address)
    assert "SUCCEEDED" in status.stdout and f"report: {run_dir}/report.html" in status.stdout
    listing = tunearena(env, "status", "--address", address).stdout
    assert re.search(rf"{first}\s+STOPPED", listing) and re.search(rf"{second}\s+SUCCEEDED",
                                                                   listing)


def test_a_cluster_without_the_requested_gpus_is_refused_before_submitting(head, tmp_path):
    address, env = head
    done = tunearena(env, "submit", str(DEMO_CONFIG.relative_to(REPO)), "--address", address,
                     "--set", f"runs_dir={tmp_path}", "--set", "cluster.use_gpu=true",
                     timeout_s=60)
    assert done.returncode == 2
    assert "cannot hold the training workers" in done.stderr
    assert "has GPU" in done.stderr and "set cluster.use_gpu false" in done.stderr
    assert "submitted" not in done.stdout


def test_an_unknown_job_is_named(head):
    address, env = head
    done = tunearena(env, "logs", "tunearena-nope", "--address", address, timeout_s=60)
    assert done.returncode == 2 and "the cluster has no job 'tunearena-nope'" in done.stderr


def test_an_address_nobody_answers_at_fails_in_seconds_not_a_hang():
    # Nothing listens on a port just freed; the subprocess's timeout is the "not a hang".
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    port = free_port()
    for args in (["status", "--address", f"127.0.0.1:{port}"],
                 ["submit", str(DEMO_CONFIG.relative_to(REPO)), "--address",
                  f"http://127.0.0.1:{port}", "--set", "runs_dir=/tmp/tunearena-never"]):
        done = tunearena(env, *args, timeout_s=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"cannot reach the Ray dashboard at 127.0.0.1:{port}" in done.stderr
    assert not Path("/tmp/tunearena-never").exists()
