"""The recommendation rule: fine-tune, RAG, both, or neither, from the typed results."""

from __future__ import annotations

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.report import numbers
from tunearena.evaluation.report.formats import pct_label, percent, points, signed
from tunearena.evaluation.report.numbers import question_groups
from tunearena.evaluation.results import (
    Decision,
    Evidence,
    ForgettingCheck,
    Results,
    paired,
)

VERDICTS = ("fine-tune", "RAG", "both", "neither")

RULE_IN_FULL = (
    "An arm helps when, on every domain benchmark, the confidence interval of its "
    "question-by-question difference against the base model lies above zero.",
    "Fine-tuning is acceptable when no forgetting check of a fine-tuned arm (ft, ft+rag) finds "
    "a drop on a general benchmark beyond the forgetting tolerance.",
    "both: ft+rag helps, the intervals of ft+rag minus base+rag and of ft+rag minus ft lie "
    "above zero on every domain benchmark, and fine-tuning is acceptable.",
    "fine-tune: ft helps, fine-tuning is acceptable, and the interval of ft minus base+rag "
    "lies below zero on no domain benchmark.",
    "RAG: base+rag helps, and neither rule above applies.",
    "neither: no rule above applies.",
)
"""The decision rule, checked in this order; the first clause that holds gives the verdict."""

RAG_AWARE_RULE = (
    "both, RAG-aware (checked first, for each stage trained with retrieved passages, "
    "rag_context, in stage order): its ft@<stage>+rag beats base, base+rag, ft and ft+rag on "
    "every domain benchmark, and no forgetting check of that stage's model (ft@<stage>, "
    "ft@<stage>+rag) finds forgetting; ft@<stage>+rag is then the chosen arm."
)
"""The clause a run with a RAG-aware stage's ``ft@<stage>+rag`` arm adds before ``both``."""

_SENTENCES = {
    "both": "Use both: train the model further on your data (fine-tune) and let it read "
    "passages retrieved from your documents when it answers (RAG).",
    "fine-tune": "Fine-tune: the model trained further on your data answers your questions "
    "better than the model you started from, and letting it read your documents (RAG) is not "
    "shown to do better.",
    "RAG": "Use RAG: let the model you started from read passages retrieved from your "
    "documents when it answers; training it further (fine-tuning) is not shown to be worth it.",
    "neither": "Neither: no option is shown to be worth it on these questions; keep the base "
    "model, or score more questions to settle it.",
}
CHOSEN = {"both": "ft+rag", "fine-tune": "ft", "RAG": "base+rag", "neither": None}
"""The arm each verdict puts forward (``both`` may put a RAG-aware stage's forward instead)."""
_RAG_AWARE_SENTENCE = (
    "Use both, and make the fine-tuning RAG-aware: train the model further on your data with "
    "passages retrieved from your documents in its prompts (stage {stage}: the right "
    "document's passage in {gold_rate} of them, p_gold {p_gold:g}), and let it read retrieved "
    "passages when it answers (RAG)."
)

Comparison = tuple[str, str]  # (a, b): the interval of a minus b, paired question by question
Condition = tuple[bool, str, list[Comparison]]  # holds?, why not, the intervals it read


class _Intervals:
    """The paired intervals the rule reads, each remembered for the evidence table."""

    def __init__(self, results: Results, domain: list[str]):
        self.results, self.domain = results, domain
        self.seen: dict[tuple[str, str, str], tuple[float, float, float]] = {}

    def get(self, a: str, b: str, name: str) -> tuple[float, float, float] | None:
        bench = self.results.benchmarks[name]
        if b == "base":
            row = bench.arms.get(a)
            if row is None or row.diff_ci is None or row.diff_vs_base is None:
                return None
            value = (row.diff_vs_base, *row.diff_ci)
        else:
            found = paired(bench.pairs, a, b)
            if found is None:
                return None
            value = found
        self.seen[(a, b, name)] = value
        return value

    def beats(self, a: str, b: str) -> Condition:
        """Whether a - b lies above zero on every domain benchmark."""
        missing = [arm for arm in (a, b) if arm not in self.results.arms]
        if missing:
            return False, f"{missing[0]} was not scored", []
        values = {name: self.get(a, b, name) for name in self.domain}
        short = [name for name, v in values.items() if v is None or v[1] <= 0]
        ok = bool(values) and not short
        where = "" if len(short) == len(values) else f" on {', '.join(short)}"
        return ok, f"{a} is not shown to beat {b}{where}", [(a, b)]

    def not_worse(self, a: str, b: str) -> Condition:
        """Whether a - b lies below zero on no domain benchmark (trivially, b unscored)."""
        if a not in self.results.arms or b not in self.results.arms:
            return True, "", []
        values = {name: self.get(a, b, name) for name in self.domain}
        worse = [name for name, v in values.items() if v is not None and v[2] < 0]
        return not worse, f"{a} is worse than {b} on {', '.join(worse)}", [(a, b)]


