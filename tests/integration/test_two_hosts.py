"""``tunearena run`` on a Ray cluster of two hosts joined over a real network.

Each host is a Linux network namespace with an address of its own (``tests/netns_hosts.py``):
a head started with ``ray start --head`` in one and a worker node started with ``ray start
--address`` in the other, exactly as on two machines, except that they share one filesystem
(which stands in for the shared storage a real cluster needs). The driver runs the CLI on the
head's host; a ZeRO-3 job with ``STRICT_SPREAD`` must put one rank on each host, all-gather
its parameters across the veth pair, and export a whole model. Unlike
``ray.cluster_utils.Cluster``, every node here has its own IP and sees the other only over
the network, so the test proves that joining a cluster by address works, that the
placement record names the two hosts, and that the storage and collective preflight checks
and DeepSpeed's collectives cross hosts.

Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from netns_hosts import Host, TwoHosts, netns_unavailable

pytestmark = pytest.mark.slow

GCS_PORT = 6379
CPUS_PER_HOST = 2
OBJECT_STORE_BYTES = 100 * 1024**2  # the job moves a few MB; Ray's default is 30% of RAM a node
CLUSTER_READY_TIMEOUT_S = 60.0
DRIVER_TIMEOUT_S = 300.0
MAX_STEPS = 3
NAME = "two-hosts"


@dataclass
class RayOnTwoHosts:
    hosts: TwoHosts
    work: Path  # short, under /tmp: Ray's unix socket paths must stay under 107 characters
    address: str  # the head's GCS
    env: dict[str, str]


def tail(path: Path, n: int = 40) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return f"--- {path} (last {n} lines)\n" + "\n".join(lines[-n:])


def ray_logs(work: Path) -> str:
    """The ``ray start`` outputs and each node's GCS and raylet logs, for a failure message."""
    paths = []
    for node in ("head", "worker"):
        logs = work / node / "session_latest" / "logs"
        paths += [work / f"{node}.log", logs / "gcs_server.out", logs / "raylet.out"]
    return "\n".join(tail(p, 20) for p in paths if p.is_file())


def ray_start(cluster: RayOnTwoHosts, host: Host, node: str, *args: str,
              hide: Path | None = None) -> subprocess.Popen:
    """``ray start --block`` on ``host``: the process lives as long as the node.

    ``node`` names its temp dir and its output file in the work dir. ``hide``: a directory
    this host sees as an empty one of its own (a private tmpfs mounted over it), as a node
    sees a path that is not on the storage the others share.
    """
    ray = Path(sys.executable).with_name("ray")  # the ray of this interpreter, not PATH's
    private = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide)] if hide else []
    return cluster.hosts.start(host, [
        *private, str(ray), "start", *args, f"--node-ip-address={host.ip}",
        f"--num-cpus={CPUS_PER_HOST}", "--num-gpus=0",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        # Both hosts share /tmp: a temp dir each keeps their unix sockets (raylet, plasma
        # store) and logs apart, and away from any other Ray on this machine.
        f"--temp-dir={cluster.work / node}",
        "--disable-usage-stats", "--block",
    ], cluster.work / f"{node}.log",
        # Both hosts' hostname resolves to 127.0.0.1, so gloo would offer its peer a loopback
        # address; any cluster whose hostnames do not resolve to the network the nodes share
        # needs this (tunearena's preflight says so). Workers inherit the raylet's env.
        cluster.env | {"GLOO_SOCKET_IFNAME": host.iface})


ALIVE_PROBE = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[2])
while True:
    alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    if len(alive) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print("alive:", *alive)
