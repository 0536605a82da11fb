"""``cluster.address: auto`` joins only a cluster someone started: RAY_ADDRESS, or what the last
``ray start`` recorded in Ray's temp dir. Ray's temp dir is a fresh one per test
(``RAY_TMPDIR``), so clusters other programs run on this machine are not seen, and none of
these tests starts Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import ray

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.ray_cluster import ClusterConnectionError, ray_session, resolve_auto

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@pytest.fixture
def ray_tmpdir(tmp_path, monkeypatch):
    """An empty Ray temp dir of this test's own, and no RAY_ADDRESS."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path / "ray"


def _session(address: str) -> None:
    with ray_session(ClusterConfig(address=address)):
        pytest.fail("joined a cluster")


def test_auto_with_no_cluster_says_how_to_start_one(ray_tmpdir):
    with pytest.raises(ClusterConnectionError) as e:
        _session("auto")
    message = str(e.value)
    assert "no Ray cluster is running here" in message
    assert str(ray_tmpdir / "ray_current_cluster") in message
    assert "`ray start --head`" in message and "cluster.address: local" in message
    assert not ray.is_initialized()


def test_auto_with_a_stopped_cluster_names_what_ray_start_recorded(ray_tmpdir):
    ray_tmpdir.mkdir()
    (ray_tmpdir / "ray_current_cluster").write_text("127.0.0.1:9")
    assert resolve_auto()[0] == "127.0.0.1:9"
    with pytest.raises(ClusterConnectionError,
                       match=r"recorded by `ray start` in .*ray_current_cluster \(127\.0\.0\.1:9\) "
                             r"does not answer \(Connection refused\)"):
        _session("auto")
    assert not ray.is_initialized()


def test_ray_address_comes_before_what_ray_start_recorded(ray_tmpdir, monkeypatch):
    ray_tmpdir.mkdir()
    (ray_tmpdir / "ray_current_cluster").write_text("127.0.0.1:9")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_auto() == ("10.0.0.5:6379", "from RAY_ADDRESS")


@pytest.mark.parametrize(("address", "what"), [("127.0.0.1:1", "the Ray head (GCS)"),
                                               ("ray://127.0.0.1:1", "the Ray client server")])
def test_an_explicit_address_nobody_answers_at_fails_fast(ray_tmpdir, address, what):
    with pytest.raises(ClusterConnectionError,
                       match=re.escape(f"cannot reach {what} at 127.0.0.1:1: Connection refused")):
        _session(address)
