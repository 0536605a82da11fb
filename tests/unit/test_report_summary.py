"""The report's first screen: every number a summary bullet states is one that the tables of
results.json hold, and a benchmark that disagrees with the verdict is named."""

from __future__ import annotations

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import html_report, markdown_report, summarise
from tunearena.evaluation.report.formats import signed, unsigned, usd
from tunearena.evaluation.results import Figure, Results, parse_results

BENCHMARKS = [
    BenchmarkConfig(name="products", path="products.jsonl", kind="domain"),
    BenchmarkConfig(name="answers", path="answers.jsonl", kind="domain"),
    BenchmarkConfig(name="facts", path="facts.jsonl", kind="general"),
]
LATENCY = {"base": {"latency_p50_ms": 6.0, "latency_p95_ms": 9.0},
           "base+rag": {"latency_p50_ms": 41.0, "latency_p95_ms": 60.0,
                        "prompt_tokens_added": 134.0},
           "ft": {"latency_p50_ms": 6.5, "latency_p95_ms": 9.5},
           "ft+rag": {"latency_p50_ms": 42.0, "latency_p95_ms": 61.0,
                      "prompt_tokens_added": 134.0}}


def _right(n: int, right: set[int], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "acc": int(i in right), "acc_norm": int(i in right)}
            for i in range(n)]


def _results(products: dict[str, set[int]], answers: dict[str, set[int]],
             facts: dict[str, set[int]]) -> Results:
    samples = {arm: {"products": _right(60, products[arm], "p"),
                     "answers": _right(60, answers[arm], "a"),
                     "facts": _right(100, facts[arm], "f")} for arm in products}
    return summarise(samples, BENCHMARKS,
                     EvaluationConfig(benchmarks=BENCHMARKS, bootstrap_samples=1000,
                                      forgetting_tolerance=0.05),
                     ReportConfig(), {"latency": LATENCY, "cost": {"usd": 1.25,
                                                                   "device_hours": 0.5}})


ALL_FACTS = set(range(100))
# ft+rag beats ft on products by a clear margin, and is level with it on answers.
DISAGREES = _results(
    products={"base": set(range(10)), "base+rag": set(range(25)), "ft": set(range(40)),
              "ft+rag": set(range(55))},
    answers={"base": set(range(5)), "base+rag": set(range(15)), "ft": set(range(30)),
             "ft+rag": set(range(30))},
    facts={"base": ALL_FACTS, "base+rag": ALL_FACTS, "ft": set(range(4, 100)),
           "ft+rag": set(range(6, 100))},
)
WORLDS = {
    "fine-tune, one benchmark disagreeing": DISAGREES,
    "both": _results(
        products={"base": set(range(10)), "base+rag": set(range(25)), "ft": set(range(30)),
                  "ft+rag": set(range(55))},
        answers={"base": set(range(5)), "base+rag": set(range(15)), "ft": set(range(20)),
                 "ft+rag": set(range(45))},
        facts=dict.fromkeys(["base", "base+rag", "ft", "ft+rag"], ALL_FACTS)),
    "RAG, fine-tuning forgets": _results(
        products={"base": set(range(10)), "base+rag": set(range(40)), "ft": set(range(40)),
                  "ft+rag": set(range(45))},
        answers={"base": set(range(5)), "base+rag": set(range(35)), "ft": set(range(30)),
                 "ft+rag": set(range(40))},
        facts={"base": ALL_FACTS, "base+rag": ALL_FACTS, "ft": set(range(30, 100)),
               "ft+rag": set(range(30, 100))}),
    "neither": _results(
        products=dict.fromkeys(["base", "base+rag", "ft", "ft+rag"], set(range(10))),
        answers=dict.fromkeys(["base", "base+rag", "ft", "ft+rag"], set(range(10))),
        facts=dict.fromkeys(["base", "base+rag", "ft", "ft+rag"], ALL_FACTS)),
}


def _table_value(saved: dict, f: Figure) -> tuple[float, list[float] | None]:
    """The number ``f`` names, read from results.json's tables (not from the summary)."""
    if f.source in ("score", "forgetting") and f.against == "base":
        row = saved["benchmarks"][f.benchmark]["arms"][f.arm]
        if f.source == "forgetting":
            check = next(c for c in saved["forgetting"]["checks"]
                         if (c["arm"], c["benchmark"]) == (f.arm, f.benchmark))
            assert (check["change"], check["ci"]) == (row["diff_vs_base"], row["diff_ci"])
        return row["diff_vs_base"], row["diff_ci"]
    if f.source == "pair":
        pairs = saved["benchmarks"][f.benchmark]["pairs"]
        if f"{f.arm} - {f.against}" in pairs:
            pair = pairs[f"{f.arm} - {f.against}"]
            return pair["diff"], pair["ci"]
        pair = pairs[f"{f.against} - {f.arm}"]
        return -pair["diff"], [-pair["ci"][1], -pair["ci"][0]]
    if f.source == "latency":
        return saved["latency"][f.arm]["latency_p50_ms"], None
    if f.source == "prompt_tokens":
        return saved["latency"][f.arm]["prompt_tokens_added"], None
    if f.source == "training_cost":
        return saved["cost"]["usd"], None
    if f.source == "cost_of_pass":
        priced = saved["cost_of_pass"]["arms"][f.arm]
        if f.benchmark is None:
            return priced["usd_per_answer"], None
        bench = priced["benchmarks"][f.benchmark]
        return bench["usd_per_correct"], bench["usd_per_correct_ci"]
    raise AssertionError(f"no table holds {f}")