def decide(results: Results) -> Decision:
    """The recommendation the results support: fine-tune, RAG, both, or neither.

    The rule (``RULE_IN_FULL``), checked in this order, the first clause that holds wins:

    - an arm *helps* when, on every domain benchmark, the confidence interval of its paired
      difference against base lies above zero;
    - fine-tuning is *acceptable* when no forgetting check of a fine-tuned arm (ft, ft+rag)
      has status ``forgetting`` (its whole interval past ``evaluation.forgetting_tolerance``);
    - **both, RAG-aware** (only with a stage trained with ``rag_context`` whose
      ``ft@<stage>+rag`` was scored and is not ``ft+rag`` itself; ``RAG_AWARE_RULE``): that
      arm beats base, base+rag, ft and ft+rag, and its stage's model forgets nothing; the
      verdict is both, with that arm chosen;
    - **both**: ft+rag helps, the intervals of ft+rag - base+rag and ft+rag - ft lie above
      zero on every domain benchmark, and fine-tuning is acceptable;
    - **fine-tune**: ft helps, fine-tuning is acceptable, and the interval of ft - base+rag
      lies below zero on no domain benchmark (an unscored base+rag cannot block it);
    - **RAG**: base+rag helps;
    - **neither**: otherwise (also when no domain benchmark was scored).

    Reads ``settings``, ``arms``, ``benchmarks`` with their ``pairs`` and ``forgetting``.
    The decision's ``rule`` says the clause that produced it and why the earlier clauses did
    not hold, ``confidence`` which intervals decided it and which of them span zero, and
    ``evidence`` every interval the rule read.
    """
    tol = results.settings.forgetting_tolerance
    domain = [name for name, b in results.benchmarks.items() if b.kind == "domain"]
    intervals = _Intervals(results, domain)
    # Only the chosen fine-tuned model counts; a stage not chosen cannot block fine-tuning.
    checks = results.forgetting.checks if results.forgetting else []
    ft_checks = [c for c in checks if c.arm in ("ft", "ft+rag")]
    forgot = [f"{c.arm} on {c.benchmark}" for c in ft_checks if c.status == "forgetting"]
    acceptable: Condition = (
        not forgot,
        f"fine-tuning forgets beyond the {points(tol)} tolerance ({', '.join(forgot)})",
        [],
    )
    # Every condition is evaluated (no short cut), so the evidence lists every interval.
    conditions = {
        "both": [intervals.beats("ft+rag", "base"), intervals.beats("ft+rag", "base+rag"),
                 intervals.beats("ft+rag", "ft"), acceptable],
        "fine-tune": [intervals.beats("ft", "base"), acceptable,
                      intervals.not_worse("ft", "base+rag")],
        "RAG": [intervals.beats("base+rag", "base")],
    }
    failures = {
        name: next(((reason, comps) for ok, reason, comps in conds if not ok), None)
        for name, conds in conditions.items()
    }
    aware_stage = _rag_aware_arms(results)
    aware = {arm: _rag_aware_conditions(intervals, arm, stage, checks, tol)
             for arm, stage in aware_stage.items()}
    won = next((arm for arm, (conds, _, _) in aware.items() if all(ok for ok, _, _ in conds)),
               None)
    chosen: str | None
    if domain and won is not None:
        conds, own_checks, kept = aware[won]
        verdict, chosen, ft_checks = "both", won, own_checks
        reasons = [f"{won} (stage {aware_stage[won]}, fine-tuned with retrieved passages) beats "
                   "base, base+rag, ft and ft+rag on every domain benchmark (each interval "
                   "lies above zero).", kept]
        decisive = [c for _, _, comps in conds for c in comps]
    else:
        verdict, reasons, decisive = _rule(domain, conditions, failures,
                                           _kept(ft_checks, forgot, acceptable[1], tol))
        chosen = CHOSEN[verdict]
        reasons += [f"Not {arm} (RAG-aware): {next(r for ok, r, _ in conds if not ok)}."
                    for arm, (conds, _, _) in aware.items() if domain]
    decisive = list(dict.fromkeys(decisive))
    evidence = [
        Evidence(comparison=f"{a} - {b}", benchmark=name, diff=diff, ci=(lo, hi),
                 position="above zero" if lo > 0 else "below zero" if hi < 0 else "spans zero",
                 decisive=(a, b) in decisive)
        for (a, b, name), (diff, lo, hi) in intervals.seen.items()
    ]
    # The intervals that decided it first, in the order the rule names them.
    rank = {f"{a} - {b}": i for i, (a, b) in enumerate(decisive)}
    evidence.sort(key=lambda e: rank.get(e.comparison, len(rank)))
    rule_in_full = list(RULE_IN_FULL)
    if aware:
        rule_in_full.insert(2, RAG_AWARE_RULE)
    return Decision(
        verdict=verdict,  # type: ignore[arg-type]
        sentence=_sentence(verdict, chosen, results),
        rule=f"{verdict}: " + " ".join(reasons),
        reasons=reasons,
        chosen=chosen,
        confidence=_confidence(evidence, ft_checks, domain, results),
        rule_in_full=rule_in_full,
        evidence=evidence,
    )


