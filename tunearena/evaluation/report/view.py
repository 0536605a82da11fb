"""The typed results as the report shows them: every number formatted once, as strings in
tables and rows that the Markdown and the HTML renderer both lay out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.report import formats as fmt
from tunearena.evaluation.report.formats import NONE
from tunearena.evaluation.report.numbers import BETTER, WORSE, is_untrusted
from tunearena.evaluation.report.stages_view import stages_view
from tunearena.evaluation.report.table import Table
from tunearena.evaluation.results import (
    Benchmark,
    CostOfPass,
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
    cost_of_pass: dict[str, Any] | None = None
    """Dollars per correct answer per arm and domain benchmark (``cost_of_pass_view``); None
    when the results hold none."""
    warnings: list[dict[str, Any]] = field(default_factory=list)
    """Every benchmark's statistics warnings (``statistics_warnings_view``)."""
    review_sentence: str | None = None
    """How many questions the arms disagree on, and where they are listed
    (``report.review``); None when the arms agree everywhere."""
    data: dict[str, Any] | None = None
    """What synthesis made of the documents (``report.data.data_view``); None without it."""


def build_view(results: Results) -> ReportView:
    """The view of ``results``; a section the results do not hold is None or empty."""
    from tunearena.evaluation.report.data import data_view
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
        decision=_decision(results.decision, results),
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
        cost_of_pass=cost_of_pass_view(results.cost_of_pass, conf, selected),
        warnings=statistics_warnings_view(results),
        review_sentence=review_sentence(disagreements(results), results),
        data=data_view(results.data),
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
    """A verdict as good, bad or neutral (a CSS class); neutral when it rests on too few
    documents to trust."""
    if is_untrusted(verdict):
        return "neutral"
    if verdict == BETTER or verdict.startswith("better than"):
        return "good"
    if verdict == WORSE or verdict.startswith("worse than"):
        return "bad"
    return "neutral"


def _decision(decision: Decision | None, results: Results) -> dict[str, Any] | None:
    """The decision as printed; results written before the summary existed get it here."""
    from tunearena.evaluation.report.summary import summary_bullets

    if decision is None:
        return None
    if not decision.summary:
        decision = decision.model_copy(update={"summary": summary_bullets(results, decision)})
    if not decision.reasons:
        decision = decision.model_copy(update={"reasons": [decision.rule]})
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
            "metric": METRIC_LABELS.get(primary, primary), "rows": rows, "pairs": pairs,
            "warnings": [w.message for w in bench.warnings],
            "same_questions_as": bench.same_questions_as}


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
    return {"name": name, "kind": bench.kind, "n": bench.n, "rows": rows,
            "warnings": [w.message for w in bench.warnings]}


def statistics_warnings_view(results: Results) -> list[dict[str, Any]]:
    """Every benchmark's warnings, in benchmark order: ``benchmark``, ``kind``
    (``few_documents`` or ``wide_interval``), ``arms`` (those too wide to decide, joined) and
    ``message``."""
    benches: dict[str, Benchmark | LanguageBenchmark] = {**results.benchmarks,
                                                        **results.language_modelling}
    return [{"benchmark": name, "kind": w.kind, "arms": ", ".join(w.arms), "message": w.message}
            for name, bench in benches.items() for w in bench.warnings]


