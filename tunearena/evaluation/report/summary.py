"""The report's first screen: three to five bullets under the verdict, each stating numbers
that a table below it holds.

Every bullet is built from the typed results and carries its numbers as ``Figure`` records
(the table, the row, the value and its interval), so what the summary says can be checked
against the tables it summarises. The bullets, in order:

- **gain**: what the chosen arm gains on each domain benchmark against the base model (for
  *neither*, the best option and why it is not enough);
- **general**: what it costs in general ability, per general benchmark, against the
  forgetting tolerance;
- **cost**: what one answer costs in time (and money, where the run priced it), and the
  prompt tokens retrieval adds;
- **runner_up**: the next-best option against the chosen one;
- **disagreement**: a comparison the rule read that holds on some domain benchmarks and not
  on others; the rule needs every one, so the summary names the benchmark that decided it.
"""

from __future__ import annotations

from statistics import mean

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.report.formats import (
    pct_label,
    percent,
    points,
    signed,
    unsigned,
    usd,
)
from tunearena.evaluation.results import Decision, Figure, Results, SummaryBullet

OPTIONS = ("ft+rag", "ft", "base+rag")
"""The options a verdict can put forward, in the rule's order."""

_NAMES = {
    "base": "the base model",
    "base+rag": "the base model with RAG",
    "base+fewshot": "the base model with few-shot examples",
    "ft": "the fine-tuned model",
    "ft+rag": "the fine-tuned model with RAG",
}


def plain_name(arm: str) -> str:
    """``ft+rag`` -> ``the fine-tuned model with RAG (ft+rag)``; ``ft@qa+rag`` -> ``the model
    of stage qa with RAG (ft@qa+rag)``."""
    parsed = Arm.parse(arm)
    if parsed.stage is not None:
        with_context = {"rag": " with RAG", "fewshot": " with few-shot examples"}
        return f"the model of stage {parsed.stage}{with_context.get(parsed.context, '')} ({arm})"
    return f"{_NAMES.get(arm, arm)} ({arm})"


def summary_bullets(results: Results, decision: Decision) -> list[SummaryBullet]:
    """The first screen's bullets for ``decision`` (see the module's docstring)."""
    domain = [n for n, b in results.benchmarks.items() if b.kind == "domain"]
    if not domain:
        return []
    from tunearena.evaluation.report.verdict import CHOSEN

    chosen = decision.chosen or CHOSEN[decision.verdict]  # results written before ``chosen``
    shown = chosen or _best(results, domain, [a for a in OPTIONS if a in results.arms])
    bullets = [_gain(results, domain, chosen, shown)] if shown else []
    if shown:
        general = _general(results, shown)
        if general:
            bullets.append(general)
        cost = _cost(results, shown)
        if cost:
            bullets.append(cost)
    others = [a for a in OPTIONS if a in results.arms and a != shown]
    runner = _best(results, domain, others)
    if runner and shown:
        bullets.append(_runner_up(results, domain, shown, runner))
    disagreement = _disagreement(results, decision)
    if disagreement:
        bullets.append(disagreement)
    return bullets


def _conf(results: Results) -> str:
    return f"{pct_label(results.settings.confidence)} CI"


def _gain_vs_base(results: Results, arm: str, name: str) -> Figure | None:
    row = results.benchmarks[name].arms.get(arm)
    if row is None or row.diff_vs_base is None or row.diff_ci is None:
        return None
    return Figure(source="score", arm=arm, against="base", benchmark=name,
                  value=row.diff_vs_base, ci=row.diff_ci)


def _said(f: Figure, conf: str, where: bool = False) -> str:
    """``+5.0 points (95% CI +0.6 to +10.6)``; with ``where``, ``... on <benchmark> (...)``."""
    assert f.ci is not None
    on = f" on {f.benchmark}" if where else ""
    return f"{signed(f.value)} points{on} ({conf} {signed(f.ci[0])} to {signed(f.ci[1])})"


def _best(results: Results, domain: list[str], arms: list[str]) -> str | None:
    """The arm with the largest mean gain over base on the domain benchmarks."""
    def gain(arm: str) -> float:
        figures = [_gain_vs_base(results, arm, name) for name in domain]
        return mean(f.value for f in figures if f is not None) if any(figures) else -1.0

    scored = [a for a in arms if any(_gain_vs_base(results, a, n) for n in domain)]
    return max(scored, key=gain) if scored else None


