"""A swept stage as the report shows it: what was searched, how each trial ended, which one
became the stage's model and why, and what the sweep cost."""

from __future__ import annotations

from typing import Any

from tunearena.evaluation.report import formats as fmt
from tunearena.evaluation.report.formats import NONE
from tunearena.evaluation.report.table import Table
from tunearena.evaluation.results import Results
from tunearena.training.summary import SweepSummary, SweepTrial

_COLUMNS = ["trial", "settings", "ended", "validations", "final val loss",
            "domain gain (points)", "largest general drop (points)", "within tolerance",
            "device-hours"]
_NUMERIC = [False, False, False, True, True, True, True, False, True]


def sweeps_view(results: Results) -> list[dict[str, Any]]:
    """One entry per swept stage, in stage order: ``stage``, ``sentence``, ``table``,
    ``chosen`` and the numbers the scatter plot draws (``points``, ``tolerance``)."""
    if results.stages is None:
        return []
    usd = results.cost.usd_per_device_hour if results.cost else None
    out = []
    for stage in results.stages.order:
        record = results.stages.stages.get(stage)
        sweep = record.sweep if record is not None else None
        if sweep is None:
            continue
        tolerance = (results.stages.selection.tolerance if results.stages.selection
                     and results.stages.selection.tolerance is not None
                     else results.settings.forgetting_tolerance)
        out.append({
            "stage": stage,
            "sentence": sweep_sentence(stage, sweep, usd),
            "table": Table(_COLUMNS, [_row(t, sweep.chosen) for t in sweep.trials],
                           numeric=_NUMERIC),
            "chosen": sweep.chosen,
            "tolerance": tolerance,
            "points": [(t.trial, t.domain_gain, t.forgetting) for t in sweep.trials
                       if t.domain_gain is not None and t.forgetting is not None],
        })
    return out


def sweep_sentence(stage: str, sweep: SweepSummary, usd_per_hour: float | None) -> str:
    """What the sweep searched, how its trials ended, the choice and the cost, in words."""
    searched = "; ".join(f"{key} {_distribution(d)}" for key, d in sweep.space.items())
    ended = {s: sum(t.status == s for t in sweep.trials)
             for s in ("finished", "stopped early", "failed")}
    how = ", ".join(f"{n} {status}" for status, n in ended.items() if n)
    text = (f"Stage {stage} was trained {len(sweep.trials)} times over {searched} "
            f"({sweep.concurrent} at a time): {how}.")
    if ended["stopped early"]:
        text += (" ASHA stopped a trial when its validation loss trailed the others' at the "
                 "same number of validations.")
    if sweep.search != "random":
        text += f" Its values were drawn by {sweep.search}."
    text += (f" The {len(sweep.scored)} finished trial(s) with the lowest validation loss were "
             f"scored on every benchmark. The stage's model: {sweep.rule}")
    if sweep.warning:
        text = text.rstrip(".") + f". {sweep.warning}"
    cost = f"{sweep.device_hours:.3g} device-hours"
    if usd_per_hour:
        cost += f" ({fmt.usd(sweep.device_hours * usd_per_hour)})"
    return text.rstrip(".") + f". The sweep cost {cost}, every trial counted."


def _distribution(d: dict[str, Any]) -> str:
    (name, value), = d.items()
    if name in ("grid", "choice"):
        return f"{'in' if name == 'grid' else 'drawn from'} {{{', '.join(map(_cell, value))}}}"
    return f"{name} over [{_cell(value[0])}, {_cell(value[1])}]"


def _row(t: SweepTrial, chosen: str) -> list[str]:
    return [
        f"{t.trial} (the stage's model)" if t.trial == chosen else t.trial,
        ", ".join(f"{k} {_cell(v)}" for k, v in t.params.items()),
        t.status + (f": {t.error}" if t.error else ""),
        str(t.evaluations),
        f"{t.val_loss:.4f}" if t.val_loss is not None else NONE,
        fmt.signed(t.domain_gain) if t.domain_gain is not None else NONE,
        fmt.unsigned(t.forgetting) if t.forgetting is not None else NONE,
        NONE if t.within_tolerance is None else "yes" if t.within_tolerance else "no",
        f"{t.device_hours:.3g}",
    ]


def _cell(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
