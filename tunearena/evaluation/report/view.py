"""The typed results as the report shows them: every number formatted once, as strings in
tables and rows that the Markdown and the HTML renderer both lay out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.report import formats as fmt
from tunearena.evaluation.report.formats import NONE
from tunearena.evaluation.report.numbers import BETTER, WORSE
from tunearena.evaluation.report.stages_view import stages_view
from tunearena.evaluation.report.table import Table
from tunearena.evaluation.results import (
    Benchmark,
    Decision,
    Forgetting,
    LanguageBenchmark,
    Probe,
    Results,
)

METRIC_LABELS = {"acc": "accuracy", "acc_norm": "acc_norm", "exact_match": "exact match",
                 "f1": "token F1"}
_ARM_NAMES = {
    "base": "base model",
    "base+rag": "base model + RAG",
    "base+fewshot": "base model + few-shot examples",
    "ft": "fine-tuned",
    "ft+rag": "fine-tuned + RAG",
}
_CONTEXT_NAMES = {"rag": " + RAG", "fewshot": " + few-shot examples"}


@dataclass
class ReportView:
    """Everything both renderers print, formatted."""

    title: str
    ci: str
    decision: dict[str, Any] | None
    headline: list[str]
    benchmarks: list[dict[str, Any]]
    stages: dict[str, Any] | None
    forgetting: dict[str, Any] | None
    language: list[dict[str, Any]]
    sections: dict[str, list[Table]]
    """``training``, ``cost``, ``retrieval``, ``latency``, ``run`` and ``provenance`` (the run
    with the statistics' settings): present ones only."""
    history: list[dict[str, float]]
    latency_sentence: str | None
    cost_sentence: str | None
    prompt_sentence: str | None
    """How every arm was prompted (plain, or the chat template of which model)."""
    dropped_sentence: str | None = None
    """The questions left out of every arm for overflowing the context; None when none were."""
    review_sentence: str | None = None
    """How many questions the arms disagree on, and where they are listed
    (``report.review``); None when the arms agree everywhere."""


def build_view(results: Results) -> ReportView:
    """The view of ``results``; a section the results do not hold is None or empty."""
    from tunearena.evaluation.report.review import disagreements, review_sentence
    from tunearena.evaluation.report.sentences import (
        cost_sentence,
        dropped_prompts_sentence,
        latency_sentence,
        prompt_sentence,
    )

    conf = results.settings.confidence
    run = results.run
    stages = stages_view(results)
    selected = stages["selected"] if stages else None
    training = results.training.model_dump(mode="json", exclude_unset=True) \
        if results.training else {}
    history = training.pop("history", None) or []
    return ReportView(
        title="tunearena report" + (f": {run.name}" if run and run.name else ""),
        ci=f"{fmt.pct_label(conf)} CI",
        decision=_decision(results.decision),
        headline=results.headline,
        benchmarks=[_benchmark(name, b, selected) for name, b in results.benchmarks.items()],
        stages=stages,
        forgetting=_forgetting(results.forgetting),
        language=[_language(name, b) for name, b in results.language_modelling.items()],
        sections=_sections(results, training),
        history=history,
        latency_sentence=latency_sentence(results.latency),
        cost_sentence=cost_sentence(results.cost),
        prompt_sentence=prompt_sentence(run),
        dropped_sentence=dropped_prompts_sentence(results.prompt_lengths),
        review_sentence=review_sentence(disagreements(results), results),
    )


def arm_label(arm: str, selected: str | None) -> str:
    """``ft`` and ``ft+rag`` name the stage they are when stages ran."""
    parsed = Arm.parse(arm)
    if selected and parsed.model == "ft" and parsed.stage is None:
        return f"{arm} (= {parsed.at_stage(selected)})"
    return arm


def arm_name(arm: str) -> str:
    """``ft@qa+rag`` -> ``stage qa + RAG``; the fixed arms by their plain names."""
    parsed = Arm.parse(arm)
    if parsed.stage is not None:
        return f"stage {parsed.stage}" + _CONTEXT_NAMES.get(parsed.context, "")
    return _ARM_NAMES.get(arm, arm)


def tone(verdict: str) -> str:
    """A verdict as good, bad or neutral (a CSS class)."""
    if verdict == BETTER or verdict.startswith("better than"):
        return "good"
    if verdict == WORSE or verdict.startswith("worse than"):
        return "bad"
    return "neutral"


def _decision(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    evidence = [
        {"comparison": e.comparison, "benchmark": e.benchmark, "diff": fmt.signed(e.diff),
         "ci": fmt.signed_ci(e.ci), "position": e.position, "decisive": e.decisive}
        for e in decision.evidence
    ]
    return {**decision.model_dump(), "evidence": evidence}


def _benchmark(name: str, bench: Benchmark, selected: str | None) -> dict[str, Any]:
    rows = [
        {
            "arm": arm_label(arm, selected),
            "name": arm_name(arm),
            "score": fmt.percent(row.score),
            "score_ci": fmt.percent_ci(row.score_ci),
            "secondary": fmt.percent(row.secondary),
            "diff": NONE if row.diff_vs_base is None else fmt.signed(row.diff_vs_base),
            "diff_ci": NONE if row.diff_ci is None else fmt.signed_ci(row.diff_ci),
            "verdict": row.verdict,
            "tone": tone(row.verdict),
        }
        for arm, row in bench.arms.items()
    ]
    pairs = [
        {"comparison": comparison, "diff": fmt.signed(pair.diff), "ci": fmt.signed_ci(pair.ci),
         "verdict": pair.verdict, "tone": tone(pair.verdict)}
        for comparison, pair in bench.pairs.items()
    ]
    primary, secondary = bench.metrics
    return {"name": name, "kind": bench.kind, "n": bench.n, "track": bench.track,
            "n_clusters": bench.n_clusters if bench.clustered_by else None,
            "primary": primary, "secondary": secondary,
            "metric": METRIC_LABELS.get(primary, primary), "rows": rows, "pairs": pairs}


def _language(name: str, bench: LanguageBenchmark) -> dict[str, Any]:
    rows = [
        {
            "arm": arm,
            "value": f"{row.bits_per_byte:.4f}",
            "ci": "{:.4f} to {:.4f}".format(*row.ci),
            "diff": NONE if row.diff_vs_base is None else f"{row.diff_vs_base:+.4f}",
            "diff_ci": NONE if row.diff_ci is None else "{:+.4f} to {:+.4f}".format(*row.diff_ci),
            "verdict": row.verdict,
            "tone": tone(row.verdict),
        }
        for arm, row in bench.arms.items()
    ]
    return {"name": name, "kind": bench.kind, "n": bench.n, "rows": rows}


def _forgetting(forgetting: Forgetting | None) -> dict[str, Any] | None:
    if forgetting is None:
        return None
    checks = [
        {**c.model_dump(), "change_points": fmt.signed(c.change), "ci_points": fmt.signed_ci(c.ci),
         "tone": {"forgetting": "bad", "none": "good"}.get(c.status, "neutral")}
        for c in forgetting.checks
    ]
    return {"summary": forgetting.summary, "tolerance": fmt.points(forgetting.tolerance),
            "checks": checks}


def _sections(results: Results, training: dict[str, Any]) -> dict[str, list[Table]]:
    """The sections other steps filled, as generic tables (new keys show up unasked)."""
    def dumped(section: Any) -> Any:
        if isinstance(section, dict):
            return {k: dumped(v) for k, v in section.items()}
        if hasattr(section, "model_dump"):
            return section.model_dump(mode="json", exclude_unset=True)
        return section

    run = dumped(results.run) if results.run else {}
    settings = results.settings.model_dump(mode="json", exclude_unset=True)
    if results.probe is not None:
        training = {**training, "probe": probe_sentence(results.probe)}
    values = {
        "training": training,
        "cost": dumped(results.cost) if results.cost else None,
        "retrieval": dumped(results.retrieval) if results.retrieval else None,
        "latency": dumped(results.latency) if results.latency else None,
        "run": run,
        "provenance": {**run, **{f"settings.{k}": v for k, v in settings.items()}},
    }
    return {key: tables(value) for key, value in values.items() if value}


def probe_sentence(probe: Probe) -> str:
    """What the probe found, in one sentence."""
    changes = ", ".join(f"{stage} {change:.3g}" for stage, change in probe.changes.items())
    return (f"every fine-tuned stage answers differently from the base on {probe.prompts} "
            f"probe prompts (largest next-token log-probability change: {changes})")


def tables(value: Any) -> list[Table]:
    """Any JSON value as tables.

    A dict's plain values form one key/value table; its dict values that share field names
    (per-benchmark or per-arm numbers) form one table with a row each, the others a
    key/value table each; a list of dicts is a table.
    """
    if _is_records(value):
        return [_row_table(None, {str(i + 1): v for i, v in enumerate(value)}, index="#")]
    if not isinstance(value, dict):
        return [Table([], [[fmt.value(value)]])]
    out: list[Table] = []
    plain = {k: v for k, v in value.items() if not _is_record(v) and not _is_records(v)}
    if plain:
        out.append(Table([], [[fmt.label(k), fmt.value(v, k)] for k, v in plain.items()]))
    groups: list[dict[str, dict]] = []
    for key, record in ((k, v) for k, v in value.items() if _is_record(v)):
        group = next((g for g in groups if any(record.keys() & r.keys() for r in g.values())), None)
        if group is None:
            groups.append({key: record})
        else:
            group[key] = record
    for group in groups:
        if len(group) == 1:
            ((key, record),) = group.items()
            if all(_is_record(v) for v in record.values()):  # e.g. cost per stage
                out.append(_row_table(fmt.label(key), record, index=""))
                continue
            rows = [[fmt.label(k), fmt.value(v, k)] for k, v in record.items()]
            out.append(Table([], rows, title=fmt.label(key)))
        else:
            out.append(_row_table(None, group, index=""))
    for key, records in ((k, v) for k, v in value.items() if _is_records(v)):
        out.append(_row_table(fmt.label(key), {str(i + 1): r for i, r in enumerate(records)}, "#"))
    return out


def _row_table(title: str | None, records: dict[str, dict], index: str) -> Table:
    columns = list(dict.fromkeys(k for r in records.values() for k in r))
    rows = [[name, *(fmt.value(r.get(c), c) for c in columns)] for name, r in records.items()]
    return Table([index, *map(fmt.label, columns)], rows, title=title)


def _is_record(v: Any) -> bool:
    return isinstance(v, dict) and bool(v)


def _is_records(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
