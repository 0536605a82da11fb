"""BatchPlan: the batch arithmetic of a stage, checked with integers only."""

from __future__ import annotations

import pytest

from tunearena.training.batch import BatchPlan


@pytest.mark.parametrize(
    ("micro", "accum", "world", "expected"),
    [(1, 1, 1, 1), (8, 1, 2, 16), (4, 3, 2, 24), (2, 4, 8, 64)],
)
def test_global_batch_is_micro_times_accum_times_world(micro, accum, world, expected):
    assert BatchPlan(micro, accum, world).global_batch_size == expected


@pytest.mark.parametrize(
    ("n_sequences", "expected"),
    [(24, 1), (47, 1), (48, 2), (100, 4)],  # global batch 24; the ragged tail is dropped
)
def test_steps_per_epoch_drops_the_ragged_tail(n_sequences, expected):
    assert BatchPlan(4, 3, 2).steps_per_epoch(n_sequences) == expected


def test_too_small_dataset_names_every_factor():
    with pytest.raises(ValueError) as exc:
        BatchPlan(4, 3, 2).steps_per_epoch(23)
    msg = str(exc.value)
    assert "23 training sequences" in msg
    assert "global batch of 24" in msg
    assert "micro_batch_size 4" in msg
    assert "grad_accum_steps 3" in msg
    assert "workers 2" in msg


@pytest.mark.parametrize(
    ("n_sequences", "epochs", "max_steps", "expected"),
    [
        (100, 1.0, None, 4),  # 4 full steps per epoch
        (100, 2.0, None, 8),
        (100, 0.5, None, 2),
        (100, 0.3, None, 2),  # ceil(1.2): a partial step rounds up
        (100, 0.01, None, 1),  # never zero steps
        (100, 1.0, 7, 7),  # max_steps overrides epochs, also beyond one epoch
        (100, 5.0, 3, 3),
    ],
)
def test_total_steps(n_sequences, epochs, max_steps, expected):
    assert BatchPlan(4, 3, 2).total_steps(n_sequences, epochs, max_steps) == expected


def test_total_steps_from_epochs_still_rejects_a_too_small_dataset():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BatchPlan(4, 3, 2).total_steps(10, 1.0, None)


@pytest.mark.parametrize(("micro", "accum", "world"), [(1, 1, 1), (3, 1, 2), (2, 3, 4), (5, 2, 3)])
def test_rank_slices_cover_an_epoch_exactly_once(micro, accum, world):
    plan = BatchPlan(micro, accum, world)
    steps = 3
    n_sequences = steps * plan.global_batch_size + plan.global_batch_size - 1  # plus a ragged tail
    assert plan.steps_per_epoch(n_sequences) == steps
    seen: list[int] = []
    for step in range(steps):
        step_positions: list[int] = []
        for micro_step in range(accum):
            for rank in range(world):
                s = plan.rank_slice(step, micro_step, rank)
                positions = list(range(n_sequences))[s]
                assert len(positions) == micro  # every micro-batch is full
                step_positions += positions
        # One optimizer step consumes exactly its own contiguous block of the epoch's order.
        assert sorted(step_positions) == list(
            range(step * plan.global_batch_size, (step + 1) * plan.global_batch_size)
        )
        seen += step_positions
    assert sorted(seen) == list(range(steps * plan.global_batch_size))  # no overlap, no gap
