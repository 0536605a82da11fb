"""Training stages as the run sees them: prepare a stage's files, load its tasks (replay
included) from where it starts, check it fits the cluster, train it.

A run directory keeps a stage's prepared files under ``data/<stage>/`` (replay files under
``data/<stage>/replay/``) and its exported model under ``models/<stage>/``; the functions here
take those directories rather than the whole run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tunearena.cluster.config import ClusterConfig
from tunearena.files import iter_jsonl
from tunearena.remote_code import trust_remote_code
from tunearena.training.config import DatasetConfig, Stage, TrainingConfig, ancestors
from tunearena.training.data import TaskRecords, TokenizedSplit
from tunearena.training.mixture import Mixture
from tunearena.training.summary import ReplaySummary, TrainingSummary

if TYPE_CHECKING:
    from tunearena.cluster.preflight import Check
    from tunearena.training.estimate import TrainingEstimate
    from tunearena.training.pool import WorkerPool

# What results.json keeps of each stage's summary when a run has several stages.
STAGE_RESULT_FIELDS = (
    "start_from", "method", "lora_init", "steps", "planned_steps", "stopped_early_at",
    "train_s", "final_train_loss", "final_val_loss", "val_loss_by_task", "mix", "replay",
    "data", "history", "export_check", "parameters", "trainable_parameters",
    "peak_gpu_memory_mb", "peak_rss_mb", "kind", "reward_accuracy", "reward_margin", "sweep",
    "estimate",
)


def prepare_stage(stage: Stage, questions: dict[str, list[str]], data_dir: Path,
                  tokenizer: Any, context: int | None = None, chat_template: bool = False,
                  ) -> tuple[dict[str, Path], dict[str, dict]]:
    """Clean, de-duplicate, leak-check (against the benchmark ``questions``), measure against
    ``seq_len`` with ``tokenizer`` (instruction records through the chat template with
    ``chat_template``) and split a stage's files and replayed ones into
    ``data_dir / stage.name``. Returns the written files (``"<task> <split>"`` -> path) and
    the report of each task.

    Raises ``LongRecordsError`` naming every file with records longer than ``seq_len``
    (``context``: the model's, for the message) unless ``long_records`` drops them; nothing
    is written then."""
    from tunearena.training.lengths import check_long_records, fit_to_seq_len
    from tunearena.training.prepare import prepare_dataset, write_prepared

    t = stage.training
    replayed = stage.replay.datasets if stage.replay else []
    prepared = {(f"replay:{ds.task}" if sub else ds.task, sub): fit_to_seq_len(
        prepare_dataset(ds, t.data_prep, t.validation_fraction, t.seed, questions), tokenizer, t,
        chat_template)
        for ds, sub in [(d, "") for d in t.datasets] + [(d, "replay") for d in replayed]}
    check_long_records(list(prepared.values()), t, context, f"stage {stage.name}")
    files, reports = {}, {}
    for (task, sub), data in prepared.items():
        written = write_prepared(data, data_dir / stage.name / sub)
        reports[task] = data.report
        files.update({f"{task} {split}": Path(f) for split, f in written.items()})
    return files, reports


def preparation_lines(stage: str, task: str, r: dict) -> list[str]:
    """What one task's preparation did, for the console (rich markup)."""
    dropped = {k: r[k] for k in ("empty_or_garbled", "exact_duplicates", "near_duplicates",
                                 "leaked") if r.get(k)}
    lines = [f"{stage}/{task}: {r['read']} records, kept {r['kept']} (train {r['train']}, "
             f"validation {r['validation']}, test {r['test']})"
             + ("; dropped " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in dropped.items())
                if dropped else "")]
    if r.get("dropped_over_seq_len"):
        lines.append(f"[bold yellow]{stage}/{task}: {r['dropped_over_seq_len']} records longer "
                     f"than seq_len (the longest {r['longest_tokens']} tokens) left out "
                     "(long_records: drop)[/bold yellow]")
    if r.get("leaked"):
        verb = "dropped" if r.get("leak_action") == "drop" else "KEPT"
        lines.append(f"[bold yellow]{stage}/{task}: {r['leaked']} records contain benchmark "
                     f"questions ({verb})[/bold yellow]")
    return lines