"""


def wait_for_two_nodes(cluster: RayOnTwoHosts, nodes: list[subprocess.Popen]) -> list[str]:
    """The alive nodes' IPs once both have joined, seen by a driver on the head's host."""
    deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
    alive: list[str] = []
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in nodes):
            pytest.fail(f"a `ray start` exited early:\n{ray_logs(cluster.work)}")
        left_s = deadline - time.monotonic()
        try:
            # ray.init fails until the head's GCS and raylet are up: then try again.
            probe = subprocess.run(
                cluster.hosts.h1.argv(sys.executable, "-c", ALIVE_PROBE, cluster.address,
                                      str(left_s)),
                capture_output=True, text=True, env=cluster.env, timeout=left_s + 30)
        except subprocess.TimeoutExpired:
            break
        lines = [ln for ln in probe.stdout.splitlines() if ln.startswith("alive:")]
        alive = lines[-1].split()[1:] if lines else []
        if len(alive) == 2:
            return alive
        time.sleep(1)
    pytest.fail(f"the cluster did not have two nodes within {CLUSTER_READY_TIMEOUT_S:.0f} s "
                f"(alive: {alive}):\n{ray_logs(cluster.work)}")


def subprocess_env(address: str) -> dict[str, str]:
    """This interpreter's environment (PATH, venv) with offline and quiet switches, for a
    cluster at ``address``."""
    return os.environ | {
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
        # Ray 2.60's `ray start --head` turns token auth on when ~/.ray/auth_token exists,
        # while `ray start --address` and ray.init(address=...) do not: a token of the
        # test's own, given to every process, makes both sides agree whatever the home holds.
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
        # Ray finds "its" cluster by scanning the machine's processes for a GCS, and so sees
        # every other Ray here (Ray Train's placement-group cleaner then dies with "Found
        # multiple active Ray instances"): name ours.
        "RAY_ADDRESS": address,
    }


@pytest.fixture(scope="module")
def ray_on_two_hosts():
    """A head on host 1 and a worker node on host 2, both up; everything gone afterwards."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="ta", dir="/tmp"))
    hosts = None
    try:
        hosts = TwoHosts.create()
        address = f"{hosts.h1.ip}:{GCS_PORT}"
        cluster = RayOnTwoHosts(hosts, work, address, subprocess_env(address))
        t0 = time.monotonic()
        nodes = [ray_start(cluster, hosts.h1, "head", "--head", f"--port={GCS_PORT}",
                           "--include-dashboard=false"),
                 ray_start(cluster, hosts.h2, "worker", f"--address={address}",
                           hide=hidden_dir(work))]
        alive = wait_for_two_nodes(cluster, nodes)
        assert sorted(alive) == sorted([hosts.h1.ip, hosts.h2.ip])
        print(f"\ncluster up in {time.monotonic() - t0:.1f} s: head {hosts.h1.ip} "
              f"({hosts.h1.netns}), worker node {hosts.h2.ip} ({hosts.h2.netns})")
        yield cluster
    finally:
        # Every process by pid (never `ray stop`, which would end other Rays here too).
        left = hosts.close() if hosts is not None else []
        shutil.rmtree(work, ignore_errors=True)
        assert not left, f"teardown left behind: {left}"
        if hosts is not None:
            namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                        text=True).stdout.split()
            assert hosts.h1.netns not in namespaces and hosts.h2.netns not in namespaces


def hidden_dir(work: Path) -> Path:
    """A directory host 1 sees as it is and host 2 sees as an empty tmpfs of its own."""
    path = work / "hidden"
    path.mkdir(exist_ok=True)
    return path


def run_driver(cluster: RayOnTwoHosts, config: Path, log: Path, *args: str) -> int:
    """``tunearena run CONFIG`` on host 1, as a user on the head node runs it."""
    driver = cluster.hosts.start(cluster.hosts.h1, [sys.executable, "-m", "tunearena.launch.cli",
                                                    "run", str(config), *args], log, cluster.env)
    try:
        return driver.wait(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the driver ran past {DRIVER_TIMEOUT_S:.0f} s:\n{tail(log, 80)}\n"
                    f"{ray_logs(cluster.work)}")


