"""Training across three simulated nodes (``ray.cluster_utils.Cluster``, one CPU each).

The nodes share this machine, but each is its own raylet with its own resources, so
STRICT_SPREAD must put one worker on each, and ZeRO-3 partitions and gathers across them.
"""

from __future__ import annotations

import pytest
import torch

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.preflight import check_resources
from tunearena.training.config import TrainingConfig
from tunearena.training.trainer import run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_nodes():
    """The alive nodes' ids of a three-node cluster the driver is connected to."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=True)
        yield {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_strict_spread_puts_one_zero3_worker_on_each_node(three_nodes, tiny_model_dir,
                                                         tiny_text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = TrainingConfig(datasets=[{"path": tiny_text_file}], validation_fraction=0.1, seq_len=32,
                         micro_batch_size=1, max_steps=4, lr=1e-2, zero_stage=3,
                         precision="fp32", log_every_steps=1, seed=0,
                         # TINY_TEXT repeats each text four times on purpose: keep them.
                         data_prep={"deduplicate": False, "near_duplicate_threshold": None})
    cluster = ClusterConfig(num_workers=3, cpus_per_worker=1, use_gpu=False,
                            placement="STRICT_SPREAD")
    assert len(three_nodes) == 3
    assert check_resources(cluster, use_gpu=False).ok
    assert not check_resources(cluster.model_copy(update={"num_workers": 4}), False).ok

    summary = run_stage("spread", str(tiny_model_dir), cfg, cluster, tmp_path / "model",
                        tmp_path / "ray")

    placement = summary.placement
    assert [w.rank for w in placement] == [0, 1, 2]
    assert {w.node_id for w in placement} == three_nodes  # one worker on every node
    assert summary.world_size == 3 and summary.global_batch_size == 3
    # ZeRO-3 parameters were gathered from three nodes into a whole, working model.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in model.parameters())
    assert summary.export_check[0].abs_diff < 1e-3
