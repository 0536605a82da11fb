"""Bits per byte: the ratio-of-sums bootstrap, and how the report states it."""

from __future__ import annotations

import math

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import html_report, markdown_report, summarise
from tunearena.evaluation.stats import mean_ci, ratio_ci


def test_ratio_ci_is_a_ratio_of_sums_and_reduces_to_the_mean():
    # Equal denominators: exactly the mean and its interval (the same resamples).
    assert ratio_ci([1, 2, 3, 4], [1, 1, 1, 1]) == mean_ci([1, 2, 3, 4])
    # Long documents weigh more: (5 + 1) / (10 + 1), not the mean of 0.5 and 1.
    ratio, lo, hi = ratio_ci([5, 1], [10, 1], n_boot=500)
    assert ratio == pytest.approx(6 / 11) and lo <= ratio <= hi
    assert ratio_ci([3, 3], [2, 2]) == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError, match="denominators must be positive"):
        ratio_ci([1], [0])


def _rows(bits: list[float], n_bytes: list[int]) -> list[dict]:
    return [{"id": str(i), "loglikelihood": -b * math.log(2), "bytes": n, "doc_id": None}
            for i, (b, n) in enumerate(zip(bits, n_bytes, strict=True))]


def test_bits_per_byte_benchmark_is_reported_apart_from_accuracy():
    bpb = BenchmarkConfig(name="wiki", lm_eval_task="wikitext", kind="general")
    acc = BenchmarkConfig(name="dom", path="d.jsonl", kind="domain")
    n_bytes = [100 + 10 * i for i in range(30)]
    base_bits = [1.0 * n for n in n_bytes]
    samples = {
        arm: {"wiki": _rows([b * factor for b in base_bits], n_bytes),
              "dom": [{"id": f"q{i}", "acc": int(i < right), "acc_norm": 0} for i in range(40)]}
        for arm, factor, right in (("base", 1.0, 10), ("ft", 1.2, 30))
    }
    results = summarise(samples, [acc, bpb], EvaluationConfig(
        benchmarks=[acc, bpb], arms=["base", "ft"], bootstrap_samples=500), ReportConfig())
    assert list(results.benchmarks) == ["dom"]  # no accuracy, no forgetting check
    assert results.forgetting is not None and results.forgetting.checks == []
    wiki = results.language_modelling["wiki"]
    assert wiki.n == 30 and wiki.bytes == sum(n_bytes)
    assert wiki.arms["base"].bits_per_byte == pytest.approx(1.0)
    ft = wiki.arms["ft"]
    # 20% more bits on every document: +0.2 bits per byte, an interval above zero: worse.
    assert ft.bits_per_byte == pytest.approx(1.2) and ft.diff_vs_base == pytest.approx(0.2)
    assert ft.diff_ci is not None and ft.diff_ci[0] > 0 and ft.verdict == "worse than base"
    assert any(s.startswith("Language modelling on wiki: ft 1.200 bits per byte vs base 1.000")
               and s.endswith("worse than base.") for s in results.headline)
    assert "### wiki: bits per byte (general, 30 documents; fewer is better)" in (
        markdown_report(results))
    page = html_report(results)
    assert 'id="language-modelling"' in page and "1.2000" in page