def stage_tasks(stage: Stage, stages: list[Stage], data_dir: Path,
                ) -> tuple[list[TaskRecords], float]:
    """The stage's tasks as prepared records: its own, then replayed ones; and the replay
    fraction."""

    def read(stage_name: str, sub: str, task: str, split: str) -> list[dict]:
        path = data_dir / stage_name / sub / f"{task}.{split}.jsonl"
        return [r for _, r in iter_jsonl(path, ValueError, "prepared data")]

    def records(stage_name: str, sub: str, ds: DatasetConfig, name: str = "") -> TaskRecords:
        return TaskRecords(name or ds.task, ds.format, read(stage_name, sub, ds.task, "train"),
                           read(stage_name, sub, ds.task, "validation"))

    tasks = [records(stage.name, "", ds) for ds in stage.training.datasets]
    if stage.replay is None:
        return tasks, 0.0
    by_name = {s.name: s for s in stages}
    sources = (ancestors(stages, stage.name) if stage.replay.stages == "earlier"
               else stage.replay.stages)
    for source in sources:
        # An earlier stage's tasks keep their own format; each is replayed as one task.
        tasks += [records(source, "", ds, f"replay:{source}/{ds.task}")
                  for ds in by_name[source].training.datasets]
    tasks += [records(stage.name, "replay", ds, f"replay:{ds.task}")
              for ds in stage.replay.datasets]
    return tasks, stage.replay.fraction


def model_stage(stage: Stage, stages: list[Stage]) -> str | None:
    """The stage whose exported model ``stage`` trains on (None: the base model): the one it
    starts from, or, for a LoRA stage that continues its predecessor's adapter, the one that
    adapter was trained on."""
    if stage.start_from == "base":
        return None
    parent = next(s for s in stages if s.name == stage.start_from)
    if continues_adapter(stage):
        return model_stage(parent, stages)
    return parent.name


def continues_adapter(stage: Stage) -> bool:
    """Whether ``stage`` keeps training its predecessor's adapter."""
    return (stage.start_from != "base" and stage.lora_init == "continue"
            and stage.training.method != "full")


def stage_origin(stage: Stage, stages: list[Stage], base: str, models_dir: Path,
                 ) -> tuple[str, Path | None]:
    """(model dir the stage loads, adapter it continues or None); a stage's exported model
    lives in ``models_dir / <stage>``."""
    from tunearena.training.export import ADAPTER_DIR

    on = model_stage(stage, stages)
    model_dir = base if on is None else str(models_dir / on)
    adapter = models_dir / stage.start_from / ADAPTER_DIR if continues_adapter(stage) else None
    return model_dir, adapter


def training_config(training: TrainingConfig, run_dir: Path) -> TrainingConfig:
    """A stage's training config with tracker locations made absolute (the workers' working
    directory is not ours): relative ones live in ``run_dir``."""
    tracking = training.tracking
    updates: dict[str, Any] = {}
    if tracking.tensorboard_dir is not None and not tracking.tensorboard_dir.is_absolute():
        updates["tensorboard_dir"] = run_dir / tracking.tensorboard_dir
    uri = tracking.mlflow_tracking_uri
    if uri is not None and uri.startswith("file:") and not uri.startswith("file:/"):
        updates["mlflow_tracking_uri"] = f"file:{run_dir / uri[len('file:'):]}"
    return training.model_copy(update={"tracking": tracking.model_copy(update=updates)})