def cost_of_pass_view(cost: CostOfPass | None, conf: float,
                      selected: str | None = None) -> dict[str, Any] | None:
    """Cost-of-pass as the report prints it: ``sentence`` (what a figure is made of, at
    which prices and volume), ``rows`` (a dict per arm and domain benchmark: ``arm``,
    ``name``, ``benchmark``, ``accuracy``, ``usd_per_answer``, ``usd_per_correct`` (``no
    correct answers`` when the accuracy is 0), ``usd_per_correct_ci``, the same three per
    1,000 answers (``usd_per_1000_answers``, ``usd_per_1000_correct``,
    ``usd_per_1000_correct_ci``), ``serving_ms``, ``training_usd``, ``index_usd``,
    ``trained_stages``, ``prompt_tokens_added``) and ``table``, those rows as one table (per
    1,000 answers, which reads better than fractions of a cent); None when ``cost`` is
    None."""
    if cost is None:
        return None
    s = cost.settings
    rows = []
    for arm, a in cost.arms.items():
        for name, b in a.benchmarks.items():
            ci = ci1000 = NONE
            if b.usd_per_correct_ci is not None:
                lo, hi = b.usd_per_correct_ci
                ci = f"{fmt.usd(lo)} to {fmt.usd(hi) if hi is not None else 'no upper bound'}"
                ci1000 = (f"{fmt.usd(1000 * lo)} to "
                          f"{fmt.usd(1000 * hi) if hi is not None else 'no upper bound'}")
            rows.append({
                "arm": arm_label(arm, selected), "name": arm_name(arm), "benchmark": name,
                "accuracy": fmt.percent(b.accuracy),
                "usd_per_answer": fmt.usd(a.usd_per_answer),
                "usd_per_correct": "no correct answers" if b.usd_per_correct is None
                else fmt.usd(b.usd_per_correct),
                "usd_per_correct_ci": ci,
                "usd_per_1000_answers": fmt.usd(1000 * a.usd_per_answer),
                "usd_per_1000_correct": "no correct answers" if b.usd_per_correct is None
                else fmt.usd(1000 * b.usd_per_correct),
                "usd_per_1000_correct_ci": ci1000,
                "serving_ms": f"{a.serving_ms:,.0f}",
                "training_usd": fmt.usd(a.training_usd),
                "index_usd": fmt.usd(a.index_usd),
                "trained_stages": ", ".join(a.trained_stages) or NONE,
                "prompt_tokens_added": fmt.number(a.prompt_tokens_added, ",.0f"),
            })
    one_off = "training (the stages the arm's model carries)"
    if s.index_usd is not None:
        one_off += f" and, for RAG arms, the index build ({fmt.usd(s.index_usd)})"
    timed = "its median time answering one question alone"
    if any(a.serving_time_from == "ms_per_question_scored" for a in cost.arms.values()):
        timed += " (for an arm not timed so, its scoring time per question)"
    sentence = (f"Cost per correct answer (cost-of-pass): what one answer costs, divided by the "
                f"accuracy. One answer costs {timed} at {fmt.usd(s.serving_usd_per_device_hour)} "
                f"per device-hour, plus {one_off} spread over {s.queries:,} answers.")
    table = Table(["arm", "benchmark", "accuracy", "$ per 1,000 answers",
                   "$ per 1,000 correct answers", f"{fmt.pct_label(conf)} CI", "answer (ms)",
                   "training $", "prompt tokens added"],
                  [[r["arm"], r["benchmark"], r["accuracy"], r["usd_per_1000_answers"],
                    r["usd_per_1000_correct"], r["usd_per_1000_correct_ci"], r["serving_ms"],
                    r["training_usd"], r["prompt_tokens_added"]] for r in rows],
                  title="Cost per correct answer",
                  numeric=[False, False, True, True, True, True, True, True, True])
    return {"sentence": sentence, "rows": rows, "table": table}


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
        "latency": _short_models(dumped(results.latency)) if results.latency else None,
        "run": run,
        "provenance": {**run, **{f"settings.{k}": v for k, v in settings.items()}},
    }
    return {key: tables(value) for key, value in values.items() if value}


def _short_models(latency: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each arm's model path as its last two parts (``.../models/qa``): the arm already says
    which model it is, and the full path is in the provenance; a long path would crowd the
    table's numbers off a narrow page."""
    def short(path: Any) -> Any:
        parts = Path(path).parts if isinstance(path, str) else ()
        return str(Path("…", *parts[-2:])) if len(parts) > 2 and len(path) > 30 else path

    return {arm: {**row, "model": short(row["model"])} if "model" in row else row
            for arm, row in latency.items()}


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
