"""The order arms are scored in, the stage the plain ft arms get, and an arm's latency record:
plain functions over scores, tested without Ray (the scoring itself is the test's)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.arms import ArmJob, ArmScores, arm_latency
from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig
from tunearena.evaluation.order import ScoreOrder

BENCHMARKS = [BenchmarkConfig(name="domain_qa", path=Path("d.jsonl"), kind="domain"),
              BenchmarkConfig(name="general_qa", path=Path("g.jsonl"), kind="general")]
# Stage s2 gains most on the domain but forgets beyond the tolerance; s1 is chosen.
ACC = {"base": (0.2, 0.9), "ft@s1": (0.6, 0.88), "ft@s2": (0.9, 0.5)}


def _rows(acc: float) -> list[dict]:
    return [{"id": f"q{i}", "acc": int(i < acc * 10), "acc_norm": 0} for i in range(10)]


def _order(arm_names: list[str], select: bool, probed: bool = False) -> ScoreOrder:
    evaluation = EvaluationConfig(benchmarks=BENCHMARKS, forgetting_tolerance=0.05)
    return ScoreOrder([Arm.parse(a) for a in arm_names], ["s1", "s2"], select, evaluation,
                      Console(quiet=True), probed=probed)


def _score(order: ScoreOrder, ready: list[tuple[Arm, str | None]], fail: str = "") -> None:
    for arm, selected in ready:
        if str(arm) == fail:
            continue  # failed: never added
        domain, general = ACC[str(arm.at_stage(selected) if selected else arm).split("+")[0]]
        order.add(arm, {"domain_qa": _rows(domain), "general_qa": _rows(general)},
                  {"model": str(arm.at_stage(selected)) if selected else str(arm)})


def _run(order: ScoreOrder, fail: str = "") -> tuple[ArmScores, list[list[str]]]:
    """Score every arm ``ready()`` hands out, a batch at a time, until none is left."""
    batches = []
    while ready := order.ready():
        batches.append([str(a) for a, _ in ready])
        _score(order, ready, fail)
    return order.result(), batches


def test_ft_arms_go_last_and_share_their_stage_arms_scores():
    scores, batches = _run(_order(["base", "ft@s1", "ft@s2", "ft", "ft+rag"], select=True))
    assert batches == [["base", "ft@s1", "ft@s2"], ["ft+rag"]]
    order = _order(["base", "ft@s1", "ft@s2", "ft", "ft+rag", "base+rag"], select=True)
    # The arms on the way to the plain ft arms go ahead of those that can run at any time.
    assert [str(a) for a in order.arms if order.first(a)] == ["base", "ft@s1", "ft@s2", "ft",
                                                               "ft+rag"]
    assert scores.selection is not None and scores.selection["selected"] == "s1"
    # ft is ft@s1's model: its scores, not a second scoring.
    assert scores.samples["ft"] is scores.samples["ft@s1"]
    assert scores.latency["ft+rag"] == {"model": "ft@s1+rag"}
    assert list(scores.samples) == ["base", "ft@s1", "ft@s2", "ft", "ft+rag"]


def test_the_base_arms_go_beside_the_probe_and_the_stages_arms_after_it():
    order = _order(["ft+rag", "ft@s1", "base+rag", "ft@s2", "base"], select=True, probed=True)
    ready = order.ready()
    assert [str(a) for a, _ in ready] == ["base+rag", "base"]
    _score(order, ready)
    assert order.ready() == []  # nothing on a stage's model before the probe passes
    order.pass_probe()
    scores, batches = _run(order)
    assert batches == [["ft@s1", "ft@s2"], ["ft+rag"]]
    # Listed order, whatever order they finished in.
    assert list(scores.samples) == ["ft+rag", "ft@s1", "base+rag", "ft@s2", "base"]


def test_a_failed_stage_arm_holds_back_the_arms_its_choice_decides():
    order = _order(["base", "ft@s1", "ft@s2", "ft+rag"], select=True)
    scores, batches = _run(order, fail="ft@s2")
    assert batches == [["base", "ft@s1", "ft@s2"]]
    assert scores.selection is None
    assert list(scores.samples) == ["base", "ft@s1"]  # ft+rag never handed out


def test_without_selection_ft_is_the_last_stage():
    scores, batches = _run(_order(["base", "ft"], select=False))
    assert batches == [["base", "ft"]]  # the last stage's model exists: no need to wait
    assert scores.selection is None and scores.latency["ft"] == {"model": "ft@s2"}
    # Listed under its own name, the last stage's arm is scored once and ft shares it.
    scores, batches = _run(_order(["ft", "ft@s2", "base"], select=False))
    assert batches == [["ft@s2", "base"]]
    assert scores.samples["ft"] is scores.samples["ft@s2"]


def test_arm_latency_adds_retrieval_to_a_rag_arm_and_compares_prompt_lengths():
    job = ArmJob(Arm.parse("base+rag"), "/m", {"qa": "qa_rag"})
    result = {"samples": {"qa": [{}] * 4}, "score_s": 2.0, "answer_ms": {"qa": [10.0, 30.0]}}
    out = arm_latency(job, result, {"qa": [1.0, 3.0, 99.0]}, {"qa": {"": 20.0, "rag": 80.0}})
    assert out["ms_per_question_scored"] == 500.0 and out["questions_timed"] == 2
    assert out["retrieval_p50_ms"] == 2.0
    assert out["latency_p50_ms"] == 22.0  # (11 + 33) / 2
    assert out["prompt_tokens"] == 80.0 and out["prompt_tokens_added"] == 60.0
    plain = arm_latency(ArmJob(Arm.parse("base"), "/m", {"qa": "qa"}), result, {},
                        {"qa": {"": 20.0, "rag": 80.0}})
    assert plain["latency_p50_ms"] == 20.0 and "prompt_tokens_added" not in plain
