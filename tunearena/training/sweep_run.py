"""A stage's sweep on Ray Tune: each trial is a Ray Train run of the stage with its settings.

Ray Train V2 trainers are not Tune trainables, so each trial is a small function that builds
the stage's trainer with the trial's settings and runs it; the workers report every
validation loss, which a Train callback passes on to Tune, where ASHA compares the trials at
the same number of validations and stops the ones that trail. A trial that finishes exports
its model, verified as any stage's, under ``out_root/<trial id>``. The trial driver holds
almost nothing (its Train workers get their own placement group), so trials run side by side
as far as the cluster can place their workers. Tune's experiment state lives beside the
stage's checkpoints, so an interrupted sweep is restored with its finished trials kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunearena.cluster.config import ClusterConfig
from tunearena.errors import UserError
from tunearena.training.config import TrainingConfig
from tunearena.training.data import TokenizedSplit
from tunearena.training.mixture import Mixture
from tunearena.training.summary import TrainingSummary
from tunearena.training.sweep import SweepConfig, apply_trial

TRIAL_RESOURCES: dict[str, float] = {"memory": 1.0}
"""What a trial's own process asks of the cluster: next to nothing, since its workers are
placed by Ray Train; Tune needs some resource to place the trial."""


class SweepUnplaceable(UserError, ValueError):
    """More concurrent trials than the cluster can place at once."""


@dataclass(frozen=True)
class TrialResult:
    """What one trial did."""

    trial_id: str
    """``trial_label``: t0, t1, ..."""
    params: dict[str, Any]
    evaluations: int
    """Validations it reached (ASHA compares trials at the same count)."""
    val_loss: float | None
    """Its last validation loss."""
    status: str
    """``finished`` (trained to its end and exported), ``stopped early`` (by ASHA) or
    ``failed``."""
    time_s: float
    """Wall seconds the trial ran (Ray Tune's count)."""
    model_dir: str | None
    summary: TrainingSummary | None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def placeable_trials(cluster: ClusterConfig, use_gpu: bool, resources: dict[str, float]) -> int:
    """How many trials' worker groups ``resources`` (the cluster's totals) hold at once."""
    need: dict[str, float] = {"CPU": cluster.num_workers * cluster.cpus_per_worker}
    if use_gpu:
        need["GPU"] = cluster.num_workers * cluster.gpus_per_worker
    return min(math.floor(resources.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)


def concurrent_trials(sweep: SweepConfig, cluster: ClusterConfig, use_gpu: bool,
                      resources: dict[str, float], where: str = "") -> int:
    """The trials to run side by side: ``max_concurrent_trials``, or as many as fit; a
    ``SweepUnplaceable`` naming both numbers when the setting asks for more than fit, or
    when not even one trial fits (``where`` starts the message)."""
    fit = placeable_trials(cluster, use_gpu, resources)
    if fit < 1:
        raise SweepUnplaceable(
            f"{where}sweep: one trial needs {cluster.num_workers} workers of "
            f"{cluster.cpus_per_worker} CPU" + (f" and {cluster.gpus_per_worker} GPU" if use_gpu
                                                else "") + f", more than the cluster has "
            f"({_totals(resources)}); lower cluster.num_workers or add nodes")
    wanted = sweep.max_concurrent_trials
    if wanted is not None and wanted > fit:
        raise SweepUnplaceable(
            f"{where}sweep.max_concurrent_trials is {wanted}, but the cluster ({_totals(resources)}) "
            f"places {fit} trial(s) of {cluster.num_workers} workers at once; set it to {fit} "
            "or less, or add nodes")
    return min(wanted or fit, sweep.trial_count())


def _totals(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def run_sweep(name: str, model_dir: str, cfg: TrainingConfig, sweep: SweepConfig,
              cluster: ClusterConfig, use_gpu: bool, concurrent: int, storage_path: Path | str,
              data: tuple[TokenizedSplit, TokenizedSplit | None], mixture: Mixture,
              out_root: Path, init_adapter: Path | None = None) -> list[TrialResult]:
    """Run (or, when its state is under ``storage_path``, restore) the stage's sweep,
    ``concurrent`` trials side by side (``concurrent_trials``); each trial's result in the
    order Tune made them, finished trials' models under ``out_root/<trial id>``. Ray must be
    initialised."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(tune.with_parameters(
        _trial, name=name, model_dir=model_dir, training=cfg.model_dump(exclude={"enabled"}),
        cluster=cluster, storage=str(storage_path), data=data, mixture=mixture,
        out_root=str(out_root), init_adapter=init_adapter, use_gpu=use_gpu), TRIAL_RESOURCES)
    experiment = Path(storage_path) / f"{name}-sweep"
    if tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
    else:
        scheduler = (ASHAScheduler(time_attr="evaluations", grace_period=sweep.grace_period,
                                   reduction_factor=sweep.reduction_factor,
                                   max_t=10**6, stop_last_trials=False)
                     if sweep.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable, param_space=sweep.param_space(),
            tune_config=tune.TuneConfig(metric="val_loss", mode="min",
                                        num_samples=sweep.num_samples, scheduler=scheduler,
                                        search_alg=sweep.searcher(cfg.seed),
                                        max_concurrent_trials=concurrent,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(storage_path),
                                      verbose=0))
    grid = tuner.fit()
    return [_trial_result(grid[i], out_root) for i in range(len(grid))]


def _trial(params: dict[str, Any], *, name: str, model_dir: str, training: dict[str, Any],
           cluster: ClusterConfig, storage: str,
           data: tuple[TokenizedSplit, TokenizedSplit | None], mixture: Mixture, out_root: str,
           init_adapter: Path | None, use_gpu: bool) -> None:
    """One trial: the stage's trainer with the trial's settings, to its end or until ASHA
    stops it; a finished trial's export lands in ``out_root/<trial id>``."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from tunearena.training.trainer import collect_export, trial_trainer

    trial_id = trial_label(tune.get_context().get_trial_id())
    if (Path(out_root) / f"{trial_id}.json").is_file():
        return  # exported before the driver stopped, but not yet marked done by Tune
    cfg = TrainingConfig.model_validate(apply_trial(training, params))
    # A stable name: a restored trial's Train run continues from its own checkpoints.
    run = f"{name}-{trial_id}"
    result = trial_trainer(run, model_dir, cfg, cluster, storage, data, mixture, init_adapter,
                           use_gpu, callbacks=[TuneReportCallback()]).fit()
    if result.error is not None:
        raise result.error
    summary = collect_export(run, storage, Path(out_root) / trial_id)
    (Path(out_root) / f"{trial_id}.json").write_text(summary.model_dump_json())


def _trial_dirname(trial) -> str:
    """A trial's directory is its id, so its result is found again however it ended."""
    return trial_label(str(trial.trial_id))


def trial_label(trial_id: str) -> str:
    """A trial's name in files, arms and the report: ``t`` and its number in the sweep
    (Ray Tune's id is that number after a prefix drawn per experiment), so a rerun of the
    same sweep names its trials the same."""
    return f"t{int(trial_id.rsplit('_', 1)[-1])}"


def _trial_result(result, out_root: Path) -> TrialResult:
    # The dir is the trial's label, unless Tune found one of that name already (a trial the
    # driver was starting when it died, restored as pending): then a suffix follows "_".
    trial_id = Path(result.path).name.split("_", 1)[0]
    metrics = result.metrics or {}
    summary_file = out_root / f"{trial_id}.json"
    summary = (TrainingSummary.model_validate_json(summary_file.read_text())
               if summary_file.is_file() else None)
    status = ("finished" if summary is not None
              else "failed" if result.error is not None else "stopped early")
    return TrialResult(
        trial_id=trial_id, params=dict(result.config or {}),
        evaluations=int(metrics.get("evaluations") or (
            sum("val_loss" in h for h in summary.history) if summary is not None else 0)),
        val_loss=(summary.final_val_loss if summary is not None else metrics.get("val_loss")),
        status=status, time_s=float(metrics.get("time_total_s", 0.0)),
        model_dir=str(out_root / trial_id) if summary is not None else None,
        summary=summary, error=str(result.error) if result.error is not None else None)
