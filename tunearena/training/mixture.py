"""Which training sequences each epoch visits, when a stage mixes tasks by weight.

A stage's tasks (its datasets, plus any replayed data) are packed separately, so every
sequence belongs to one task. Without weights, replay or a temperature, an epoch is a plain
shuffle of every sequence, and each task counts by its size. Otherwise each slot of the epoch
draws its task at random with the mixture's probabilities, and takes that task's next
sequence from a shuffled cycle of its own: a task smaller than its share repeats, a larger
one is sub-sampled, and no sequence repeats before its task is exhausted.

Everything is a pure function of the seed and the epoch, so every rank computes the same
order without talking to the others, and a resumed run sees the order it left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mixture:
    """The tasks of one stage and the share of sampled sequences each one gets."""

    names: tuple[str, ...]
    probabilities: tuple[float, ...]
    epoch_size: int
    """Sequences in one epoch: the stage's own sequences, grown so replay adds its share."""
    weighted: bool
    """False: a plain shuffle of every sequence (sizes are the weights)."""


def build_mixture(sizes: dict[str, int], weights: dict[str, float | None], temperature: float,
                  replay_sizes: dict[str, int], replay_fraction: float) -> Mixture:
    """The mixture of a stage's own tasks (``sizes``, in sequences) and replayed tasks.

    Own task i gets ``w_i ** (1 / temperature)`` normalised, ``w_i`` its weight, else its
    size; the whole is scaled to ``1 - replay_fraction``. The replayed tasks share
    ``replay_fraction`` in proportion to their sizes. One epoch is as many sequences as the
    own tasks hold, divided by ``1 - replay_fraction``.
    """
    if not sizes or any(n <= 0 for n in sizes.values()):
        raise ValueError(f"every task needs at least one sequence: {sizes}")
    if replay_fraction and not replay_sizes:
        raise ValueError("replay is asked for but there is no data to replay")
    own = np.array([weights.get(t) or n for t, n in sizes.items()], dtype=np.float64)
    own = own ** (1.0 / temperature)
    own = own / own.sum() * (1.0 - replay_fraction)
    replay = np.array(list(replay_sizes.values()), dtype=np.float64)
    replay = replay / replay.sum() * replay_fraction if replay_fraction else replay * 0
    weighted = (any(w is not None for w in weights.values()) or temperature != 1.0
                or replay_fraction > 0)
    n_own = sum(sizes.values())
    names = tuple(sizes) + tuple(replay_sizes)
    probs = np.concatenate([own, replay])
    if not replay_fraction:
        names, probs = tuple(sizes), own
    return Mixture(names, tuple(float(p) for p in probs),
                   int(round(n_own / (1.0 - replay_fraction))), weighted)


def epoch_order(task_of_row: np.ndarray, mixture: Mixture, seed: int, epoch: int) -> np.ndarray:
    """The rows (indices into the stage's training sequences) one epoch visits, in order."""
    if not mixture.weighted:
        # Kept exactly as a single-task stage always shuffled, so its runs reproduce.
        return np.random.default_rng(seed + epoch).permutation(len(task_of_row))
    rng = np.random.default_rng([seed, epoch])
    slots = rng.choice(len(mixture.names), size=mixture.epoch_size, p=mixture.probabilities)
    order = np.empty(mixture.epoch_size, dtype=np.int64)
    for task in range(len(mixture.names)):
        where = np.flatnonzero(slots == task)
        if not len(where):
            continue
        rows = np.flatnonzero(task_of_row == task)
        cycles = -(-len(where) // len(rows))
        order[where] = np.concatenate([rng.permutation(rows) for _ in range(cycles)])[: len(where)]
    return order


def count_tasks(task_of_row: np.ndarray, rows: np.ndarray, n_tasks: int) -> np.ndarray:
    """How many of ``rows`` belong to each task."""
    return np.bincount(task_of_row[rows], minlength=n_tasks)