def _gain(results: Results, domain: list[str], chosen: str | None, arm: str) -> SummaryBullet:
    conf = _conf(results)
    figures = [f for f in (_gain_vs_base(results, arm, name) for name in domain) if f]
    parts = []
    for f in figures:
        bench = results.benchmarks[f.benchmark or ""]
        parts.append(f"{percent(bench.arms[arm].score)} right against "
                     f"{percent(bench.arms['base'].score)} on {f.benchmark}, "
                     f"{_said(f, conf)}")
    if chosen:
        text = f"Gain on your questions: {plain_name(arm)} gets " + "; ".join(parts) + "."
    else:
        text = (f"No option is shown to beat the base model on every domain benchmark; the "
                f"closest, {plain_name(arm)}, gets " + "; ".join(parts) + ".")
    return SummaryBullet(kind="gain", text=text, figures=figures)


def _general(results: Results, arm: str) -> SummaryBullet | None:
    """The chosen arm's forgetting checks, in words, against the tolerance."""
    forgetting = results.forgetting
    checks = [c for c in (forgetting.checks if forgetting else []) if c.arm == arm]
    if forgetting is None or not checks:
        general = [n for n, b in results.benchmarks.items() if b.kind == "general"]
        if general or arm == "base":
            return None
        return SummaryBullet(kind="general", text="Cost in general ability: not measured (no "
                             "general benchmark was scored).")
    conf, tol = _conf(results), points(forgetting.tolerance)
    judged = {"forgetting": f"beyond the {tol} tolerance",
              "none": f"within the {tol} tolerance"}
    parts, figures = [], []
    for c in checks:
        figures.append(Figure(source="forgetting", arm=arm, against="base",
                              benchmark=c.benchmark, value=c.change, ci=c.ci))
        moved = (f"loses {unsigned(-c.change)} points" if c.change < 0 else
                 f"gains {unsigned(c.change)} points" if c.change > 0 else "keeps its score")
        if c.status == "inconclusive":
            judgement = (f"within the {tol} tolerance, though its interval reaches past it"
                         if -c.change <= forgetting.tolerance else
                         f"past the {tol} tolerance, though its interval reaches back within it")
        else:
            judgement = judged[c.status]
        parts.append(f"{moved} on {c.benchmark} ({conf} {signed(c.ci[0])} to "
                     f"{signed(c.ci[1])}), {judgement}")
    return SummaryBullet(kind="general", text="Cost in general ability: it "
                         + "; ".join(parts) + ".", figures=figures)


def _cost(results: Results, arm: str) -> SummaryBullet | None:
    """Time (and money, where priced) per answer, and the prompt tokens retrieval adds."""
    latency = (results.latency or {}).get(arm)
    base = (results.latency or {}).get("base")
    figures, parts = [], []
    if latency is not None and latency.latency_p50_ms is not None:
        figures.append(Figure(source="latency", arm=arm, value=latency.latency_p50_ms,
                              unit="ms"))
        part = f"one answer takes {latency.latency_p50_ms:.0f} ms at the median"
        if arm != "base" and base is not None and base.latency_p50_ms is not None:
            figures.append(Figure(source="latency", arm="base", value=base.latency_p50_ms,
                                  unit="ms"))
            part += f" (the base model: {base.latency_p50_ms:.0f} ms)"
        parts.append(part)
    if latency is not None and latency.prompt_tokens_added:
        figures.append(Figure(source="prompt_tokens", arm=arm,
                              value=latency.prompt_tokens_added, unit="tokens"))
        parts.append(f"retrieved passages add {latency.prompt_tokens_added:.0f} prompt tokens "
                     "per question")
    priced = results.cost_of_pass.arms.get(arm) if results.cost_of_pass else None
    if priced is not None:
        per_answer = 1000 * priced.usd_per_answer
        figures.append(Figure(source="cost_of_pass", arm=arm, value=priced.usd_per_answer,
                              unit="usd"))
        part = f"{usd(per_answer)} per 1,000 answers"
        settings = results.cost_of_pass.settings  # type: ignore[union-attr]
        one_off = priced.training_usd + priced.index_usd
        if one_off:
            part += (f" ({usd(one_off)} of training and index spread over "
                     f"{settings.queries:,} questions)")
        correct = []
        for name, bench in priced.benchmarks.items():
            if bench.usd_per_correct is None:
                correct.append(f"no correct answer on {name}")
                continue
            ci = bench.usd_per_correct_ci
            ci_ok = ci is not None and ci[1] is not None
            figures.append(Figure(source="cost_of_pass", arm=arm, benchmark=name,
                                  value=bench.usd_per_correct,
                                  ci=(ci[0], ci[1]) if ci_ok else None,  # type: ignore[index]
                                  unit="usd"))
            said = f"{usd(1000 * bench.usd_per_correct)} on {name}"
            if ci_ok:
                said += (f" ({_conf(results)} {usd(1000 * ci[0])} to "  # type: ignore[index]
                         f"{usd(1000 * ci[1])})")  # type: ignore[index]
            correct.append(said)
        parts.append(part + "; per 1,000 correct answers, " + ", ".join(correct))
    elif Arm.parse(arm).model == "ft" and results.cost is not None and results.cost.usd:
        figures.append(Figure(source="training_cost", arm=arm, value=results.cost.usd,
                              unit="usd"))
        parts.append(f"fine-tuning cost {usd(results.cost.usd)} once")
    if not parts:
        return None
    text = "Cost per answer: " + "; ".join(parts) + "."
    return SummaryBullet(kind="cost", text=text, figures=figures)


