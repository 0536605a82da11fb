"""Preflight's pure parts with integers: placement fit, batch arithmetic, reporting (the
memory estimate: test_memory_estimate.py)."""

from __future__ import annotations

import pytest

from tunearena.cluster.preflight import Check, PreflightError, format_checks, resources_fit
from tunearena.training.config import TrainingConfig
from tunearena.training.memory import check_batch

CPU1 = {"CPU": 1}
GPU_WORKER = {"CPU": 2, "GPU": 1}


def nodes(*cpus_gpus: tuple[float, float]) -> list[dict[str, float]]:
    """Ray-style node resources, with the extra keys real nodes carry."""
    return [{"CPU": c, "GPU": g, "memory": 1e10, "node:10.0.0.1": 1.0} for c, g in cpus_gpus]


# ---------------------------------------------------------------------------- resources


def test_two_workers_fit_three_nodes():
    check = resources_fit(nodes((1, 0), (1, 0), (1, 0)), CPU1, 2, "PACK")
    assert check.ok
    assert check.detail == "2 workers x {CPU: 1} (PACK) on 3 nodes: fits"


def test_strict_spread_with_too_few_nodes_names_how_many_fit():
    # Three nodes fit one worker each; a fourth has a GPU but too few CPUs.
    check = resources_fit(nodes((2, 1), (4, 2), (2, 1), (1, 1)), GPU_WORKER, 4, "STRICT_SPREAD")
    assert not check.ok
    assert check.detail == "STRICT_SPREAD needs 4 nodes that each fit {CPU: 2, GPU: 1}; 3 do"
    # The second node holds two workers, so SPREAD would place all four.
    assert check.fix == "lower cluster.num_workers to 3, or choose placement SPREAD"


def test_strict_spread_fits_one_worker_per_node():
    assert resources_fit(nodes((2, 1), (2, 1)), GPU_WORKER, 2, "STRICT_SPREAD").ok


def test_strict_pack_needs_one_node_for_all():
    two_small = nodes((2, 0), (2, 0))
    check = resources_fit(two_small, {"CPU": 1}, 3, "STRICT_PACK")
    assert not check.ok
    assert "STRICT_PACK needs one node that fits 3 x {CPU: 1}" in check.detail
    assert check.fix == "lower cluster.num_workers to 2, or choose placement PACK"
    assert resources_fit(nodes((4, 0)), {"CPU": 1}, 3, "STRICT_PACK").ok


@pytest.mark.parametrize("placement", ["PACK", "SPREAD"])
def test_pack_and_spread_need_the_total_in_whole_workers(placement):
    # 3 CPUs in total, but 1.5 per node holds one 1-CPU worker each: only 2 fit.
    check = resources_fit(nodes((1.5, 0), (1.5, 0)), CPU1, 3, placement)
    assert not check.ok
    assert "fit 2" in check.detail
    assert check.fix == "lower cluster.num_workers to 2, or add nodes"
    assert resources_fit(nodes((2, 0), (1, 0)), CPU1, 3, placement).ok


def test_fractional_gpus_share_a_gpu():
    assert resources_fit(nodes((4, 1)), {"CPU": 1, "GPU": 0.25}, 4, "STRICT_PACK").ok


def test_missing_custom_resource_is_named():
    check = resources_fit(nodes((8, 1), (8, 1)), {"CPU": 1, "A100": 1}, 2, "PACK")
    assert not check.ok
    assert check.detail == "no node of 2 nodes has A100 (a worker needs {CPU: 1, A100: 1})"
    assert "remove A100 from cluster.resources_per_worker" in check.fix


def test_worker_larger_than_any_node_names_the_field_to_lower():
    check = resources_fit(nodes((4, 0), (2, 0)), {"CPU": 8}, 1, "PACK")
    assert not check.ok
    assert "no node of 2 nodes fits one worker's {CPU: 8}" in check.detail
    assert check.fix == "lower cluster.cpus_per_worker to 4"


def test_no_gpu_on_the_cluster():
    check = resources_fit(nodes((8, 0)), GPU_WORKER, 1, "PACK")
    assert not check.ok and "has GPU" in check.detail
    assert "cluster.use_gpu false" in check.fix


# ---------------------------------------------------------------------------- batch


def training(**overrides) -> TrainingConfig:
    return TrainingConfig(enabled=False, **overrides)


def test_batch_states_the_arithmetic():
    check = check_batch(training(micro_batch_size=4, grad_accum_steps=3), 2, 100)
    assert check.ok
    assert "global batch 24 = micro_batch_size 4 x grad_accum_steps 3 x 2 workers" in check.detail
    assert "4 steps per epoch" in check.detail


def test_batch_fails_below_one_global_batch():
    check = check_batch(training(micro_batch_size=4, grad_accum_steps=3), 2, 23)
    assert not check.ok
    assert "global batch 24" in check.detail and "only 23 training sequences" in check.detail
    assert "training.micro_batch_size" in check.fix and "at most 23" in check.fix
    assert check_batch(training(micro_batch_size=4, grad_accum_steps=3), 2, 24).ok


# ---------------------------------------------------------------------------- reporting


CHECKS = [
    Check("resources", True, "2 workers x {CPU: 1} (PACK) on 3 nodes: fits"),
    Check("storage", False, "1 of 2 nodes do not share /data with the driver",
          "use a shared filesystem"),
    Check("batch", False, "global batch 64 ...", "lower training.micro_batch_size"),
]


def test_format_checks_aligns_and_shows_fixes_for_failures():
    lines = format_checks(CHECKS).splitlines()
    assert lines[0].split() == ["check", "result", "detail", "fix"]
    assert lines[1].startswith("resources  PASS    2 workers")
    assert "FAIL" in lines[2] and lines[2].endswith("use a shared filesystem")
    assert lines[3].startswith("batch      FAIL    global") and lines[3].endswith("lower training.micro_batch_size")
    # The detail column starts at the same place on every line.
    assert len({line.index(word) for line, word in zip(lines, ["detail", "2 workers", "1 of 2", "global"], strict=True)}) == 1


def test_preflight_error_lists_every_failed_check_with_its_fix():
    err = PreflightError(CHECKS)
    assert err.checks == CHECKS
    message = str(err)
    assert message.splitlines()[0] == "preflight: 2 of 3 checks failed"
    assert "storage: 1 of 2 nodes" in message and "fix: use a shared filesystem" in message
    assert "batch: global batch 64" in message and "resources" not in message