def stop_ids(model_dir: str) -> set[int]:
    """The token ids generation stops on, from the model's ``generation_config.json``."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code()).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        return set()
    return set(eos) if isinstance(eos, list) else set() if eos is None else {eos}


def preflight_checks(base: str, training: TrainingConfig, cluster: ClusterConfig, storage: str,
                     n_train_sequences: int, first: bool = True, tokenizer: Any = None,
                     chat_template: bool = False, pool: WorkerPool | None = None) -> list[Check]:
    """The preflight checks of one stage of fine-tuning ``base``, each a pass or a fail with
    its fix.

    The cheap checks (batch arithmetic, resources, memory, and with ``tokenizer`` the EOS
    and chat-template round trip, the template being used for ``instruction`` records too
    when ``chat_template``) go first; storage seen from every node and an all-reduce
    across the placed workers (``pool``'s, the group that then trains, when given) follow
    only when those pass, and only when ``first`` (the cluster does not change between
    stages).
    """
    from tunearena.cluster.preflight import check_collective, check_resources, check_storage
    from tunearena.cluster.ray_cluster import resolve_use_gpu
    from tunearena.training.data import check_tokenizer
    from tunearena.training.memory import check_batch, check_memory, estimate_for, gpu_memory_bytes
    from tunearena.training.trainer import check_method, uses_bf16

    use_gpu = resolve_use_gpu(cluster)
    check_method(training, use_gpu)
    estimate = estimate_for(base, training, cluster.num_workers, uses_bf16(training, use_gpu),
                            use_gpu)
    device_memory = gpu_memory_bytes() if use_gpu else None
    if device_memory:  # a worker may hold a fraction of a GPU
        device_memory = int(device_memory * min(1.0, cluster.gpus_per_worker))
    checks = [
        check_batch(training, cluster.num_workers, n_train_sequences),
        check_resources(cluster, use_gpu),
        check_memory(estimate, device_memory, "GPU" if use_gpu else "CPU"),
    ]
    if tokenizer is not None:
        checks.append(check_tokenizer(tokenizer, {d.format for d in training.datasets},
                                      stop_ids(base), chat_template))
    if all(c.ok for c in checks) and first:
        checks += [check_storage(storage), check_collective(cluster, use_gpu, storage, pool=pool)]
    return checks


def stage_estimate(base: str, training: TrainingConfig, cluster: ClusterConfig,
                   n_train_sequences: int, width: int, usd_per_gpu_hour: float,
                   gpu: str | None = None) -> TrainingEstimate | None:
    """The stage's training time and cost on the cluster's GPUs (``gpu``: on GPUs of that
    kind, without asking the cluster), for ``n_train_sequences`` sequences an epoch padded to
    ``width`` tokens; None on CPU workers."""
    from tunearena.cluster.ray_cluster import resolve_use_gpu
    from tunearena.training.batch import BatchPlan
    from tunearena.training.estimate import estimate_training
    from tunearena.training.memory import gpu_device, model_shape

    if gpu is None:
        found = gpu_device() if resolve_use_gpu(cluster) else None
        if found is None:
            return None
        gpu = found[0]
    plan = BatchPlan(training.micro_batch_size, training.grad_accum_steps, cluster.num_workers)
    steps = plan.total_steps(n_train_sequences, training.epochs, training.max_steps)
    shape = model_shape(base, training if training.method != "full" else None)
    gpus = max(1, math.ceil(cluster.num_workers * cluster.gpus_per_worker))
    return estimate_training(gpu, gpus, steps, plan.global_batch_size, width, shape.total_params,
                             shape.trainable_params, training.method, usd_per_gpu_hour)


@dataclass(frozen=True)
class LoadedStage:
    """A stage ready to train: where it starts, its config, its tokenised tasks and mixture."""

    stage: Stage
    base: str
    """The run's base model, whose shape and tokenizer preflight checks."""
    run_dir: Path
    """The run directory, against which a LoRA stage's adapter records its base."""
    model_dir: str
    model_stage: str | None
    """The stage whose exported model ``model_dir`` is; None: the base model."""
    init_adapter: Path | None
    training: TrainingConfig
    tokenizer: Any
    data: tuple[TokenizedSplit, TokenizedSplit | None]
    mixture: Mixture
    replay_sources: list[str]
    """The replayed tasks, ``<stage>/<task>`` or a replay dataset's task."""
    chat_template: bool = False
    """The run's prompts, and so its ``instruction`` records, go through the chat template."""


def load_stage(stage: Stage, stages: list[Stage], base: str, run_dir: Path,
               chat_template: bool = False) -> LoadedStage:
    """Read and tokenise a prepared stage from ``run_dir/data``, before any worker is claimed,
    so a bad record fails in seconds; ``chat_template`` as ``model.chat_template`` resolved.

    A stage that continues an adapter checks that ``model_dir`` is the base the adapter
    records (``AdapterBaseError`` otherwise)."""
    from transformers import AutoTokenizer

    from tunearena.training.adapters import MODELS_DIR, check_base
    from tunearena.training.stage_data import REPLAY_PREFIX, tokenize_stage

    model_dir, init_adapter = stage_origin(stage, stages, base, run_dir / MODELS_DIR)
    if init_adapter is not None:
        check_base(init_adapter, run_dir, model_dir)
    training = training_config(stage.training, run_dir)
    tasks, replay_fraction = stage_tasks(stage, stages, run_dir / "data")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code())
    train, validation, mixture = tokenize_stage(training, tasks, tokenizer, replay_fraction,
                                                chat_template)
    replayed = [t.name.removeprefix(REPLAY_PREFIX) for t in tasks
                if t.name.startswith(REPLAY_PREFIX)]
    return LoadedStage(stage, base, run_dir, model_dir, model_stage(stage, stages),
                       init_adapter, training, tokenizer, (train, validation), mixture,
                       replayed, chat_template)


