"""Which fine-tuning stage becomes the ``ft`` arm: the largest domain gain within the
forgetting tolerance.

Accuracies are fractions in [0, 1]; sentences speak in percentage points.
"""

from __future__ import annotations

from typing import Any

_EPS = 1e-9
"""Accuracies are ratios of small integers; 0.8 - 0.78 is 0.0200...02 in floating point, so
comparisons against the tolerance and between gains allow this much round-off."""


def select_stage(
    stage_acc: dict[str, dict[str, float]],
    base_acc: dict[str, float],
    kinds: dict[str, str],
    tolerance: float,
    noun: str = "stage",
    subject: str = "ft is stage",
) -> dict[str, Any]:
    """Choose the stage whose model becomes ``ft``.

    ``stage_acc[stage][benchmark]`` is the accuracy of stage ``stage``'s model (stages in
    training order), ``base_acc[benchmark]`` the base model's, ``kinds[benchmark]`` is
    ``"domain"`` or ``"general"``. Per stage:

    - ``domain_gain``: mean over domain benchmarks of (stage - base);
    - ``forgetting``: max over general benchmarks of (base - stage), negative when the stage
      improved every general benchmark, 0.0 when none was scored;
    - ``within_tolerance``: ``forgetting <= tolerance``.

    The selected stage has the largest ``domain_gain`` among the stages within the tolerance
    (a tie goes to the earlier stage: less training, same result). When none is within it,
    the stage that forgets least is selected and ``warning`` says so, naming every stage's
    forgetting.

    The rule reads point estimates, not confidence intervals: a selection must rank every
    stage (a total order), which overlapping intervals do not give. The report shows each
    stage's intervals beside the choice, so a reader sees how sure the ranking is.

    Returns ``{"selected", "tolerance", "rule", "candidates", "warning"}``: ``rule`` is a
    plain sentence of how the stage was chosen; ``candidates`` a list of ``{"stage",
    "domain_gain", "forgetting", "within_tolerance"}`` in stage order; ``warning`` a sentence,
    or None when some stage is within the tolerance. ``ValueError`` on no stage, no domain
    benchmark, an unknown kind, or a missing accuracy.

    The sentences speak of ``noun``s and name the choice as ``subject <name>``: a sweep's
    trials are chosen between by the same rule (``noun="trial", subject="trial"``).
    """
    if not stage_acc:
        raise ValueError("select_stage: no stage to choose from")
    unknown = sorted(k for k in set(kinds.values()) if k not in ("domain", "general"))
    if unknown:
        raise ValueError(
            f"select_stage: unknown benchmark kind {unknown[0]!r} (expected 'domain' or 'general')"
        )
    domain = [name for name, kind in kinds.items() if kind == "domain"]
    general = [name for name, kind in kinds.items() if kind == "general"]
    if not domain:
        raise ValueError("select_stage: no domain benchmark, so no stage can be shown to gain")
    for owner, accs in [("base", base_acc), *((f"stage {s!r}", a) for s, a in stage_acc.items())]:
        missing = [name for name in kinds if name not in accs]
        if missing:
            raise ValueError(f"select_stage: {owner} has no accuracy for benchmark {missing[0]!r}")

    candidates: list[dict[str, Any]] = []
    for stage, acc in stage_acc.items():
        gain = sum(acc[b] - base_acc[b] for b in domain) / len(domain)
        forgetting = max((base_acc[b] - acc[b] for b in general), default=0.0)
        candidates.append(
            {
                "stage": stage,
                "domain_gain": gain,
                "forgetting": forgetting,
                "within_tolerance": forgetting <= tolerance + _EPS,
            }
        )

    tol = f"{tolerance * 100:g}-point"
    within = [c for c in candidates if c["within_tolerance"]]
    warning = None
    if within:
        best = within[0]
        for c in within[1:]:
            if c["domain_gain"] > best["domain_gain"] + _EPS:  # strictly better: ties stay earlier
                best = c
        if general:
            rule = (
                f"{subject} {best['stage']}: the largest mean gain on the domain benchmarks "
                f"({_signed(best['domain_gain'])} points) among the {noun}s that lose at most "
                f"{tolerance * 100:g} points on every general benchmark (the {tol} forgetting "
                "tolerance)."
            )
        else:
            rule = (
                f"{subject} {best['stage']}: the largest mean gain on the domain benchmarks "
                f"({_signed(best['domain_gain'])} points); no general benchmark was scored, so "
                "forgetting could not be checked."
            )
    else:
        best = candidates[0]
        for c in candidates[1:]:
            if c["forgetting"] < best["forgetting"] - _EPS:
                best = c
        rule = (
            f"{subject} {best['stage']}: no {noun} stays within the {tol} forgetting "
            f"tolerance, so the {noun} that forgets least was chosen (it loses "
            f"{best['forgetting'] * 100:.1f} points on a general benchmark)."
        )
        each = ", ".join(f"{c['stage']} {c['forgetting'] * 100:.1f}" for c in candidates)
        warning = (
            f"Every fine-tuning {noun} forgets more than the {tol} tolerance allows (largest "
            f"drop on a general benchmark, in points: {each}). ft is {best['stage']}, the one "
            "that forgets least, but it still loses general ability: consider replaying "
            "general data, a lower learning rate, or fewer steps."
        )
    return {
        "selected": best["stage"],
        "tolerance": tolerance,
        "rule": rule,
        "candidates": candidates,
        "warning": warning,
    }


def _signed(fraction: float) -> str:
    return f"{fraction * 100:+.1f}"