def _rag_aware_arms(results: Results) -> dict[str, str]:
    """The scored ``ft@<stage>+rag`` arm of each stage trained with retrieved passages, but
    the selected stage's, which ``ft+rag`` already is."""
    arms = {str(Arm("ft", stage, "rag")): stage for stage in results.rag_aware_stages
            if stage != results.selected_stage}
    return {arm: stage for arm, stage in arms.items() if arm in results.arms}


def _rag_aware_conditions(intervals: _Intervals, arm: str, stage: str,
                          checks: list[ForgettingCheck], tol: float,
                          ) -> tuple[list[Condition], list[ForgettingCheck], str]:
    """Whether a RAG-aware arm wins ``both`` (``RAG_AWARE_RULE``): the conditions, the
    forgetting checks of its stage's model, and what they say as a clause."""
    own = [c for c in checks if c.arm in (arm, str(Arm("ft", stage)))]
    forgot = [f"{c.arm} on {c.benchmark}" for c in own if c.status == "forgetting"]
    forgets = (f"stage {stage}'s model forgets beyond the {points(tol)} tolerance "
               f"({', '.join(forgot)})")
    conditions = [intervals.beats(arm, other) for other in ("base", "base+rag", "ft", "ft+rag")]
    kept = _kept(own, forgot, forgets, tol)
    return [*conditions, (not forgot, forgets, [])], own, kept[0].upper() + kept[1:] + "."


def _sentence(verdict: str, chosen: str | None, results: Results) -> str:
    """The verdict's sentence; a ``both`` whose fine-tuned model was trained with retrieved
    passages says the fine-tuning should be RAG-aware."""
    stage = None
    if verdict == "both" and chosen is not None:
        stage = Arm.parse(chosen).stage or results.selected_stage
    context = results.rag_aware_stages.get(stage) if stage else None
    if context is None:
        return _SENTENCES[verdict]
    return _RAG_AWARE_SENTENCE.format(stage=stage, gold_rate=percent(context.gold_rate),
                                      p_gold=context.p_gold)


def _kept(ft_checks: list[ForgettingCheck], forgot: list[str], forgets: str, tol: float) -> str:
    """What the forgetting checks say about the fine-tuned arms, as a clause."""
    if forgot:
        return forgets
    if any(c.status == "inconclusive" for c in ft_checks):
        return (f"no general benchmark shows forgetting beyond the {points(tol)} tolerance "
                "(though some intervals reach past it)")
    if ft_checks:
        return f"no general benchmark shows forgetting beyond the {points(tol)} tolerance"
    return "forgetting was not measured, so it cannot block fine-tuning"


