"""Run one training stage on Ray Train workers and bring its exported model back to the driver."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import ray
from ray.train import FailureConfig, LoggingConfig, RunConfig

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.interruptible import InterruptibleTorchTrainer
from tunearena.cluster.ray_cluster import resolve_use_gpu, scaling_config, worker_env
from tunearena.cluster.storage import resolve_storage
from tunearena.errors import UserError
from tunearena.files import link_tree
from tunearena.remote_code import trust_remote_code
from tunearena.training import checkpoint as ckpt
from tunearena.training.config import Stage, TrainingConfig
from tunearena.training.data import TokenizedSplit
from tunearena.training.failures import TrainingFailedError, stage_failure
from tunearena.training.loop import EXPORT_MARKER, train_loop_per_worker
from tunearena.training.memory import needs_lean_heap
from tunearena.training.mixture import Mixture
from tunearena.training.model_dir import ModelDirError, check_model_dir  # noqa: F401 (re-exported)
from tunearena.training.pool import WorkerPool
from tunearena.training.progress import StageProgress
from tunearena.training.stage_data import prepare_stage_data, stage_mixture
from tunearena.training.summary import TrainingSummary


class MethodUnavailable(UserError, RuntimeError):
    """A training method this cluster or installation cannot run (QLoRA without CUDA)."""


def uses_bf16(cfg: TrainingConfig, use_gpu: bool) -> bool:
    """``precision: auto`` means bf16 on GPUs and fp32 on CPUs."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and use_gpu)