def train_stage(loaded: LoadedStage, cluster: ClusterConfig, run_name: str, storage: str,
                out_dir: Path, data_report: dict, console: Console, fresh: bool = True,
                check_cluster: bool = True, pool: WorkerPool | None = None,
                usd_per_gpu_hour: float = 0.0) -> TrainingSummary:
    """Check that a loaded stage fits the cluster (``check_stage``), then train it as run
    ``run_name`` in ``storage`` (Ray must be initialised) into ``out_dir``, on ``pool`` (a
    warm worker group, ``pool.py``) when given.

    ``fresh`` drops the run's old checkpoints first, so nothing is restored; otherwise the
    stage continues from them. Once the export is in ``out_dir``, the resumable checkpoints
    are deleted unless ``checkpoint_keep_on_success``. The summary records where the stage
    started, what it replayed, ``data_report`` (``stage_record``) and, on GPUs, the time and
    cost estimated before it trained (at ``usd_per_gpu_hour``)."""
    from tunearena.training import checkpoint
    from tunearena.training.estimate import estimate_line
    from tunearena.training.trainer import run_stage

    if fresh:
        checkpoint.clear(storage, run_name)
    check_stage(loaded, cluster, storage, console, check_cluster, pool)
    estimate = stage_estimate(loaded.base, loaded.training, cluster, loaded.mixture.epoch_size,
                              loaded.data[0].input_ids.shape[1], usd_per_gpu_hour)
    if estimate is not None:
        console.print(estimate_line(loaded.stage.name, estimate, "GPU"), highlight=False)
    summary = run_stage(run_name, loaded.model_dir, loaded.training, cluster, out_dir, storage,
                        data=loaded.data, mixture=loaded.mixture, init_adapter=loaded.init_adapter,
                        pool=pool)
    if summary.resumed_from_step:
        console.print(f"resumed training from step {summary.resumed_from_step}")
    if not loaded.training.checkpoint_keep_on_success:
        freed = checkpoint.drop_resumable(storage, run_name)
        if freed:
            console.print(f"[dim]removed the stage's resumable checkpoints ({freed / 1e6:.1f} MB; "
                          "checkpoint_keep_on_success keeps them)[/dim]")
    return stage_record(loaded, summary.model_copy(update={"estimate": estimate}), out_dir,
                        data_report)