def _rule(
    domain: list[str],
    conditions: dict[str, list[Condition]],
    failures: dict[str, tuple[str, list[Comparison]] | None],
    kept: str,
) -> tuple[str, list[str], list[Comparison]]:
    """The verdict, the rule's reasons (one short sentence per condition it checked), and
    the comparisons that decided it."""

    def not_(name: str) -> str:
        failure = failures[name]
        assert failure is not None
        return f"Not {name}: {failure[0]}."

    kept = kept[0].upper() + kept[1:] + "."
    if not domain:
        return ("neither", ["No domain benchmark was scored, so no arm can be shown to help."],
                [])
    if failures["both"] is None:
        return ("both",
                ["ft+rag beats base, base+rag and ft on every domain benchmark (each interval "
                 "lies above zero).", kept],
                [c for _, _, comps in conditions["both"] for c in comps])
    if failures["fine-tune"] is None:
        return ("fine-tune",
                ["ft beats base on every domain benchmark (each interval lies above zero).",
                 "ft is not shown to be worse than base+rag.", kept, not_("both")],
                [c for _, _, comps in conditions["fine-tune"] for c in comps])
    if failures["RAG"] is None:
        return ("RAG",
                ["base+rag beats base on every domain benchmark (each interval lies above "
                 "zero).", not_("fine-tune"), not_("both")],
                [("base+rag", "base"), *failures["fine-tune"][1], *failures["both"][1]])
    return ("neither", [not_("RAG"), not_("fine-tune"), not_("both")],
            [c for n in ("RAG", "fine-tune", "both") for c in (failures[n] or ("", []))[1]])


def _confidence(evidence: list[Evidence], ft_checks: list[ForgettingCheck], domain: list[str],
                results: Results) -> str:
    """Which intervals decided the verdict, which of them span zero, and what forgetting
    could not settle, in plain sentences."""
    if not domain:
        return "No domain benchmark was scored, so there is no evidence either way."
    tol = results.settings.forgetting_tolerance

    def said(e: Evidence) -> str:
        return (f"{e.comparison} on {e.benchmark} ({signed(e.diff)} points, "
                f"CI {signed(e.ci[0])} to {signed(e.ci[1])})")

    decisive = [e for e in evidence if e.decisive]
    # Two tracks on one question file score each question twice: it is still one question.
    groups = question_groups(results, domain)
    n = sum(q for q, _ in groups)
    sizes = {len(members) for _, members in groups}
    twice = ""
    if sizes != {1} and len(sizes) == 1:
        (ways,) = sizes
        twice = f" (each scored {({2: 'two', 3: 'three'}).get(ways, str(ways))} ways)"
    elif sizes != {1}:
        shared = sum(q for q, members in groups if len(members) > 1)
        twice = f" ({shared} of them scored more than one way)"
    parts = [f"Based on {n} domain question{'s' if n != 1 else ''}{twice}, at "
             f"{pct_label(results.settings.confidence)} confidence."]
    few = [(name, found) for name in domain if (found := numbers.few_units(
        results.benchmarks[name].n, results.benchmarks[name].n_clusters)) is not None]
    if few:
        units = " or ".join(dict.fromkeys(unit for _, (unit, _) in few))
        parts.append("The intervals of " + ", ".join(f"{name} ({k} {unit})"
                                                      for name, (unit, k) in few)
                     + f" rest on fewer than {numbers.MIN_CLUSTERS} {units}: too few to trust.")
    if decisive:
        parts.append("Decided by: " + "; ".join(said(e) for e in decisive) + ".")
    spanning = [e for e in decisive if e.position == "spans zero"]
    if spanning and len(spanning) == len(decisive) > 1:
        parts.append("All of them span zero: no evidence of a difference.")
    elif spanning:
        parts.append("Spanning zero (no evidence of a difference): "
                     + "; ".join(said(e) for e in spanning) + ".")
    elif decisive:
        parts.append("None of these intervals spans zero.")
    unsure = [c for c in ft_checks if c.status == "inconclusive"]
    if not ft_checks:
        parts.append("Forgetting was not measured for a fine-tuned arm.")
    elif unsure:
        parts.append(f"Forgetting beyond the {points(tol)} tolerance cannot be ruled out for "
                     + ", ".join(f"{c.arm} on {c.benchmark}" for c in unsure) + ".")
    return " ".join(parts)
