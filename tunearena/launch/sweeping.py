"""A swept stage's train step: its trials on Ray Tune, the best few scored as arms, and the
trial with the largest domain gain within the forgetting tolerance kept as the stage's model.

Cheap proxy first: every trial is ranked by its validation loss, and only the
``sweep.fully_scored`` finished trials with the lowest are scored on every benchmark (arms
``ft@<stage>#<trial>``, plain prompts). Their accuracies go through the rule that chooses
between stages (``evaluation.selection.select_stage``). Without a domain benchmark (or with
evaluation off) the lowest validation loss wins, and the sentence recording the choice says so.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from tunearena.cluster.config import ClusterConfig
from tunearena.errors import UserError
from tunearena.files import link_tree
from tunearena.training import checkpoint
from tunearena.training.stages import LoadedStage, check_stage, stage_record
from tunearena.training.summary import SweepSummary, SweepTrial, TrainingSummary
from tunearena.training.sweep import SweepConfig
from tunearena.training.sweep_run import TrialResult, concurrent_trials, run_sweep

Scorer = Callable[[dict[str, Path]], dict | None]
"""Scores trials' models (trial -> model dir) and returns ``choose_stage``'s selection over
them (candidates named by trial, its sentences speaking of trials), or None when nothing can
be chosen by accuracy."""


class SweepFailed(UserError, RuntimeError):
    """No trial of a sweep finished, so the stage has no model."""


def trial_arm(stage: str, trial: str) -> str:
    """The arm a trial's model is scored as."""
    return f"ft@{stage}#{trial}"


def train_sweep(loaded: LoadedStage, sweep: SweepConfig, cluster: ClusterConfig, run_name: str,
                storage: str, out_dir: Path, trials_dir: Path, data_report: dict,
                console: Console, score: Scorer, fresh: bool = True,
                check_cluster: bool = True) -> TrainingSummary:
    """Train ``loaded`` once per trial of ``sweep`` (Ray must be initialised), each trial's
    model under ``trials_dir/<trial>``; score the best few with ``score``; copy the chosen
    one to ``out_dir``. ``fresh`` drops an earlier attempt's sweep; otherwise Ray Tune
    restores it, its finished trials kept. Returns the chosen trial's summary with the
    sweep's record."""
    import ray

    from tunearena.cluster.ray_cluster import resolve_use_gpu

    use_gpu = resolve_use_gpu(cluster)
    # Before any trial: more concurrent trials than the cluster places is the user's to fix.
    concurrent = concurrent_trials(sweep, cluster, use_gpu, ray.cluster_resources())
    if fresh:
        checkpoint.clear_prefixed(storage, f"{run_name}-")
        shutil.rmtree(trials_dir, ignore_errors=True)
    check_stage(loaded, cluster, storage, console, check_cluster)
    console.print(f"sweep: {sweep.trial_count()} trial(s), {concurrent} side by side, "
                  f"scheduler {sweep.scheduler}")
    trials = run_sweep(run_name, loaded.model_dir, loaded.training, sweep, cluster, use_gpu,
                       concurrent, storage, loaded.data, loaded.mixture, trials_dir,
                       loaded.init_adapter)
    for t in trials:
        console.print(trial_line(t), highlight=False)
    finished = sorted((t for t in trials if t.finished),
                      key=lambda t: (t.val_loss is None, t.val_loss or 0.0))
    if not finished:
        errors = "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error) or "none"
        raise SweepFailed(f"stage {loaded.stage.name}: no trial of its sweep finished "
                          f"({len(trials)} trial(s); errors: {errors}); see the trials' logs "
                          f"under {storage}")
    scored = finished[:sweep.fully_scored]
    selection = score({t.trial_id: Path(t.model_dir) for t in scored if t.model_dir})
    if selection is None:
        chosen, rule, warning, by_trial = scored[0], (
            f"trial {scored[0].trial_id}: the lowest validation loss of the finished trials "
            "(no domain benchmark scored to choose by)"), None, {}
    else:
        by_trial = {c["stage"]: c for c in selection["candidates"]}
        chosen = next(t for t in scored if t.trial_id == selection["selected"])
        rule, warning = selection["rule"], selection["warning"]
    console.print(f"sweep: {rule}", highlight=False)
    assert chosen.summary is not None and chosen.model_dir is not None
    if out_dir.exists():
        shutil.rmtree(out_dir)
    link_tree(Path(chosen.model_dir), out_dir)  # the chosen trial's files, on disk once
    if not loaded.training.checkpoint_keep_on_success:
        for t in finished:  # each exported: its resumable checkpoints are not read again
            checkpoint.drop_resumable(storage, f"{run_name}-{t.trial_id}")
    record = SweepSummary(
        chosen=chosen.trial_id, rule=rule, warning=warning,
        space={k: d.model_dump(exclude_none=True) for k, d in sweep.space.items()},
        scheduler=sweep.scheduler, search=sweep.search, num_samples=sweep.num_samples,
        concurrent=concurrent,
        scored=[t.trial_id for t in scored],
        trials=[_trial_record(t, cluster, use_gpu, by_trial.get(t.trial_id)) for t in trials],
        device_hours=0.0)
    record.device_hours = sum(t.device_hours for t in record.trials)
    summary = stage_record(loaded, chosen.summary, out_dir, data_report)
    return summary.model_copy(update={"sweep": record})


def _trial_record(t: TrialResult, cluster: ClusterConfig, use_gpu: bool,
                  scored: dict | None) -> SweepTrial:
    seconds = max(t.time_s, t.summary.train_s if t.summary is not None else 0.0)
    devices = cluster.num_workers * (cluster.gpus_per_worker if use_gpu else 1)
    return SweepTrial(
        trial=t.trial_id, params=t.params, status=t.status,  # type: ignore[arg-type]
        evaluations=t.evaluations, val_loss=t.val_loss, train_s=seconds,
        device_hours=seconds * devices / 3600, error=t.error,
        domain_gain=scored["domain_gain"] if scored else None,
        forgetting=scored["forgetting"] if scored else None,
        within_tolerance=scored["within_tolerance"] if scored else None)


def trial_line(t: TrialResult) -> str:
    """One trial on the console: its settings, how it ended, its validation loss."""
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in t.params.items())
    loss = f"val loss {t.val_loss:.4f}" if t.val_loss is not None else "no val loss"
    return (f"  trial {t.trial_id} ({params}): {t.status} after {t.evaluations} "
            f"validation(s), {loss}, {t.time_s:.0f} s")
