"""Bootstrap intervals against values known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from tunearena.evaluation.stats import mean_ci, paired_diff_ci


def test_mean_ci_half_ones_contains_half_with_binomial_width():
    mean, lo, hi = mean_ci([1] * 50 + [0] * 50)
    assert mean == 0.5
    assert lo < 0.5 < hi
    # Normal approximation: 2 * 1.96 * sqrt(0.25 / 100) = 0.196.
    assert hi - lo == pytest.approx(0.196, abs=0.03)


def test_mean_ci_is_reproducible_and_seed_dependent():
    values = np.random.default_rng(1).random(40)
    assert mean_ci(values, seed=3) == mean_ci(values, seed=3)
    assert mean_ci(values, seed=3)[1:] != mean_ci(values, seed=4)[1:]


def test_mean_ci_narrows_with_lower_confidence():
    values = [1] * 30 + [0] * 70
    _, lo95, hi95 = mean_ci(values, confidence=0.95)
    _, lo80, hi80 = mean_ci(values, confidence=0.80)
    assert lo95 <= lo80 < hi80 <= hi95


@pytest.mark.parametrize("values", [[1] * 20, [0] * 20, [0.3] * 7, [1]])
def test_mean_ci_degenerate_has_zero_width(values):
    assert mean_ci(values) == (values[0], values[0], values[0])


def test_paired_diff_positive_when_a_dominates_b():
    rng = np.random.default_rng(0)
    b = (rng.random(200) < 0.4).astype(int)
    a = np.maximum(b, (rng.random(200) < 0.5).astype(int))  # never worse, often better
    diff, lo, hi = paired_diff_ci(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert 0 < lo < diff < hi


def test_paired_diff_is_antisymmetric():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 80), rng.integers(0, 2, 80)
    d, lo, hi = paired_diff_ci(a, b)
    d2, lo2, hi2 = paired_diff_ci(b, a)
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo))


def test_paired_diff_identical_arrays_is_zero_with_zero_width():
    a = [1, 0, 1, 1, 0, 0, 1]
    assert paired_diff_ci(a, list(a)) == (0.0, 0.0, 0.0)


def test_paired_diff_is_tighter_than_unpaired_when_questions_vary_in_difficulty():
    # Same questions, strongly correlated arms: pairing removes question difficulty.
    rng = np.random.default_rng(5)
    b = (rng.random(300) < 0.5).astype(int)
    a = b.copy()
    a[rng.choice(np.flatnonzero(b == 0), 15, replace=False)] = 1
    _, lo, hi = paired_diff_ci(a, b)
    _, alo, ahi = mean_ci(a)
    assert hi - lo < (ahi - alo) / 2


def test_paired_diff_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same questions: a has 3 values, b has 2"):
        paired_diff_ci([1, 0, 1], [1, 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"values": []}, "non-empty"),
        ({"values": [1.0, float("nan")]}, "NaN"),
        ({"values": [1, 0], "confidence": 1.0}, "confidence"),
        ({"values": [1, 0], "n_boot": 0}, "n_boot"),
    ],
)
def test_mean_ci_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mean_ci(**kwargs)


def test_large_input_is_resampled_in_chunks():
    values = np.tile([1.0, 0.0, 0.0, 1.0], 5000)  # 20k questions: several chunks
    mean, lo, hi = mean_ci(values, n_boot=500)
    assert mean == 0.5
    assert lo < 0.5 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.25 / values.size), abs=0.004)


# -- clusters: resample source documents, not questions --------------------------------


def test_singleton_clusters_give_exactly_the_unclustered_result():
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    named = [f"doc{i}" for i in range(60)]
    unnamed = [None] * 60  # each question without a doc_id is its own cluster
    for clusters in (named, unnamed, named[:30] + unnamed[30:]):
        assert mean_ci(a, seed=3, clusters=clusters) == mean_ci(a, seed=3)
        assert paired_diff_ci(a, b, seed=3, clusters=clusters) == paired_diff_ci(a, b, seed=3)


def test_clusters_match_a_loop_over_resampled_documents():
    # Unequal documents and two None questions: a resample's mean is over its questions.
    values = np.array([1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0], dtype=float)
    clusters = ["a", "a", "a", "b", None, "c", "c", "b", None, "d", "d", "d"]
    groups = [values[[0, 1, 2]], values[[3, 7]], values[[4]], values[[5, 6]], values[[8]]]
    groups.append(values[[9, 10, 11]])  # in order of first appearance: a b None c None d
    draws = np.random.default_rng(0).integers(0, 6, size=(500, 6))
    means = [np.concatenate([groups[g] for g in row]).mean() for row in draws]
    expected = (values.mean(), *np.quantile(means, [0.025, 0.975]))
    assert mean_ci(values, n_boot=500, clusters=clusters) == pytest.approx(expected, abs=1e-12)


def test_perfectly_correlated_documents_widen_the_interval_by_sqrt_questions_per_doc():
    # 10 documents x 10 identical questions hold the information of 10 questions, not 100.
    values = [float(doc < 5) for doc in range(10) for _ in range(10)]
    clusters = [f"doc{doc}" for doc in range(10) for _ in range(10)]
    mean, lo, hi = mean_ci(values)
    cmean, clo, chi = mean_ci(values, clusters=clusters)
    assert cmean == mean == 0.5
    assert clo < 0.5 < chi
    assert (chi - clo) / (hi - lo) == pytest.approx(np.sqrt(10), rel=0.15)
    # Normal approximation over 10 documents: 2 * 1.96 * sqrt(0.25 / 10) = 0.62.
    assert chi - clo == pytest.approx(0.62, abs=0.07)


def test_paired_clustered_diff_has_the_known_sign_and_is_wider():
    # 12 documents x 5 questions; a gains on whole documents and never loses a question.
    rng = np.random.default_rng(4)
    clusters = [f"doc{doc}" for doc in range(12) for _ in range(5)]
    b = (rng.random(60) < 0.4).astype(int)
    a = b.copy()
    for doc in (0, 3, 5, 8, 10):
        a[doc * 5 : doc * 5 + 5] = 1
    diff, lo, hi = paired_diff_ci(a, b, clusters=clusters)
    _, ulo, uhi = paired_diff_ci(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert 0 < lo < diff < hi
    assert hi - lo > uhi - ulo
    assert paired_diff_ci(b, a, clusters=clusters) == pytest.approx((-diff, -hi, -lo))


def test_clusters_must_name_one_cluster_per_value():
    with pytest.raises(ValueError, match="one cluster per value: 2 for 3"):
        mean_ci([1, 1, 1], clusters=["a", "b"])