def check_method(cfg: TrainingConfig, use_gpu: bool) -> None:
    """A method its ZeRO stage cannot run, or QLoRA without CUDA workers and bitsandbytes:
    say so before any worker starts."""
    import importlib.util

    if cfg.method != "qlora":
        return
    if not use_gpu:
        raise MethodUnavailable("training.method qlora needs GPU workers (4-bit weights are a "
                                "CUDA kernel); use method lora on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MethodUnavailable('training.method qlora needs bitsandbytes: pip install bitsandbytes')


def run_stage(
    name: str,
    model_dir: str,
    cfg: TrainingConfig,
    cluster: ClusterConfig,
    out_dir: Path,
    storage_path: Path | str,
    data: tuple[TokenizedSplit, TokenizedSplit | None] | None = None,
    mixture: Mixture | None = None,
    init_adapter: Path | None = None,
    pool: WorkerPool | None = None,
) -> TrainingSummary:
    """Train ``model_dir`` on ``cfg``'s data with ``cluster.num_workers`` DeepSpeed ranks.

    Ray must be initialised. ``name`` names the stage's run under ``storage_path``: when a
    run of that name has checkpoints there, training continues from the latest (call
    ``checkpoint.clear`` first for a fresh start). Workers that fail are restarted from the
    latest checkpoint up to ``cluster.max_failures`` times; past that, ``StageFailed`` names
    the failed ranks and the cause. The exported model, verified by reloading it, lands in
    ``out_dir`` (replaced atomically; its files linked to the export in storage where the
    file system allows). Returns the training summary.

    ``pool`` is a warm worker group (``pool.py``) of the same cluster and storage that trains
    the stage, and stays up for the next; by default a group starts for this stage alone.
    ``data`` and ``mixture`` come from the caller when it prepared the stage's tasks (replay
    included); by default ``cfg.datasets`` are prepared as a run prepares them (cleaned as
    ``cfg.data_prep`` says, split, tokenised: ``prepare_stage_data``), one task each.
    ``init_adapter`` starts a LoRA stage from an adapter trained on ``model_dir``. A terminal
    shows a progress bar while the stage trains.
    """
    use_gpu = resolve_use_gpu(cluster)
    check_method(cfg, use_gpu)
    storage = str(storage_path)
    if pool is not None and not pool.fits(cluster, storage, use_gpu):
        raise ValueError(f"stage {name!r}: the worker group was started for other settings")
    latest = ckpt.latest(storage, name)
    if latest is not None and latest[1].get("exported"):
        # A previous attempt finished and exported; only the copy to out_dir was lost.
        return collect_export(name, storage, out_dir)
    if latest is not None:
        # Before claiming any worker: the same world size, and the files the run saved.
        ckpt.check_world_size(latest[1], cluster.num_workers)
        ckpt.verify_latest(storage, name, latest[0])
    if data is None:
        from transformers import AutoTokenizer

        prepared = prepare_stage_data(Stage(name, "base", cfg),
                                      AutoTokenizer.from_pretrained(
                                          model_dir, trust_remote_code=trust_remote_code()))
        data = (prepared.train, prepared.validation)
    if mixture is None:
        mixture = stage_mixture(cfg, data[0], [ds.task for ds in cfg.datasets])
    # The bar follows rank 0's log lines while the stage trains; it closes however it ends.
    with StageProgress(name) as progress, ExitStack() as stack:
        workers = pool or stack.enter_context(WorkerPool(cluster, storage, use_gpu))
        config = stage_config(name, model_dir, cfg, storage, data, mixture, init_adapter,
                              use_gpu, progress.queue,
                              lean_heap=needs_lean_heap(model_dir, cfg, cluster.num_workers,
                                                        use_gpu))
        try:
            workers.run(train_loop_per_worker, config)
        except TrainingFailedError as err:  # Ray's wording and frames: say it in ours
            raise stage_failure(name, err, model_dir) from None
    return collect_export(name, storage, out_dir)


def stage_config(name: str, model_dir: str, cfg: TrainingConfig, storage: str,
                 data: tuple[TokenizedSplit, TokenizedSplit | None], mixture: Mixture,
                 init_adapter: Path | None, use_gpu: bool, progress,
                 report_validation: bool = False, lean_heap: bool = False) -> dict:
    """What ``train_loop_per_worker`` reads of one stage; ``progress`` is the queue rank 0
    puts its log lines in (None: rank 0 prints them). With ``report_validation`` (a sweep's
    trial), every rank also reports each validation loss to Ray Train. ``lean_heap``: CPU
    workers keep glibc's mmap threshold fixed (``memory.needs_lean_heap``)."""
    train, val = data
    return {
        "training": cfg.model_dump(mode="json"),
        "model_dir": str(Path(model_dir).resolve()) if Path(model_dir).exists() else model_dir,
        "data_ref": ray.put({"train": asdict(train),
                             "val": asdict(val) if val is not None else None}),
        "bf16": uses_bf16(cfg, use_gpu),
        "run_name": name,
        "storage": resolve_storage(storage),  # the workers' working directory is not ours
        "launch_time": time.time(),
        "mixture": asdict(mixture),
        "init_adapter": str(init_adapter) if init_adapter is not None else None,
        "progress": progress,
        "report_validation": report_validation,
        "lean_heap": lean_heap,
    }


def trial_trainer(name: str, model_dir: str, cfg: TrainingConfig, cluster: ClusterConfig,
                  storage: str, data: tuple[TokenizedSplit, TokenizedSplit | None],
                  mixture: Mixture, init_adapter: Path | None, use_gpu: bool,
                  callbacks: list) -> InterruptibleTorchTrainer:
    """The Ray Train trainer of a sweep's trial: a worker group of its own that trains the
    stage once, every rank reporting each validation loss, which ``callbacks`` pass on."""
    # Ctrl-C and SIGTERM stay the driver's to handle (see cluster/interruptible.py).
    return InterruptibleTorchTrainer(
        train_loop_per_worker,
        train_loop_config=stage_config(
            name, model_dir, cfg, storage, data, mixture, init_adapter, use_gpu, None,
            report_validation=True,
            lean_heap=needs_lean_heap(model_dir, cfg, cluster.num_workers, use_gpu)),
        scaling_config=scaling_config(cluster, use_gpu),
        # Ray Train V2's RunConfig; type checkers see the V1 class that `ray.train` swaps out.
        run_config=RunConfig(  # type: ignore[call-arg]
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            worker_runtime_env={"env_vars": worker_env(cluster)},
            # Ray Train's INFO lines repeat every reported metric; our rank 0 logs progress.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
    )


def collect_export(name: str, storage: str, out_dir: Path) -> TrainingSummary:
    """Bring run ``name``'s verified export from storage to ``out_dir`` (replaced atomically;
    files hard-linked where storage and ``out_dir`` share a file system, so the model is on
    disk once); returns its summary."""
    latest = ckpt.latest(storage, name)
    if latest is None or not latest[1].get("exported"):
        raise RuntimeError(f"stage {name!r} finished without an exported model")
    with ckpt.open_checkpoint(storage, name, latest[0]).as_directory() as exported:
        exported = Path(exported)
        if not (exported / EXPORT_MARKER).is_file():
            raise RuntimeError(f"stage {name!r}: the last checkpoint is not an exported model")
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        link_tree(exported, tmp)
    raw = json.loads((tmp / EXPORT_MARKER).read_text())
    raw.pop("tensors", None)  # a tensor count that exports before the typed summary wrote
    summary = TrainingSummary.model_validate(raw)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return summary
