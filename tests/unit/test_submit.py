"""What ``tunearena submit`` refuses before it ships anything, and the cluster address rules."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from rich.console import Console

from tunearena.cluster.jobs import JobError, dashboard_address
from tunearena.cluster.ray_cluster import ClusterConnectionError, probe_cluster
from tunearena.configbase import ConfigError
from tunearena.launch.cli import DEMO_CONFIG, main
from tunearena.launch.config import load_config
from tunearena.launch.submit import check_submission, submit

REPO = DEMO_CONFIG.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("given", "expected"), [
    ("head", "http://head:8265"),
    ("10.0.0.5:9000", "http://10.0.0.5:9000"),
    ("https://ray.example.org/", "https://ray.example.org:8265"),
    ("http://head:8265/", "http://head:8265"),
])
def test_dashboard_address_is_normalised(given, expected, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert dashboard_address(given) == expected


def test_dashboard_address_comes_from_the_environment_or_is_asked_for(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(JobError, match="pass --address http://HEAD:8265"):
        dashboard_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address: not the dashboard
    with pytest.raises(JobError, match="no cluster address"):
        dashboard_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    assert dashboard_address(None) == "http://from-env:8265"
    assert dashboard_address("explicit") == "http://explicit:8265"  # the flag wins
    with pytest.raises(JobError, match="expected the dashboard's URL"):
        dashboard_address("ray://head:10001")


def test_a_relative_runs_dir_is_refused_because_the_job_would_lose_it():
    cfg = load_config(DEMO_CONFIG)
    with pytest.raises(ConfigError, match="runs_dir 'runs' is relative.*--set runs_dir="):
        check_submission(cfg, REPO)


def test_inputs_outside_the_working_dir_are_named_as_read_on_the_cluster(tmp_path):
    cfg = load_config(DEMO_CONFIG, [f"runs_dir={tmp_path}"])
    assert check_submission(cfg, REPO) == []  # the demo's data is all inside the checkout
    outside = check_submission(cfg, REPO / "configs")
    assert REPO / "examples" / "demo_world" / "base_model" in outside
    assert REPO / "examples" / "demo_world" / "domain" / "documents.jsonl" in outside


def test_a_config_outside_the_working_dir_is_refused_before_connecting(tmp_path):
    with pytest.raises(ConfigError, match="outside the working dir"):
        submit(DEMO_CONFIG, [f"runs_dir={tmp_path}"], "http://127.0.0.1:1", tmp_path,
               resume=False, console=Console())


def test_an_unreachable_cluster_address_fails_in_seconds(tmp_path, capsys):
    port = free_port()  # nothing listens on it now
    with pytest.raises(ClusterConnectionError, match=f"the Ray head \\(GCS\\) at 127.0.0.1:{port}"):
        probe_cluster(f"127.0.0.1:{port}")
    with pytest.raises(ClusterConnectionError, match="the Ray client server"):
        probe_cluster(f"ray://127.0.0.1:{port}")
    probe_cluster("auto")  # found by Ray itself, not probed

    code = main(["run", str(DEMO_CONFIG), "--set", f"runs_dir={tmp_path}",
                 "--set", f"cluster.address=127.0.0.1:{port}"])
    assert code == 2
    assert f"cannot reach the Ray head (GCS) at 127.0.0.1:{port}" in capsys.readouterr().err
    # The manifest says which step needed the cluster (the index, the first), for --resume.
    steps = json.loads(Path(tmp_path / "demo" / "manifest.json").read_text())["steps"]
    assert steps["index"]["status"] == "failed"
    assert "cannot reach the Ray head" in steps["index"]["error"]


def test_job_commands_name_a_missing_address(monkeypatch, capsys):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["status"]) == 2
    assert "no cluster address" in capsys.readouterr().err
