"""Bootstrap intervals against values known in closed form."""

from __future__ import annotations

from collections.abc import Sequence

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


# What the report says about its own intervals: too few documents, too wide to decide, and
# how many questions it rests on.

def _choice(ids: list[str], right: list[int], docs: Sequence[str | None]) -> list[dict]:
    return [{"id": i, "acc": r, "acc_norm": r, "doc_id": d}
            for i, r, d in zip(ids, right, docs, strict=True)]


def _summarise_dom(samples: dict, benchmarks=None, tolerance: float = 0.05):
    from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
    from tunearena.evaluation.report import summarise

    benchmarks = benchmarks or [BenchmarkConfig(name="dom", path="dom.jsonl", kind="domain")]
    evaluation = EvaluationConfig(benchmarks=benchmarks, arms=list(samples),
                                  bootstrap_samples=500, forgetting_tolerance=tolerance,
                                  fewshot={"path": "train.jsonl"})
    return summarise(samples, benchmarks, evaluation, ReportConfig(), {})


def _fewshot_misses_one_per_document(n_docs: int, per_doc: int):
    """Base answers every question; few-shot misses the first question of every document."""
    ids = [f"q{i}" for i in range(n_docs * per_doc)]
    docs = [f"doc{i // per_doc}" for i in range(len(ids))]
    fewshot = [int(i % per_doc != 0) for i in range(len(ids))]
    return _summarise_dom({"base": {"dom": _choice(ids, [1] * len(ids), docs)},
                           "base+fewshot": {"dom": _choice(ids, fewshot, docs)}})


def test_two_documents_are_too_few_and_every_verdict_says_so():
    from tunearena.evaluation.report import markdown_report
    from tunearena.evaluation.report.view import build_view

    # As with evaluation.limit=10 on the demo: 10 questions from 2 documents.
    results = _fewshot_misses_one_per_document(n_docs=2, per_doc=5)
    bench = results.benchmarks["dom"]
    row = bench.arms["base+fewshot"]
    assert row.diff_ci[1] < 0  # the interval alone would claim "worse"
    assert row.verdict == "worse than base (too few documents to trust)"
    assert [w.kind for w in bench.warnings] == ["few_documents"]
    assert bench.warnings[0].message.startswith("The 10 questions come from 2 documents")
    md = markdown_report(results)
    assert "Few-shot prompting hurts on dom (too few documents to trust)" in md
    assert "| worse than base (too few documents to trust) |" in md
    assert "dom (2 documents)" in results.decision.confidence
    view = build_view(results)
    assert view.benchmarks[0]["rows"][1]["tone"] == "neutral"
    assert [(w["benchmark"], w["kind"]) for w in view.warnings] == [("dom", "few_documents")]


def test_thirty_documents_carry_no_warning():
    results = _fewshot_misses_one_per_document(n_docs=30, per_doc=2)
    bench = results.benchmarks["dom"]
    assert (bench.n, bench.n_clusters) == (60, 30)
    assert bench.warnings == []
    assert bench.arms["base+fewshot"].verdict == "worse than base"
    assert "too few" not in results.decision.confidence


def test_few_questions_without_shared_documents_are_too_few_too():
    ids = [f"q{i}" for i in range(8)]
    results = _summarise_dom({"base": {"dom": _choice(ids, [1] * 8, [None] * 8)},
                              "base+fewshot": {"dom": _choice(ids, [0] * 8, [None] * 8)}})
    bench = results.benchmarks["dom"]
    assert bench.clustered_by is None
    assert bench.arms["base+fewshot"].verdict == "worse than base (too few questions to trust)"
    assert bench.warnings[0].message.startswith("There are only 8 questions")


def test_an_interval_past_the_tolerance_on_both_sides_is_too_wide_to_decide():
    ids = [f"q{i}" for i in range(20)]
    base = [i % 2 for i in range(20)]
    # As many questions won as lost against base: a mean of 0 with an interval of about
    # +-30 points, far past a 5-point tolerance either way.
    swapped = [int(i < 10) for i in range(20)]
    results = _summarise_dom({"base": {"dom": _choice(ids, base, [None] * 20)},
                              "base+fewshot": {"dom": _choice(ids, swapped, [None] * 20)},
                              "ft": {"dom": _choice(ids, base, [None] * 20)}})
    bench = results.benchmarks["dom"]
    lo, hi = bench.arms["base+fewshot"].diff_ci
    assert lo < -0.05 and hi > 0.05
    (warning,) = bench.warnings
    assert (warning.kind, warning.arms) == ("wide_interval", ["base+fewshot"])
    assert "5-point tolerance on both sides" in warning.message
    # With a tolerance wider than the interval, it decides something: no warning.
    wide_tolerance = _summarise_dom({"base": {"dom": _choice(ids, base, [None] * 20)},
                                     "base+fewshot": {"dom": _choice(ids, swapped, [None] * 20)}},
                                    tolerance=0.5)
    assert wide_tolerance.benchmarks["dom"].warnings == []


def test_two_tracks_on_one_question_file_count_its_questions_once():
    from tunearena.evaluation.config import BenchmarkConfig

    ids = [f"q{i}" for i in range(40)]
    docs = [f"doc{i}" for i in range(40)]
    choice = _choice(ids, [int(i < 30) for i in range(40)], docs)
    generative = [{"id": i, "exact_match": int(n < 20), "f1": float(n < 20), "prediction": "x",
                   "doc_id": d} for n, (i, d) in enumerate(zip(ids, docs, strict=True))]
    shared = [BenchmarkConfig(name="mc", path="qa.jsonl", kind="domain"),
              BenchmarkConfig(name="words", path="qa.jsonl", kind="domain", track="generative")]
    samples = {arm: {"mc": choice, "words": generative} for arm in ("base", "base+fewshot")}
    results = _summarise_dom(samples, shared)
    assert results.benchmarks["words"].same_questions_as == "mc"
    assert results.benchmarks["mc"].same_questions_as is None
    assert results.decision.confidence.startswith(
        "Based on 40 domain questions (each scored two ways), at 95% confidence.")
    # Two files: two sets of questions, even with the same ids.
    apart = [shared[0], BenchmarkConfig(name="words", path="other.jsonl", kind="domain",
                                        track="generative")]
    results = _summarise_dom(samples, apart)
    assert results.benchmarks["words"].same_questions_as is None
    assert results.decision.confidence.startswith("Based on 80 domain questions, at 95%")
