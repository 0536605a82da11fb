"""``cluster.address: auto`` with a cluster started on purpose: a real ``ray start --head`` in a
Ray temp dir and a home of this test's own (``RAY_TMPDIR``, ``HOME``: its token), so other Ray
instances on this machine are neither seen nor touched; the run joins it and names it, and a
driver without the cluster's token is told how to give it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def head(monkeypatch):
    """A one-CPU Ray head started with ``ray start``, with token authentication (Ray's default
    where a token exists); yields (its address, the file it recorded it in, its token file)."""
    # Short: Ray's socket paths under it must stay within the OS's 107 characters.
    tmp = Path(tempfile.mkdtemp(prefix="ta", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    token = tmp / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text(secrets.token_hex(32))
    env = os.environ | {"HOME": str(tmp), "RAY_AUTH_MODE": "token"}
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--port=0", "--num-cpus=1", "--num-gpus=0",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    recorded = tmp / "ray" / "ray_current_cluster"
    try:
        deadline = time.monotonic() + 120
        while not (recorded.is_file() and recorded.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "ray start failed"
            time.sleep(0.2)
        yield recorded.read_text().strip(), recorded, token
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        # What `ray start` spawned runs with our temp dir on its command line: end those
        # processes by id (never `ray stop`, which ends every Ray on the machine).
        ours = [p for p in psutil.process_iter(["pid", "cmdline"])
                if any(str(tmp) in arg for arg in p.info["cmdline"] or [])]
        for p in ours:
            p.kill()
        psutil.wait_procs(ours, timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


JOIN = """
from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.ray_cluster import ray_session
import ray
with ray_session(ClusterConfig(address="auto"), say=lambda line: print("SAID", line)):
    print("CPUS", ray.cluster_resources()["CPU"])
"""


def join(**env: str) -> subprocess.CompletedProcess:
    """Run a driver with ``address: auto`` in a process of its own: Ray reads its
    authentication settings from the environment once per process."""
    return subprocess.run([sys.executable, "-c", JOIN], env=os.environ | env,
                          capture_output=True, text=True, timeout=180)


def test_auto_joins_the_cluster_ray_start_recorded_and_names_it(head):
    address, recorded, token = head
    done = join(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    assert done.returncode == 0, done.stderr[-3000:]
    said = [ln.removeprefix("SAID ") for ln in done.stdout.splitlines() if ln.startswith("SAID")]
    assert said == [f"joined the Ray cluster at {address} (recorded by `ray start` in "
                    f"{recorded}): 1 node, 1 CPU, 0 GPUs"]
    assert "CPUS 1.0" in done.stdout


def test_a_driver_without_the_clusters_token_is_told_how_to_give_it(head):
    address, _, _ = head
    done = join(RAY_AUTH_MODE="disabled")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tunearena.cluster.ray_cluster.ClusterConnectionError: the cluster "
                           f"at {address} refused this driver: it was started with token "
                           "authentication"), done.stderr[-3000:]
    assert "RAY_AUTH_MODE=token" in last
