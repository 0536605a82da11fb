"""Mixture sampling: the shares each task gets, and the order an epoch visits."""

from __future__ import annotations

import numpy as np
import pytest

from tunearena.training.mixture import build_mixture, count_tasks, epoch_order


def rows_of(sizes: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, t, dtype=np.int16) for t, n in enumerate(sizes)])


def test_without_weights_an_epoch_is_a_plain_shuffle_of_every_row():
    mixture = build_mixture({"a": 30, "b": 10}, {"a": None, "b": None}, 1.0, {}, 0.0)
    assert not mixture.weighted and mixture.epoch_size == 40
    assert mixture.probabilities == pytest.approx((0.75, 0.25))
    order = epoch_order(rows_of([30, 10]), mixture, seed=3, epoch=2)
    assert np.array_equal(order, np.random.default_rng(5).permutation(40))


def test_weights_and_temperature_set_the_shares():
    weighted = build_mixture({"a": 100, "b": 100}, {"a": 3.0, "b": 1.0}, 1.0, {}, 0.0)
    assert weighted.probabilities == pytest.approx((0.75, 0.25))
    # T = 2 takes square roots: 3 ** 0.5 : 1.
    flat = build_mixture({"a": 100, "b": 100}, {"a": 3.0, "b": 1.0}, 2.0, {}, 0.0)
    assert flat.probabilities == pytest.approx((3**0.5 / (3**0.5 + 1), 1 / (3**0.5 + 1)))
    # Temperature alone flattens a mix by size.
    sized = build_mixture({"a": 900, "b": 100}, {"a": None, "b": None}, 2.0, {}, 0.0)
    assert sized.weighted and sized.probabilities == pytest.approx((0.75, 0.25))


def test_replay_takes_its_fraction_and_grows_the_epoch():
    mixture = build_mixture({"a": 60, "b": 20}, {"a": None, "b": None}, 1.0,
                            {"replay:x": 30, "replay:y": 10}, 0.2)
    assert mixture.names == ("a", "b", "replay:x", "replay:y")
    assert mixture.probabilities == pytest.approx((0.6, 0.2, 0.15, 0.05))
    assert mixture.epoch_size == 100  # 80 own sequences are 80% of the epoch


def test_realised_shares_match_the_weights_within_sampling_error():
    sizes = [500, 50, 200]
    mixture = build_mixture(dict(zip("abc", sizes, strict=True)), {"a": 1.0, "b": 2.0, "c": 1.0}, 1.0, {}, 0.0)
    task_of_row = rows_of(sizes)
    counts = sum(count_tasks(task_of_row, epoch_order(task_of_row, mixture, 0, e), 3)
                 for e in range(4))
    n = counts.sum()
    p = np.array(mixture.probabilities)
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) < 4 * sigma), (counts / n, p)
    # The small task is up-weighted well past its 50 / 750 share of the rows.
    assert counts[1] / n > 0.4


def test_a_task_repeats_only_after_every_row_of_it_is_used():
    mixture = build_mixture({"a": 10, "b": 10}, {"a": 9.0, "b": 1.0}, 1.0, {}, 0.0)
    task_of_row = rows_of([10, 10])
    order = epoch_order(task_of_row, mixture, seed=1, epoch=0)
    a_rows = [r for r in order if task_of_row[r] == 0]
    assert len(a_rows) > 10  # oversampled: it cycles
    assert sorted(a_rows[:10]) == list(range(10))  # the first cycle is a permutation


def test_the_order_depends_on_seed_and_epoch_only():
    mixture = build_mixture({"a": 40, "b": 40}, {"a": 1.0, "b": 1.0}, 1.0, {}, 0.0)
    task_of_row = rows_of([40, 40])
    first = epoch_order(task_of_row, mixture, 0, 1)
    assert np.array_equal(first, epoch_order(task_of_row, mixture, 0, 1))
    assert not np.array_equal(first, epoch_order(task_of_row, mixture, 0, 2))
    assert not np.array_equal(first, epoch_order(task_of_row, mixture, 1, 1))


def test_a_task_without_sequences_is_refused():
    with pytest.raises(ValueError, match="at least one sequence"):
        build_mixture({"a": 10, "b": 0}, {}, 1.0, {}, 0.0)
    with pytest.raises(ValueError, match="no data to replay"):
        build_mixture({"a": 10}, {}, 1.0, {}, 0.3)