def write_experiment(work: Path, model_dir: Path, cluster_address: str) -> Path:
    """A training-only experiment: ZeRO-3, one worker on each host, no RAG, no evaluation."""
    rng = random.Random(0)

    def word() -> str:
        return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))

    # Distinct records, so data cleaning keeps them all.
    data = work / "train.jsonl"
    data.write_text("".join(
        json.dumps({"text": f"The {word()} bridge of {word().title()} spans {20 + i} meters "
                            f"and opened in {1850 + 7 * i}."}) + "\n" for i in range(48)))
    cfg = {
        "name": NAME,
        "runs_dir": str(work / "runs"),
        "model": {"base": str(model_dir)},
        "cluster": {"address": cluster_address, "num_workers": 2, "placement": "STRICT_SPREAD",
                    "cpus_per_worker": 1, "use_gpu": False,
                    # Ray Train's checkpoints: on a directory both hosts see.
                    "storage_path": str(work / "storage")},
        "training": {"datasets": [{"path": str(data)}], "validation_fraction": 0.1,
                     "seq_len": 32, "micro_batch_size": 2, "max_steps": MAX_STEPS, "lr": 1e-3,
                     "zero_stage": 3, "precision": "fp32", "log_every_steps": 1,
                     "eval_every_steps": 1000},
        "rag": {"enabled": False},
        "evaluation": {"enabled": False, "arms": ["base"]},
    }
    path = work / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_zero3_trains_with_one_rank_on_each_host(ray_on_two_hosts, tiny_model_dir, capsys):
    cluster = ray_on_two_hosts
    h1, h2 = cluster.hosts.h1, cluster.hosts.h2
    config = write_experiment(cluster.work, tiny_model_dir, cluster.address)
    log = cluster.work / "driver.log"
    t0 = time.monotonic()
    code = run_driver(cluster, config, log)
    print(f"driver exited with {code} after {time.monotonic() - t0:.1f} s")
    assert code == 0, tail(log, 80)

    run_dir = cluster.work / "runs" / NAME
    train = json.loads((run_dir / "manifest.json").read_text())["steps"]["train"]
    assert train["status"] == "done"
    model_dir = run_dir / train["artifacts"]["model"]
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    summary = train["outputs"]
    assert summary["steps"] == MAX_STEPS and summary["world_size"] == 2

    placement = summary["placement"]
    netns = {h1.ip: h1.netns, h2.ip: h2.netns}
    # Shown in the test log even under -q: which host each rank ran on.
    with capsys.disabled():
        for w in placement:
            print(f"\ntwo hosts: rank {w['rank']} on {w['node_ip']} "
                  f"({netns.get(w['node_ip'], '?')}, Ray node {w['node_id'][:8]}) "
                  f"pid {w['pid']} {w['device']}", end="")
        print()
    assert [w["rank"] for w in placement] == [0, 1]
    # STRICT_SPREAD over two hosts: one rank on each, by address and by Ray node.
    assert sorted(w["node_ip"] for w in placement) == sorted([h1.ip, h2.ip])
    assert len({w["node_id"] for w in placement}) == 2
    results = json.loads((run_dir / "results.json").read_text())
    assert results["training"]["placement"] == placement
    # The driver printed the placement too: both hosts' addresses are in its output.
    out = log.read_text(errors="replace")
    assert h1.ip in out and h2.ip in out, tail(log, 80)


def test_storage_one_host_cannot_see_is_refused_before_training(ray_on_two_hosts,
                                                                tiny_model_dir):
    cluster = ray_on_two_hosts
    h2 = cluster.hosts.h2
    config = write_experiment(cluster.work, tiny_model_dir, cluster.address)
    log = cluster.work / "driver-hidden.log"
    code = run_driver(cluster, config, log, "--set", f"name={NAME}-hidden",
                      "--set", f"cluster.storage_path={hidden_dir(cluster.work)}")
    out = log.read_text(errors="replace")
    assert code == 2, tail(log, 80)
    # Preflight names the host that cannot see the driver's marker, and the fix.
    line = next((ln for ln in out.splitlines() if "do not share" in ln), "")
    assert "1 of 2 nodes do not share" in line and h2.ip in line, tail(log, 80)
    assert "shared filesystem that every node mounts" in out
    train = json.loads((cluster.work / "runs" / f"{NAME}-hidden" / "manifest.json").read_text()
                       )["steps"]["train"]
    assert train["status"] == "failed" and "PreflightError" in train["error"]