def check_stage(loaded: LoadedStage, cluster: ClusterConfig, storage: str, console: Console,
                check_cluster: bool, pool: WorkerPool | None = None) -> None:
    """Preflight a loaded stage against the cluster, printing every check on ``console``;
    ``PreflightError`` when one failed. ``check_cluster`` adds the cluster-wide checks
    (storage, a collective on ``pool``'s workers when given), needed once per cluster."""
    from tunearena.cluster.preflight import PreflightError, format_checks

    checks = preflight_checks(loaded.base, loaded.training, cluster, storage,
                              loaded.mixture.epoch_size, check_cluster, loaded.tokenizer,
                              loaded.chat_template, pool)
    console.print(format_checks(checks), highlight=False, markup=False, soft_wrap=True)
    if not all(c.ok for c in checks):
        raise PreflightError(checks)


def stage_record(loaded: LoadedStage, summary: TrainingSummary, out_dir: Path,
                 data_report: dict) -> TrainingSummary:
    """A trained stage's summary with where it started, what it replayed and
    ``data_report`` (the prepare step's counts); an adapter stage's adapter in ``out_dir``
    records which model it applies to (``training/adapters.py``)."""
    stage = loaded.stage
    if stage.training.method != "full":
        from tunearena.training.adapters import base_record, record_base
        from tunearena.training.export import ADAPTER_DIR

        record_base(out_dir / ADAPTER_DIR, stage.name,
                    base_record(loaded.run_dir, loaded.model_stage, loaded.base),
                    merged=stage.training.exports_merged)
    return summary.model_copy(update={
        "start_from": stage.start_from,
        "lora_init": stage.lora_init if stage.training.method != "full" else None,
        "replay": ReplaySummary(fraction=stage.replay.fraction, sources=loaded.replay_sources)
        if stage.replay else None,
        "data": data_report,
    })


def training_results(trained: dict[str, TrainingSummary], chosen: str, order: list[str],
                     selection: dict | None, usd_per_device_hour: float, per_stage: bool,
                     ) -> dict[str, Any]:
    """What ``results.json`` holds of training: ``training`` (the ``chosen`` stage's summary,
    the one the ``ft`` arms use), ``cost`` (device hours and dollars of every stage, and what
    they were estimated at before training when every stage was) and,
    with ``per_stage`` (a run of named stages), each stage's cost and ``stages``."""
    summary = trained[chosen]
    # A swept stage cost every trial's time, the stopped ones included.
    hours = {name: t.sweep.device_hours if t.sweep else t.train_s * t.world_size / 3600
             for name, t in trained.items()}
    out: dict[str, Any] = {
        "training": summary.model_dump(mode="json", exclude={"step_time_s", "data"}) | {
            "stage": chosen, "median_step_s": summary.median_step_s,
            "p90_step_s": summary.p90_step_s},
        "cost": {
            "device": "GPU" if summary.use_gpu else "CPU worker",
            "device_hours": sum(hours.values()),
            "usd": sum(hours.values()) * usd_per_device_hour,
            "usd_per_device_hour": usd_per_device_hour,
        },
    }
    estimates = [t.estimate for t in trained.values()]
    if estimates and all(e is not None for e in estimates):
        out["cost"]["estimate"] = {"device_hours": sum(e.device_hours for e in estimates if e),
                                   "usd": sum(e.usd for e in estimates if e)}
    if per_stage:
        out["cost"]["per_stage"] = {name: {"device_hours": h, "usd": h * usd_per_device_hour}
                                    for name, h in hours.items()}
        kept = set(STAGE_RESULT_FIELDS)
        out["stages"] = {"order": order, "selection": selection,
                         "stages": {name: t.model_dump(mode="json", include=kept)
                                    for name, t in trained.items()}}
    return out
