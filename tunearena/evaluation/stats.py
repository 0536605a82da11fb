"""Percentile-bootstrap confidence intervals over per-question scores (seeded, numpy).

Questions written from one source document succeed or fail together, so with ``clusters``
(one document id per question) whole documents are resampled instead of single questions.
"""

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
    clusters: Sequence[str | None] | None = None,
) -> tuple[float, float, float]:
    """The mean of ``values`` and its percentile-bootstrap interval: ``(mean, lo, hi)``.

    ``clusters[i]`` names the cluster (source document) of ``values[i]``; clusters are then
    resampled with replacement, each bringing all its values, and a resample's mean is taken
    over the values it holds. A None cluster is a cluster of its own. When every cluster
    holds one value the result is exactly the unclustered one.

    The same seed and inputs always give the same interval. All-equal values (including a
    single value) give ``lo == hi == mean``.
    """
    x = _as_1d(values, "values")
    return _bootstrap(x, confidence, n_boot, seed, clusters)


def paired_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    clusters: Sequence[str | None] | None = None,
) -> tuple[float, float, float]:
    """``mean(a - b)`` and its paired-bootstrap interval: ``(diff, lo, hi)``.

    ``a[i]`` and ``b[i]`` must score the same question: questions (not arms) are resampled,
    so question difficulty cancels out and the interval is far tighter than comparing two
    independent intervals. With ``clusters`` (as in ``mean_ci``) whole clusters are
    resampled and each resample's difference is taken over the questions it holds.
    """
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(
            f"paired scores need the same questions: a has {xa.size} values, b has {xb.size}"
        )
    return _bootstrap(xa - xb, confidence, n_boot, seed, clusters)


def ratio_ci(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``sum(numerators) / sum(denominators)`` and its percentile-bootstrap interval over
    items (documents), each resample a ratio of its sums: ``(ratio, lo, hi)``.

    Bits per byte is such a ratio (a document's bits over its bytes), and so is a paired
    difference of two models' bits per byte (the difference of their bits over the bytes).
    """
    num, den = _as_1d(numerators, "numerators"), _as_1d(denominators, "denominators")
    if num.shape != den.shape:
        raise ValueError(f"numerators and denominators differ in length: {num.size} vs {den.size}")
    if np.any(den <= 0):
        raise ValueError("denominators must be positive")
    return _bootstrap(num / den, confidence, n_boot, seed, weights=den)


def _bootstrap(
    x: np.ndarray,
    confidence: float,
    n_boot: int,
    seed: int,
    clusters: Sequence[str | None] | None = None,
    weights: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """The (weighted) mean of ``x`` and its interval; ``weights`` and ``clusters`` exclude
    each other."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    codes = None if clusters is None else _cluster_codes(clusters, x.size)
    mean = float(x.mean()) if weights is None else float((x * weights).sum() / weights.sum())
    if np.all(x == x[0]):  # every resample has the same mean; skip float round-off
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    if weights is not None:
        # A resample's ratio of sums: each item brings its weighted value and its weight.
        sums, sizes = x * weights, weights
    elif codes is None or codes.max() + 1 == x.size:
        # No cluster holds two values: resample values, so singletons match the plain case.
        sums, sizes = x, None
    else:
        sums, sizes = np.bincount(codes, weights=x), np.bincount(codes)
    k = sums.size
    # Resample in chunks so a large benchmark never needs an n_boot x k index matrix.
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // k)
    draws = (
        rng.integers(0, k, size=(min(chunk, n_boot - start), k))
        for start in range(0, n_boot, chunk)
    )
    if sizes is None:
        means = np.concatenate([sums[idx].mean(axis=1) for idx in draws])
    else:
        # A resample's mean is over its questions, so large documents weigh more.
        means = np.concatenate([sums[idx].sum(axis=1) / sizes[idx].sum(axis=1) for idx in draws])
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)


def _cluster_codes(clusters: Sequence[str | None], n: int) -> np.ndarray:
    """Cluster ids as integers 0..k-1 in order of first appearance; each None gets its own."""
    if len(clusters) != n:
        raise ValueError(f"clusters must name one cluster per value: {len(clusters)} for {n}")
    codes: dict[object, int] = {}
    return np.array(
        [codes.setdefault(object() if c is None else c, len(codes)) for c in clusters],
        dtype=np.int64,
    )


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x
