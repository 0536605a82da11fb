"""Warm workers: stages trained one after another in one Ray Train worker group.

Real local Ray, two Ray Train workers, real DeepSpeed ZeRO-2 on gloo (fp32). The group first
runs the preflight all-reduce, then two stages; the same processes do all three, a later
stage starts without starting workers, and its training matches the same stage in a group
of its own, to the last logged loss. The same workers then take tasks one at a time, as the
arms are scored after training.
"""

from __future__ import annotations

import sys

import pytest
import ray

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.preflight import check_collective
from tunearena.training import checkpoint as ckpt
from tunearena.training.config import TrainingConfig
from tunearena.training.pool import WorkerPool
from tunearena.training.trainer import run_stage

pytestmark = pytest.mark.slow

# The tasks and jobs below travel by value: Ray's workers cannot import a test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CLUSTER = ClusterConfig(num_workers=2, cpus_per_worker=1, use_gpu=False)


@pytest.fixture(scope="module")
def cfg(tiny_text_file) -> TrainingConfig:
    return TrainingConfig(
        datasets=[{"path": tiny_text_file, "format": "text"}], validation_fraction=0.1,
        seq_len=32, micro_batch_size=2, max_steps=6, lr=5e-3, zero_stage=2, precision="fp32",
        log_every_steps=1, eval_every_steps=1000, checkpoint_every_steps=3, seed=0,
        data_prep={"deduplicate": False, "near_duplicate_threshold": None},
    )


def _where(i: int, device: str) -> tuple:
    import os
    import time

    time.sleep(0.5)  # long enough for both ranks to take one
    return i, os.getpid(), os.environ.get("LOCAL_RANK"), device


def _fails(device: str) -> None:
    raise ValueError("no such arm")


def _rank(config: dict) -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


def take_tasks(pool: WorkerPool) -> dict:
    """Four tasks and a failing one on the pool's ranks: (ok, value) by task."""
    pool.start_tasks()
    names = {pool.post_task(_where, (i,)): i for i in range(4)}
    names[pool.post_task(_fails, ())] = "fails"
    scored: dict = {}
    while len(scored) < len(names):
        for task_id, ok, value in pool.finished_tasks():
            scored[names[task_id]] = (ok, value)
    pool.close_tasks()
    return scored


def losses(summary) -> list[float]:
    return [h["train_loss"] for h in summary.history if "train_loss" in h]


def test_stages_share_one_worker_group_and_train_as_in_their_own(ray_local, tiny_model_dir,
                                                                 cfg, tmp_path):
    storage = str(tmp_path / "ray")
    with WorkerPool(CLUSTER, storage, use_gpu=False) as pool:
        check = check_collective(CLUSTER, False, storage, pool=pool)
        assert check.ok and "all-reduce over 2 workers (gloo)" in check.detail, check
        first = run_stage("first", str(tiny_model_dir), cfg, CLUSTER, tmp_path / "m1", storage,
                          pool=pool)
        # The second stage starts from the first's export, in the same processes.
        second = run_stage("second", str(tmp_path / "m1"), cfg, CLUSTER, tmp_path / "m2",
                           storage, pool=pool)
        assert pool.alive
        scored = take_tasks(pool)
        assert pool.alive and pool.run(_rank, {}) == 0  # jobs again once the tasks are closed
    # The workers that trained took the tasks, both of them, each task as one process.
    done = {k: v for k, (ok, v) in scored.items() if ok}
    assert sorted(done) == [0, 1, 2, 3]
    assert {pid for _, pid, _, _ in done.values()} == {w.pid for w in second.placement}
    assert {(local_rank, device) for _, _, local_rank, device in done.values()} == {(None, "cpu")}
    ok, error = scored["fails"]
    assert not ok and isinstance(error, ValueError) and "no such arm" in str(error)
    assert not pool.alive
    assert {w.pid for w in first.placement} == {w.pid for w in second.placement}
    # No worker start between the stages: the first step comes within seconds of the launch.
    assert second.time_to_first_step_s < first.time_to_first_step_s
    assert second.time_to_first_step_s < 10
    # Ray Train's record of the group went with it; each stage's run is its own.
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["first", "second"]
    assert ckpt.latest(storage, "second")[1]["exported"]

    # The same second stage in a group of its own trains to the same losses.
    alone = run_stage("alone", str(tmp_path / "m1"), cfg, CLUSTER, tmp_path / "m3", storage)
    assert alone.placement[0].pid != second.placement[0].pid
    assert losses(alone) == pytest.approx(losses(second), abs=1e-6)
