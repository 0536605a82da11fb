"""Preflight against a real two-node Ray cluster (``ray.cluster_utils.Cluster``, 1 CPU each).

The nodes share this machine and its filesystem, so storage passes for a local path; they
are still separate raylets, so pinning tasks and spreading workers across them is real.
"""

from __future__ import annotations

import pytest

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.preflight import check_collective, check_resources, check_storage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    """The alive nodes' ids of a two-node cluster the driver is connected to."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=True)
        yield [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
        cluster.shutdown()


def cluster_cfg(num_workers: int, placement: str) -> ClusterConfig:
    return ClusterConfig(num_workers=num_workers, cpus_per_worker=1, use_gpu=False,
                         placement=placement)


def test_storage_seen_by_every_node(two_nodes, tmp_path):
    check = check_storage(str(tmp_path / "ray"))
    assert check.ok, check.detail
    assert check.detail.startswith(f"2 nodes read the driver's marker under {tmp_path / 'ray'}")
    for node_id in two_nodes:
        assert f"[{node_id[:8]}]" in check.detail
    assert list((tmp_path / "ray").iterdir()) == []  # the markers are cleaned up
    # A URI goes through the same pyarrow filesystem Ray Train uses.
    assert check_storage(f"file://{tmp_path / 'ray'}").ok


def test_storage_that_cannot_be_created_fails(two_nodes, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    check = check_storage(str(blocker / "ray"))
    assert not check.ok
    assert check.detail.startswith(f"the driver cannot write under {blocker / 'ray'}: ")
    assert "shared filesystem" in check.fix and "s3://" in check.fix


def test_strict_spread_fits_two_workers_not_three(two_nodes):
    assert check_resources(cluster_cfg(2, "STRICT_SPREAD"), use_gpu=False).ok
    check = check_resources(cluster_cfg(3, "STRICT_SPREAD"), use_gpu=False)
    assert not check.ok
    assert check.detail == "STRICT_SPREAD needs 3 nodes that each fit {CPU: 1}; 2 do"
    assert check.fix == "lower cluster.num_workers to 2, or add nodes"


def test_all_reduce_across_both_nodes(two_nodes, tmp_path):
    check = check_collective(cluster_cfg(2, "SPREAD"), use_gpu=False,
                             storage_path=str(tmp_path / "ray"))
    assert check.ok, check.detail
    assert check.detail.startswith("all-reduce over 2 workers (gloo) on ")
    # One CPU per node: the two ranks must land on different nodes.
    for node_id in two_nodes:
        assert f"[{node_id[:8]}]" in check.detail
    assert not any((tmp_path / "ray").glob("tunearena-preflight-*"))  # run dir removed
