"""The report's plain sentences: the headline, forgetting, language modelling, latency and
cost, each worded once from the typed results."""

from __future__ import annotations

from pathlib import Path

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.report.formats import pct_label, percent, points, signed, unsigned
from tunearena.evaluation.report.numbers import BETTER, NO_EVIDENCE, WORSE, plain_verdict
from tunearena.evaluation.results import (
    ArmLatency,
    Benchmark,
    Cost,
    ForgettingCheck,
    LanguageBenchmark,
    PromptLengths,
    RunInfo,
    Stages,
)

_ARM_LABELS = {"base+rag": "RAG", "base+fewshot": "Few-shot prompting", "ft": "Fine-tuning",
               "ft+rag": "Fine-tuning plus RAG"}
_DOES = {BETTER: "helps", WORSE: "hurts", NO_EVIDENCE: "makes no clear difference"}


def _untrusted(verdict: str) -> str:
    """A verdict's ``(too few documents to trust)`` qualifier, or nothing."""
    return verdict[len(plain_verdict(verdict)):]


def forgetting_sentence(arm: str, name: str, change: float, lo: float, hi: float, status: str,
                        tol: float, conf: float) -> str:
    if change < 0:
        moved = f"lost {unsigned(abs(change))} points"
    elif change > 0:
        moved = f"gained {unsigned(change)} points"
    else:
        moved = "kept the same score"
    ci = f"{pct_label(conf)} CI {unsigned(lo)} to {unsigned(hi)}"
    judgement = {
        "forgetting": f"forgetting beyond the {points(tol)} tolerance",
        "none": f"within the {points(tol)} tolerance",
        "inconclusive": f"cannot rule out forgetting beyond the {points(tol)} tolerance",
    }[status]
    return f"{arm} {moved} on {name} ({ci}): {judgement}"


def forgetting_summary(checks: list[ForgettingCheck], n_general: int, n_arms: int,
                       tolerance: float) -> str:
    if not n_general:
        return "No general benchmark was scored, so forgetting was not measured."
    if n_arms == 1:
        return "Only the base arm was scored, so there is nothing to compare for forgetting."
    lost = sorted({f"{c.arm} on {c.benchmark}" for c in checks if c.status == "forgetting"})
    if lost:
        return f"Forgetting beyond the {points(tolerance)} tolerance: {', '.join(lost)}."
    if any(c.status == "inconclusive" for c in checks):
        return (f"No clear forgetting, but some intervals reach past the {points(tolerance)} "
                "tolerance; more general questions would settle it.")
    return f"No forgetting beyond the {points(tolerance)} tolerance on any general benchmark."


def headline(benchmarks: dict[str, Benchmark], arms: list[str], forgetting: str, conf: float,
             stages: Stages | None) -> list[str]:
    """What each option does on each domain benchmark, in the order a team asks."""
    sentences = []
    # Each stage's own arm is in the Stages section; the headline keeps to the options.
    main = [a for a in arms if Arm.parse(a).stage is None]
    if stages is not None:
        order = stages.order
        selected = stages.selection.selected if stages.selection else None
        sentence = f"Fine-tuning ran in {len(order)} stage{'s' if len(order) != 1 else ''}"
        sentence += f" ({', then '.join(order)})" if order else ""
        sentence += f"; ft is the model after stage {selected}." if selected else "."
        sentences.append(sentence)
    domain = [name for name, b in benchmarks.items() if b.kind == "domain"]
    for name in domain:
        rows = benchmarks[name].arms
        for arm in main[1:]:
            row = rows[arm]
            assert row.diff_vs_base is not None and row.diff_ci is not None  # not base
            lo, hi = row.diff_ci
            sentences.append(
                f"{_ARM_LABELS.get(arm, arm)} {_DOES[plain_verdict(row.verdict)]} on {name}"
                f"{_untrusted(row.verdict)}: "
                f"{arm} {percent(row.score)} vs base {percent(rows['base'].score)} "
                f"({signed(row.diff_vs_base)} points, {pct_label(conf)} CI "
                f"{signed(lo)} to {signed(hi)})."
            )
        pair = benchmarks[name].pairs.get("ft - base+fewshot")
        if pair is not None:
            # The first question a team asks: would prompting alone have done?
            lo, hi = pair.ci
            outcome = {"better than base+fewshot": "fine-tuning does better",
                       "worse than base+fewshot": "prompting alone does better"}.get(
                plain_verdict(pair.verdict), "there is no evidence of a difference")
            outcome += _untrusted(pair.verdict)
            sentences.append(
                f"Fine-tuning against few-shot prompting on {name}: {outcome} "
                f"(ft minus base+fewshot {signed(pair.diff)} points, {pct_label(conf)} CI "
                f"{signed(lo)} to {signed(hi)})."
            )
        best = max(main + [a for a in arms if a not in main], key=lambda a: rows[a].score)
        if len(arms) > 1:
            sentences.append(f"Highest score on {name}: {best} ({percent(rows[best].score)}).")
    if not domain:
        sentences.append("No domain benchmark was scored.")
    sentences.append(forgetting)
    return sentences


