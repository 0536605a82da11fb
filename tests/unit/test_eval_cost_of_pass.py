"""Cost-of-pass (dollars per correct answer) on hand-made results, checked against the
arithmetic done by hand."""

from __future__ import annotations

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import html_report, markdown_report, summarise
from tunearena.evaluation.report.view import build_view
from tunearena.evaluation.results import parse_results

BENCHMARKS = [
    BenchmarkConfig(name="dom", path="dom.jsonl", kind="domain"),
    BenchmarkConfig(name="gen", path="gen.jsonl", kind="general"),
]


def _scores(n: int, n_correct: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "acc": int(i < n_correct), "acc_norm": int(i < n_correct)}
            for i in range(n)]


def _arm(dom_right: int) -> dict[str, list[dict]]:
    return {"dom": _scores(40, dom_right, "d"), "gen": _scores(40, 30, "g")}


# Stage a starts from base, b from a (b is ft), c from base (a sibling of a, not chosen).
SAMPLES = {"base": _arm(10), "base+rag": _arm(20), "ft": _arm(30), "ft+rag": _arm(32),
           "ft@a": _arm(0), "ft@b": _arm(30)}
ARMS = list(SAMPLES)


def _latency(p50_ms: float, tokens_added: float | None = None) -> dict:
    row = {"latency_p50_ms": p50_ms, "latency_p95_ms": 2 * p50_ms}
    return row | ({"prompt_tokens_added": tokens_added} if tokens_added is not None else {})


EXTRA = {
    "cost": {"device": "GPU", "device_hours": 4.5, "usd": 9.0, "usd_per_device_hour": 2.0,
             "per_stage": {"a": {"device_hours": 1.5, "usd": 3.0},
                           "b": {"device_hours": 0.5, "usd": 1.0},
                           "c": {"device_hours": 2.5, "usd": 5.0}}},
    "stages": {"order": ["a", "b", "c"],
               "selection": {"selected": "b"},
               "stages": {"a": {"start_from": "base"}, "b": {"start_from": "a"},
                          "c": {"start_from": "base"}}},
    "latency": {"base": _latency(100.0), "base+rag": _latency(150.0, 80.0),
                "ft": _latency(100.0), "ft+rag": _latency(150.0, 80.0),
                # Not timed one question at a time: its scoring time per question stands in.
                "ft@a": {"ms_per_question_scored": 20.0}, "ft@b": _latency(100.0)},
    # Half an hour building the index.
    "retrieval": {"index": {"factory": "Flat", "build_s": 1800.0}},
}
# Serving at $3.60 an hour is a millionth of a dollar per millisecond; the index's half hour
# at $2.00 is $1.00; training and the index are spread over 1,000 answers.
REPORT = ReportConfig(gpu_hour_cost_usd=2.0, serving_hour_cost_usd=3.6, queries=1000)


def _results(samples=SAMPLES, extra=EXTRA, report=REPORT):
    arms = list(samples)
    evaluation = EvaluationConfig(benchmarks=BENCHMARKS, arms=arms, bootstrap_samples=200)
    return summarise(samples, BENCHMARKS, evaluation, report, extra)


def test_cost_of_pass_matches_the_arithmetic_by_hand():
    cost = _results().cost_of_pass
    assert cost is not None
    s = cost.settings
    assert (s.queries, s.serving_usd_per_device_hour, s.index_usd_per_device_hour) == (
        1000, 3.6, 2.0)
    assert s.index_usd == pytest.approx(1.0)
    # Only domain benchmarks are priced; every scored and timed arm is.
    assert list(cost.arms) == ARMS
    assert all(list(a.benchmarks) == ["dom"] for a in cost.arms.values())
    expected = {
        # arm: (stages carried, training $, index $, serving ms, accuracy on dom)
        "base": ([], 0.0, 0.0, 100.0, 10 / 40),
        "base+rag": ([], 0.0, 1.0, 150.0, 20 / 40),
        # ft is stage b, which started from a: it carries both, not the sibling c.
        "ft": (["a", "b"], 4.0, 0.0, 100.0, 30 / 40),
        "ft+rag": (["a", "b"], 4.0, 1.0, 150.0, 32 / 40),
        "ft@a": (["a"], 3.0, 0.0, 20.0, 0.0),
        "ft@b": (["a", "b"], 4.0, 0.0, 100.0, 30 / 40),
    }
    for arm, (stages, training, index, ms, accuracy) in expected.items():
        a = cost.arms[arm]
        per_answer = ms / 1e6 + (training + index) / 1000
        assert (a.trained_stages, a.training_usd, a.serving_ms) == (stages, training, ms), arm
        assert a.index_usd == pytest.approx(index), arm
        assert a.serving_usd_per_answer == pytest.approx(ms / 1e6), arm
        assert a.usd_per_answer == pytest.approx(per_answer), arm
        dom = a.benchmarks["dom"]
        assert dom.accuracy == pytest.approx(accuracy), arm
        if accuracy:
            assert dom.usd_per_correct == pytest.approx(per_answer / accuracy), arm
            lo, hi = dom.accuracy_ci
            assert dom.usd_per_correct_ci == pytest.approx((per_answer / hi, per_answer / lo))
    assert cost.arms["ft@a"].serving_time_from == "ms_per_question_scored"
    assert cost.arms["ft"].serving_time_from == "latency_p50_ms"
    assert cost.arms["base+rag"].prompt_tokens_added == 80.0
    assert cost.arms["base"].prompt_tokens_added is None