def _pair(results: Results, a: str, b: str, name: str) -> Figure | None:
    """a - b on ``name``, paired question by question, from the pairs table (either way)."""
    pairs = results.benchmarks[name].pairs
    if f"{a} - {b}" in pairs:
        pair = pairs[f"{a} - {b}"]
        return Figure(source="pair", arm=a, against=b, benchmark=name, value=pair.diff,
                      ci=pair.ci)
    if f"{b} - {a}" in pairs:
        pair = pairs[f"{b} - {a}"]
        return Figure(source="pair", arm=a, against=b, benchmark=name, value=-pair.diff,
                      ci=(-pair.ci[1], -pair.ci[0]))
    if b == "base":
        return _gain_vs_base(results, a, name)
    return None


def _runner_up(results: Results, domain: list[str], chosen: str, runner: str) -> SummaryBullet:
    conf = _conf(results)
    figures = [f for f in (_pair(results, runner, chosen, n) for n in domain) if f]
    parts = [_said(f, conf, where=True) for f in figures]
    text = f"Runner-up: {plain_name(runner)}"
    text += (", against the chosen option: " + "; ".join(parts)) if parts else ""
    checks = [c for c in (results.forgetting.checks if results.forgetting else [])
              if c.arm == runner and c.change < 0]
    if checks:
        worst = min(checks, key=lambda c: c.change)
        figures.append(Figure(source="forgetting", arm=runner, against="base",
                              benchmark=worst.benchmark, value=worst.change, ci=worst.ci))
        text += (f"; in general ability it loses {unsigned(-worst.change)} points on "
                 f"{worst.benchmark} ({conf} {signed(worst.ci[0])} to {signed(worst.ci[1])})")
    return SummaryBullet(kind="runner_up", text=text + ".", figures=figures)


def _disagreement(results: Results, decision: Decision) -> SummaryBullet | None:
    """The comparisons the rule read whose interval lies above zero on some domain
    benchmarks but not on all: the verdict rests on the benchmarks where it does not."""
    conf = _conf(results)
    by_comparison: dict[str, list] = {}
    for e in decision.evidence:
        by_comparison.setdefault(e.comparison, []).append(e)
    parts, figures = [], []
    for comparison, evidence in by_comparison.items():
        above = [e for e in evidence if e.position == "above zero"]
        if not above or len(above) == len(evidence):
            continue
        a, b = comparison.split(" - ")
        for e in evidence:
            figures.append(Figure(source="pair" if b != "base" else "score", arm=a, against=b,
                                  benchmark=e.benchmark, value=e.diff, ci=e.ci))
        rest = [e for e in evidence if e.position != "above zero"]
        parts.append(
            f"{a} beats {b} on " + ", ".join(
                f"{e.benchmark} ({signed(e.diff)} points, {conf} {signed(e.ci[0])} to "
                f"{signed(e.ci[1])})" for e in above)
            + " but not on " + ", ".join(
                f"{e.benchmark} ({signed(e.diff)} points, {conf} {signed(e.ci[0])} to "
                f"{signed(e.ci[1])})" for e in rest))
    if not parts:
        return None
    text = ("Not unanimous: " + "; ".join(parts) + ". The rule asks for every domain "
            f"benchmark, so the verdict is {decision.verdict}.")
    return SummaryBullet(kind="disagreement", text=text, figures=figures)
