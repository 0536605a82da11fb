"""summarise and render_markdown on hand-made per-question scores."""

from __future__ import annotations

import json
import re

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import render_markdown, summarise

BENCHMARKS = [
    BenchmarkConfig(name="dom", path="dom.jsonl", kind="domain"),
    BenchmarkConfig(name="gen", path="gen.jsonl", kind="general"),
]


def _scores(n: int, n_correct: int, prefix: str) -> list[dict]:
    """The first ``n_correct`` of ``n`` questions right (so arms nest question by question)."""
    return [
        {"id": f"{prefix}{i}", "acc": int(i < n_correct), "acc_norm": int(i < n_correct // 2)}
        for i in range(n)
    ]


SAMPLES = {
    "base": {"dom": _scores(40, 10, "d"), "gen": _scores(100, 80, "g")},
    "base+rag": {"dom": _scores(40, 30, "d"), "gen": _scores(100, 80, "g")},
    "ft": {"dom": _scores(40, 10, "d"), "gen": _scores(100, 60, "g")},
    "ft+rag": {"dom": _scores(40, 20, "d"), "gen": _scores(100, 79, "g")},
}
EXTRA = {
    "training": {"stages": [{"name": "domain", "steps": 20, "loss": 1.23456}], "gpu_hours": 0.5},
    "retrieval": {"index": "Flat", "recall@5": 0.9},
    "run": {"name": "demo", "code_version": "abc123"},
}


def _summarise(samples=SAMPLES, extra=EXTRA, **report):
    return summarise(
        samples,
        BENCHMARKS,
        EvaluationConfig(benchmarks=BENCHMARKS, bootstrap_samples=1000),
        ReportConfig(**report),
        extra,
    )


def test_per_arm_scores_and_verdicts():
    results = _summarise()
    dom = results["benchmarks"]["dom"]
    assert (dom["kind"], dom["n"]) == ("domain", 40)
    assert results["arms"] == ["base", "base+rag", "ft", "ft+rag"]
    base, rag, ft = dom["arms"]["base"], dom["arms"]["base+rag"], dom["arms"]["ft"]
    assert (base["acc"], base["acc_norm"], base["verdict"]) == (0.25, 0.125, "reference")
    assert base["diff_vs_base"] is None
    assert base["acc_ci"][0] < 0.25 < base["acc_ci"][1]
    assert rag["diff_vs_base"] == pytest.approx(0.5)
    assert rag["diff_ci"][0] > 0 and rag["verdict"] == "better than base"
    # Identical answers: zero difference, zero-width interval, no claim either way.
    assert (ft["diff_vs_base"], ft["diff_ci"]) == (0.0, [0.0, 0.0])
    assert ft["verdict"] == "no evidence of a difference"
    assert results["benchmarks"]["gen"]["arms"]["ft"]["verdict"] == "worse than base"


def test_forgetting_checks_and_sentences():
    checks = {c["arm"]: c for c in _summarise()["forgetting"]["checks"]}
    assert set(checks) == {"base+rag", "ft", "ft+rag"}
    assert checks["ft"]["status"] == "forgetting"
    assert re.fullmatch(
        r"ft lost 20\.0 points on gen \(95% CI -\d+\.\d to -\d+\.\d\): "
        r"forgetting beyond the 2-point tolerance",
        checks["ft"]["sentence"],
    )
    assert checks["base+rag"]["status"] == "none"
    assert checks["base+rag"]["sentence"] == (
        "base+rag kept the same score on gen (95% CI 0.0 to 0.0): within the 2-point tolerance"
    )
    # One question lost of 100: the interval reaches past -2 points, so no verdict.
    assert checks["ft+rag"]["status"] == "inconclusive"
    assert "cannot rule out forgetting" in checks["ft+rag"]["sentence"]


def test_forgetting_tolerance_comes_from_report_config():
    checks = {c["arm"]: c for c in _summarise(forgetting_tolerance=0.5)["forgetting"]["checks"]}
    assert checks["ft"]["status"] == "none"
    assert checks["ft"]["sentence"].endswith("within the 50-point tolerance")


def test_headline_answers_the_questions():
    headline = _summarise()["headline"]
    assert any(s.startswith("RAG helps on dom: base+rag 75.0% vs base 25.0%") for s in headline)
    assert any(s.startswith("Fine-tuning makes no clear difference on dom") for s in headline)
    assert any(s.startswith("Fine-tuning plus RAG helps on dom") for s in headline)
    assert headline[-1] == "Forgetting beyond the 2-point tolerance: ft on gen."


def test_results_keep_samples_merge_extra_and_round_trip_through_json():
    results = _summarise()
    assert results["samples"] == SAMPLES
    assert results["training"] == EXTRA["training"]
    assert results["run"]["name"] == "demo"
    assert results["settings"]["confidence"] == 0.95
    assert json.loads(json.dumps(results)) == results


def test_render_markdown_tables_and_sections():
    md = render_markdown(json.loads(json.dumps(_summarise())))
    assert md.startswith("# tunearena report: demo\n")
    assert "- RAG helps on dom: base+rag 75.0% vs base 25.0%" in md
    assert "### dom (domain, n = 40)" in md
    assert "| arm | acc | 95% CI | acc_norm | diff vs base | 95% CI of diff | verdict |" in md
    assert "| base | 25.0% |" in md and "| — | — | reference |" in md
    assert re.search(
        r"\| base\+rag \| 75\.0% \| [\d.]+ to [\d.]+ \| 37\.5% \| \+50\.0 \| "
        r"\+[\d.]+ to \+[\d.]+ \| better than base \|",
        md,
    )
    assert "| ft | 25.0% |" in md and "| +0.0 | +0.0 to +0.0 | no evidence of a difference |" in md
    assert "## Forgetting" in md and "- ft lost 20.0 points on gen (95% CI" in md
    assert "## Training" in md and "| domain | 20 | 1.235 |" in md
    assert "- **recall@5**: 0.9" in md
    assert "- **code_version**: abc123" in md


def test_render_markdown_without_optional_sections():
    results = _summarise(extra={})
    md = render_markdown(results)
    assert md.startswith("# tunearena report\n")
    for title in ("## Training", "## Retrieval", "## Run"):
        assert title not in md
    assert "## Forgetting" in md


def test_only_some_arms_and_no_general_benchmark():
    samples = {"base": {"dom": _scores(40, 10, "d")}, "ft": {"dom": _scores(40, 20, "d")}}
    results = summarise(
        samples,
        BENCHMARKS[:1],
        EvaluationConfig(benchmarks=BENCHMARKS[:1]),
        ReportConfig(),
        {},
    )
    assert list(results["benchmarks"]["dom"]["arms"]) == ["base", "ft"]
    assert results["forgetting"]["checks"] == []
    assert "forgetting was not measured" in results["headline"][-1]
    assert "| ft | 50.0% |" in render_markdown(results)


@pytest.mark.parametrize(
    ("samples", "extra", "match"),
    [
        ({"ft": SAMPLES["ft"]}, {}, "no 'base' arm"),
        ({**SAMPLES, "rag": SAMPLES["ft"]}, {}, "not configured"),
        (
            {**SAMPLES, "ft": {"dom": SAMPLES["ft"]["dom"]}},
            {},
            "arm 'ft' has no scores for benchmark 'gen'",
        ),
        (
            {**SAMPLES, "ft": {**SAMPLES["ft"], "gen": _scores(99, 60, "g")}},
            {},
            "different questions",
        ),
        (SAMPLES, {"samples": []}, "own keys"),
    ],
)
def test_inconsistent_inputs_are_errors(samples, extra, match):
    with pytest.raises(ValueError, match=match):
        _summarise(samples=samples, extra=extra)