def test_no_correct_answer_has_no_cost_of_pass():
    results = _results()
    ft_a = results.cost_of_pass.arms["ft@a"].benchmarks["dom"]
    assert (ft_a.accuracy, ft_a.usd_per_correct, ft_a.usd_per_correct_ci) == (0.0, None, None)
    rows = {(r["arm"], r["benchmark"]): r for r in build_view(results).cost_of_pass["rows"]}
    assert rows[("ft@a", "dom")]["usd_per_correct"] == "no correct answers"
    assert rows[("ft@a", "dom")]["usd_per_1000_correct"] == "no correct answers"
    # 1,000 answers of ft: $0.10 serving, and its whole $4.00 of training.
    assert rows[("ft (= ft@b)", "dom")]["usd_per_1000_answers"] == "$4.10"


def test_an_interval_reaching_zero_accuracy_has_no_upper_cost():
    # 1 of 40 right: the interval's lower end is 0, so no finite cost bounds it from above.
    cost = _results(samples={**SAMPLES, "base": _arm(1)}).cost_of_pass
    dom = cost.arms["base"].benchmarks["dom"]
    assert dom.accuracy_ci[0] == 0.0 and dom.usd_per_correct is not None
    lo, hi = dom.usd_per_correct_ci
    assert lo == pytest.approx(cost.arms["base"].usd_per_answer / dom.accuracy_ci[1])
    assert hi is None


def test_serving_price_defaults_to_the_training_price_and_one_run_carries_its_whole_cost():
    samples = {arm: SAMPLES[arm] for arm in ("base", "ft")}
    extra = {"cost": {"usd": 9.0, "device_hours": 4.5},
             "latency": {"base": _latency(100.0), "ft": _latency(100.0)}}
    cost = _results(samples, extra, ReportConfig(gpu_hour_cost_usd=3.6)).cost_of_pass
    assert cost.settings.serving_usd_per_device_hour == 3.6
    assert cost.settings.queries == 100_000
    assert cost.settings.index_usd is None
    assert cost.arms["ft"].training_usd == 9.0
    assert cost.arms["ft"].usd_per_answer == pytest.approx(100 / 1e6 + 9.0 / 100_000)


def test_without_latency_the_section_is_absent_and_unpriced_arms_are_left_out():
    results = _results(extra={k: v for k, v in EXTRA.items() if k != "latency"})
    assert results.cost_of_pass is None
    assert "cost_of_pass" not in results.to_json()
    assert build_view(results).cost_of_pass is None
    assert "Cost per correct answer" not in markdown_report(results)
    # Timed, but no training cost: the fine-tuned arms cannot be priced; base still is.
    cost = _results(extra={k: v for k, v in EXTRA.items() if k != "cost"}).cost_of_pass
    assert list(cost.arms) == ["base", "base+rag"]


def test_cost_of_pass_round_trips_and_is_reported():
    results = _results()
    saved = results.to_json()
    assert parse_results(saved).to_json() == saved
    assert set(saved["cost_of_pass"]["arms"]["ft"]) == {
        "trained_stages", "training_usd", "index_usd", "serving_ms", "serving_time_from",
        "serving_usd_per_answer", "usd_per_answer", "prompt_tokens_added", "benchmarks"}
    md = markdown_report(results)
    assert "#### Cost per correct answer" in md
    assert "spread over 1,000 answers" in md
    assert "| ft (= ft@b) | dom | 75.0% | $4.10 | $5.47 |" in md
    html = html_report(results)
    assert '<h3 id="cost-of-pass">Cost per correct answer</h3>' in html
    assert "<td class=\"num\">$5.47</td>" in html