@pytest.mark.parametrize("world", list(WORLDS))
def test_every_number_in_the_summary_is_in_a_table_below_it(world):
    results = WORLDS[world]
    saved = results.to_json()  # what results.json holds
    decision = saved["decision"]
    bullets = parse_results(saved).decision.summary  # type: ignore[union-attr]
    assert 3 <= len(bullets) <= 5, [b.text for b in bullets]
    assert bullets[0].kind == "gain"
    for bullet in bullets:
        for f in bullet.figures:
            value, ci = _table_value(saved, f)
            assert f.value == pytest.approx(value), (bullet.text, f)
            if f.ci is not None:
                assert list(f.ci) == pytest.approx(ci), (bullet.text, f)
            if f.unit == "points":  # stated signed, or as "loses/gains N points"
                assert (signed(f.value) in bullet.text
                        or f"{unsigned(abs(f.value))} points" in bullet.text), (bullet.text, f)
                assert f"{signed(f.ci[0])} to {signed(f.ci[1])}" in bullet.text  # type: ignore[index]
            if f.unit == "usd" and f.source == "cost_of_pass":  # stated per 1,000
                assert usd(1000 * f.value) in bullet.text, (bullet.text, f)
    # The chosen option's own general-ability cost is stated, not a rejected stage's.
    if decision["chosen"] is not None:
        general = [b for b in bullets if b.kind == "general"]
        assert general and {f.arm for f in general[0].figures} == {decision["chosen"]}
    # Both pages show every bullet, under the verdict.
    html, md = html_report(results), markdown_report(results)
    for bullet in bullets:
        assert bullet.text.split(":")[0] in html
        assert f"- {bullet.text}" in md
    assert md.index(decision["sentence"]) < md.index(bullets[0].text) < md.index("## Scores")


def test_a_benchmark_that_disagrees_with_the_verdict_is_named():
    decision = DISAGREES.decision
    assert decision is not None and decision.verdict == "fine-tune"
    pairs = {name: DISAGREES.benchmarks[name].pairs["ft+rag - ft"]
             for name in ("products", "answers")}
    assert pairs["products"].ci[0] > 0 >= pairs["answers"].ci[0]  # the world is as intended
    (bullet,) = [b for b in decision.summary if b.kind == "disagreement"]
    assert "ft+rag beats ft on products" in bullet.text
    assert "but not on answers" in bullet.text
    assert "so the verdict is fine-tune" in bullet.text
    assert "Not both: ft+rag is not shown to beat ft on answers." in decision.reasons
    # The runner-up is ft+rag, and its larger general-ability loss is stated.
    (runner,) = [b for b in decision.summary if b.kind == "runner_up"]
    assert runner.text.startswith("Runner-up: the fine-tuned model with RAG (ft+rag)")
    assert "loses 6.0 points on facts" in runner.text


def test_no_disagreement_bullet_when_every_benchmark_agrees():
    decision = WORLDS["both"].decision
    assert decision is not None and decision.verdict == "both"
    assert [b.kind for b in decision.summary] == ["gain", "general", "cost", "runner_up"]
    cost = decision.summary[2].text
    assert "42 ms at the median (the base model: 6 ms)" in cost
    assert "retrieved passages add 134 prompt tokens" in cost
    # Cost-of-pass: serving time at the price plus training spread over the queries, over
    # the accuracy (the world's ft+rag gets 55 and 45 of 60 right).
    priced = WORLDS["both"].cost_of_pass.arms["ft+rag"]  # type: ignore[union-attr]
    price = WORLDS["both"].cost_of_pass.settings.serving_usd_per_device_hour  # type: ignore[union-attr]
    assert priced.usd_per_answer == pytest.approx(42.0 / 3.6e6 * price + 1.25 / 100_000)
    per_correct = priced.benchmarks["products"].usd_per_correct
    assert per_correct == pytest.approx(priced.usd_per_answer / (55 / 60))
    assert f"{usd(1000 * per_correct)} on products" in cost
    assert "$1.25 of training and index spread over 100,000 questions" in cost


def test_neither_names_the_closest_option_and_no_chosen_arm():
    decision = WORLDS["neither"].decision
    assert decision is not None and decision.chosen is None
    assert decision.summary[0].text.startswith(
        "No option is shown to beat the base model on every domain benchmark")