def language_headline(language: dict[str, LanguageBenchmark], conf: float) -> list[str]:
    sentences = []
    for name, bench in language.items():
        ft = bench.arms.get("ft")
        if ft is None or ft.diff_ci is None or ft.diff_vs_base is None:
            continue
        lo, hi = ft.diff_ci
        sentences.append(
            f"Language modelling on {name}: ft {ft.bits_per_byte:.3f} bits per byte vs base "
            f"{bench.arms['base'].bits_per_byte:.3f} ({ft.diff_vs_base:+.3f}, "
            f"{pct_label(conf)} CI {lo:+.3f} to {hi:+.3f}; fewer is better): {ft.verdict}."
        )
    return sentences


def latency_sentence(latency: dict[str, ArmLatency] | None) -> str | None:
    """One question's answer time at the median per arm, and the prompt tokens retrieval
    and examples add; None when no arm was timed."""
    timed = {arm: row for arm, row in (latency or {}).items() if row.latency_p50_ms is not None}
    if not latency or not timed:
        return None
    parts = [f"{arm} {row.latency_p50_ms:.0f} ms (p95 {row.latency_p95_ms:.0f})"
             for arm, row in timed.items()]
    sentence = ("Answering one question, at the median: " + ", ".join(parts)
                + "; retrieval's search is included for RAG arms.")
    added = {Arm.parse(arm).context: row.prompt_tokens_added for arm, row in latency.items()
             if row.prompt_tokens_added is not None}
    said = {"rag": "retrieved passages add", "fewshot": "few-shot examples add"}
    extras = [f"{said[c]} {n:.0f} prompt tokens per question" for c, n in added.items()
              if c in said]
    if extras:
        sentence += " " + "; ".join(extras).capitalize() + "."
    return sentence


def prompt_sentence(run: RunInfo | None) -> str | None:
    """How every arm was prompted, in one line; None when the results hold no run."""
    if run is None:
        return None
    if run.prompt_format == "plain":
        return ("Prompts: plain text (any examples or retrieved passages, then "
                "\"Question: ...\" and \"Answer:\"), the same for every arm; no chat template.")
    source = run.base_model_source
    model = Path(source.source).name if source else run.base_model or "the base model"
    return (f"Prompts: the chat template of {model}, the same for every arm: each question, "
            "with its examples or retrieved passages, is one user message, and the answer "
            "follows the assistant's header.")


def cost_sentence(cost: Cost | None) -> str | None:
    if cost is None or cost.device_hours is None or cost.usd is None:
        return None
    rate = cost.usd_per_device_hour
    at = f" at ${rate:g} per hour" if rate is not None else ""
    device = cost.device or "device"
    sentence = f"Fine-tuning used {cost.device_hours:.3g} {device}-hours, about ${cost.usd:.2f}{at}"
    e = cost.estimate
    if e is None or not e.device_hours:
        return sentence + "."
    return (f"{sentence}; it was estimated at {e.device_hours:.3g} {device}-hours (${e.usd:.2f}) "
            f"before launch, so it took {cost.device_hours / e.device_hours:.2f} times the "
            "estimate (start-up, validation and export are not in the estimate).")


def dropped_prompts_sentence(lengths: PromptLengths | None) -> str | None:
    """How many questions left every arm because a prompt overflowed the model's context;
    None when none did."""
    if lengths is None or not lengths.dropped_questions:
        return None
    per = ", ".join(f"{d.questions} of {name} (in {', '.join(d.arms)}; the longest "
                    f"{d.longest_tokens} tokens)" for name, d in lengths.dropped.items())
    return (f"{lengths.dropped_questions} questions were left out of every arm because a "
            f"prompt of theirs is longer than the model's {lengths.max_length}-token context: "
            f"{per}.")
