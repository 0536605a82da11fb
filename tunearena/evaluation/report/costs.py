"""Cost-of-pass: the expected dollars per correct answer of each arm on each domain benchmark.

Erol et al. 2025 (arXiv 2504.13359) define it as the cost of one attempt over the chance that
an attempt is right: ``usd_per_answer / accuracy``, infinite when no answer is right. Here one
attempt costs its serving (the arm's measured answer time at the serving price) plus its
share of the one-off costs the arm needs, spread over ``report.queries`` answers: training
its model (its stage and every stage it started from) and, for a RAG arm, building the index.
"""

from __future__ import annotations

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.config import ReportConfig
from tunearena.evaluation.results import (
    ArmCostOfPass,
    ArmLatency,
    BenchmarkCostOfPass,
    BenchmarkRetrieval,
    CostOfPass,
    CostOfPassSettings,
    Interval,
    Results,
)

_MS_PER_HOUR = 3_600_000


def cost_of_pass(results: Results, report_cfg: ReportConfig) -> CostOfPass | None:
    """Cost-of-pass per arm and domain benchmark; None when no arm was timed (a run without
    latency) or no domain benchmark was scored.

    An arm is left out when its answers were not timed, or when it is a fine-tuned arm whose
    training cost the results do not hold (``cost``)."""
    domain = [name for name, b in results.benchmarks.items() if b.kind == "domain"]
    if not results.latency or not domain:
        return None
    serving_price = report_cfg.serving_hour_cost_usd
    if serving_price is None:
        serving_price = report_cfg.gpu_hour_cost_usd
    index_usd = _index_usd(results, report_cfg.gpu_hour_cost_usd)
    settings = CostOfPassSettings(
        queries=report_cfg.queries, serving_usd_per_device_hour=serving_price,
        index_usd_per_device_hour=report_cfg.gpu_hour_cost_usd, index_usd=index_usd)
    arms = {}
    for arm in results.arms:
        serving = _serving_ms(results.latency.get(arm))
        training = training_cost(arm, results)
        if serving is None or training is None:
            continue
        serving_ms, timed_by = serving
        stages, training_usd = training
        arm_index_usd = (index_usd or 0.0) if Arm.parse(arm).context == "rag" else 0.0
        serving_usd = serving_ms / _MS_PER_HOUR * serving_price
        per_answer = serving_usd + (training_usd + arm_index_usd) / report_cfg.queries
        arms[arm] = ArmCostOfPass(
            trained_stages=stages, training_usd=training_usd, index_usd=arm_index_usd,
            serving_ms=serving_ms, serving_time_from=timed_by,
            serving_usd_per_answer=serving_usd, usd_per_answer=per_answer,
            prompt_tokens_added=results.latency[arm].prompt_tokens_added,
            benchmarks={name: _per_correct(per_answer, results.benchmarks[name].arms[arm].score,
                                           results.benchmarks[name].arms[arm].score_ci)
                        for name in domain if arm in results.benchmarks[name].arms})
    if not arms:
        return None
    return CostOfPass(settings=settings, arms=arms)


def training_cost(arm: str, results: Results) -> tuple[list[str], float] | None:
    """``(stages, usd)``: the training an arm's model carries, its own stage and those it
    started from (``[]`` and 0 for the base model); None for a fine-tuned arm when the
    results hold no training cost."""
    parsed = Arm.parse(arm)
    if parsed.model == "base":
        return [], 0.0
    cost = results.cost
    if cost is None or cost.usd is None:
        return None
    stage = parsed.stage or results.selected_stage
    if not cost.per_stage:
        # One trained model: the ft arms carry all of it.
        trained = results.training.stage if results.training else stage
        return ([trained] if trained else []), cost.usd
    if stage is None and results.training is not None:
        stage = results.training.stage
    lineage = _lineage(stage, results)
    if not lineage or any(s not in cost.per_stage for s in lineage):
        return None
    return lineage, sum(cost.per_stage[s].usd for s in lineage)


def _lineage(stage: str | None, results: Results) -> list[str]:
    """``stage`` and the stages it started from, oldest first."""
    records = results.stages.stages if results.stages else {}
    chain: list[str] = []
    while stage and stage != "base" and stage not in chain:
        chain.insert(0, stage)
        record = records.get(stage)
        start = record.start_from if record else None
        stage = start.removeprefix("ft@") if start else None
    return chain


def _serving_ms(latency: ArmLatency | None) -> tuple[float, str] | None:
    """One answer's time: the median of questions answered alone (as a deployment serves
    them), else the scoring wall time per question; None when neither was measured."""
    if latency is None:
        return None
    if latency.latency_p50_ms is not None:
        return latency.latency_p50_ms, "latency_p50_ms"
    if latency.ms_per_question_scored is not None:
        return latency.ms_per_question_scored, "ms_per_question_scored"
    return None


def _index_usd(results: Results, usd_per_device_hour: float) -> float | None:
    """The RAG index's build (its wall time, on one device) at ``usd_per_device_hour``; None
    when the results hold no build time."""
    index = (results.retrieval or {}).get("index")
    build_s = index.model_extra.get("build_s") if isinstance(index, BenchmarkRetrieval) \
        and index.model_extra else None
    if not isinstance(build_s, int | float):
        return None
    return build_s / 3600 * usd_per_device_hour


def _per_correct(per_answer: float, accuracy: float, ci: Interval) -> BenchmarkCostOfPass:
    """``per_answer / accuracy``, and over the accuracy's interval (a decreasing function of
    it, so the interval's ends swap)."""
    lo, hi = ci
    return BenchmarkCostOfPass(
        accuracy=accuracy, accuracy_ci=ci,
        usd_per_correct=per_answer / accuracy if accuracy > 0 else None,
        usd_per_correct_ci=(per_answer / hi, per_answer / lo if lo > 0 else None)
        if hi > 0 else None)
