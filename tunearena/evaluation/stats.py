"""Percentile-bootstrap confidence intervals over per-question scores (seeded, numpy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MAX_DRAWS_PER_CHUNK = 4_000_000
"""Resampled values held in memory at once (32 MB of int64 indices)."""


def mean_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The mean of ``values`` and its percentile-bootstrap interval: ``(mean, lo, hi)``.

    The same seed and inputs always give the same interval. All-equal values (including a
    single value) give ``lo == hi == mean``.
    """
    x = _as_1d(values, "values")
    return _bootstrap(x, confidence, n_boot, seed)


def paired_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``mean(a - b)`` and its paired-bootstrap interval: ``(diff, lo, hi)``.

    ``a[i]`` and ``b[i]`` must score the same question: questions (not arms) are resampled,
    so question difficulty cancels out and the interval is far tighter than comparing two
    independent intervals.
    """
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(
            f"paired scores need the same questions: a has {xa.size} values, b has {xb.size}"
        )
    return _bootstrap(xa - xb, confidence, n_boot, seed)


def _bootstrap(
    x: np.ndarray, confidence: float, n_boot: int, seed: int
) -> tuple[float, float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    mean = float(x.mean())
    if np.all(x == x[0]):  # every resample has the same mean; skip float round-off
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    n = x.size
    # Resample in chunks so a large benchmark never needs an n_boot x n index matrix.
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    means = np.concatenate(
        [
            x[rng.integers(0, n, size=(min(chunk, n_boot - start), n))].mean(axis=1)
            for start in range(0, n_boot, chunk)
        ]
    )
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x
