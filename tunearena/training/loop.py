"""What every Ray Train worker runs: one DeepSpeed engine, one data-parallel rank.

``train_loop_per_worker`` reads top to bottom: set up, start the engine, resume, the step loop
(gradient accumulation, logging, validation, early stopping, checkpoints), the summary, the
verified export. The pieces it calls are plain functions below it; the why of every
collective sits beside the call.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch

from tunearena.training import checkpoint as ckpt
from tunearena.training.batch import BatchPlan
from tunearena.training.config import TrainingConfig
from tunearena.training.data import IGNORE_INDEX
from tunearena.training.ds_config import build_ds_config, build_lr_scheduler
from tunearena.training.export import export_verified
from tunearena.training.mixture import Mixture, count_tasks, epoch_order
from tunearena.training.model import count_parameters, load_model
from tunearena.training.preference_loop import PairObjective
from tunearena.training.summary import TrainingSummary
from tunearena.training.throughput import mfu
from tunearena.training.tracking import Tracker
from tunearena.training.worker import Worker, keep_mmap_threshold, reset_peak_rss

EXPORT_MARKER = "tunearena_export.json"
"""Written into a reported checkpoint that is a Hugging Face model dir (not DeepSpeed state):
the stage's ``TrainingSummary``."""


def train_loop_per_worker(config: dict) -> None:
    """Train one stage into its run's dir in storage (checkpoints, then the verified export
    from rank 0); with ``report_validation`` (a sweep's trial), report each validation to Ray
    Train. A stage already exported is left as it is.

    Starts from the run's latest checkpoint when it has one (a restart after a failure, or a
    resumed run), so the same step, lr and data position continue. Called once per stage,
    in a worker group of its own or in one that trains stage after stage (``pool.py``).
    """
    import transformers

    transformers.utils.logging.disable_progress_bar()
    cfg = TrainingConfig.model_validate(config["training"])
    storage, run_name = config["storage"], config["run_name"]
    latest = ckpt.latest(storage, run_name)
    if latest is not None and latest[1].get("exported"):
        return  # exported before this worker group restarted; the driver collects it
    worker = Worker.from_ray_train()
    reset_peak_rss()  # a warm worker's earlier stages are not this one's peak
    if not worker.cuda and config.get("lean_heap"):
        # On a CPU the worker's memory is the process's: see memory.needs_lean_heap.
        keep_mmap_threshold()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(cfg.seed)
    data = ray.get(config["data_ref"])
    train, val = data["train"], data.get("val")
    mixture = Mixture(**config["mixture"])
    task_of_row = train["task"] if train.get("task") is not None else np.zeros(
        len(train["input_ids"]), dtype=np.int16)
    plan = BatchPlan(cfg.micro_batch_size, cfg.grad_accum_steps, worker.world_size)
    steps_per_epoch = plan.steps_per_epoch(mixture.epoch_size)
    total_steps = plan.total_steps(mixture.epoch_size, cfg.epochs, cfg.max_steps)
    engine, n_params, n_trainable = start_engine(cfg, config, worker, total_steps)
    placement = worker.placement()
    worker.print(describe_stage(cfg, config, worker, plan, mixture, total_steps,
                                train["input_ids"].shape[1], n_params, n_trainable, placement))
    state = resume(engine, cfg, worker, plan, placement, len(mixture.names), storage, run_name)
    start_step = state.step
    pairs = (PairObjective.start(engine, cfg, train, val, worker, state)
             if cfg.kind != "sft" else None)
    tracker = (Tracker.open(cfg.tracking, config["run_name"], cfg.model_dump(mode="json"),
                            resume_run_id=state.mlflow_run_id) if worker.is_main else None)
    state.mlflow_run_id = tracker.mlflow_run_id if tracker is not None else None
    progress = config.get("progress") if worker.is_main else None

    order: np.ndarray | None = None
    clock = StepClock(config["launch_time"], state.train_s)
    window = LogWindow()
    stopped_early_at = None
    val_by_task: dict[str, float] = {}
    engine.train()
    for step in range(start_step, total_steps):
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        if order is None or step_in_epoch == 0:
            # Same order on every rank (same seed), so rank slices never overlap; a function
            # of the epoch alone, so a resumed run sees the same order.
            order = epoch_order(task_of_row, mixture, cfg.seed, epoch)
        # Every rank counts the whole global batch, so the counts agree without a collective.
        state.add_task_counts(count_tasks(
            task_of_row, order[step_in_epoch * plan.global_batch_size:
                               (step_in_epoch + 1) * plan.global_batch_size],
            len(mixture.names)))
        t_step = time.perf_counter()
        for micro in range(cfg.grad_accum_steps):
            rows = order[plan.rank_slice(step_in_epoch, micro, worker.rank)]
            batch = worker.to_device(train, rows)
            loss = pairs.loss(engine, batch, rows).loss if pairs else engine(**batch).loss
            # DeepSpeed divides the loss by grad_accum_steps before backward and only applies
            # the optimizer (after averaging gradients over ranks) at the accumulation boundary.
            engine.backward(loss)
            engine.step()
            window.add(loss, int(train["attention_mask"][rows].sum()))
        clock.step_done(t_step)
        state.step, last = step + 1, step + 1 == total_steps
        metrics: dict = {"step": step + 1}
        if (step + 1) % cfg.log_every_steps == 0 or last:
            metrics |= window.flush(worker, engine, state, steps_per_epoch, n_params, n_trainable)
        if val is not None and ((step + 1) % cfg.eval_every_steps == 0 or last):
            if pairs is not None:
                held_out = pairs.validate(engine, val, worker)
                metrics["val_loss"] = held_out.pop("loss")
                metrics |= {f"val_{name}": value for name, value in held_out.items()}
            else:
                metrics["val_loss"], val_by_task = validation_loss(
                    engine, val, list(mixture.names), cfg.micro_batch_size, worker)
            if len(val_by_task) > 1:
                metrics |= {f"val_loss/{name}": loss for name, loss in val_by_task.items()}
            # The same numbers on every rank, so every rank takes the same decision.
            state.observe_validation(metrics["val_loss"], cfg.early_stopping_min_delta)
            if config.get("report_validation"):  # a sweep's trial: its scheduler reads these
                report_validation(state, metrics)
            if (cfg.early_stopping_patience is not None and not last
                    and state.bad_evals >= cfg.early_stopping_patience):
                stopped_early_at = step + 1
        if len(metrics) > 1:
            state.history.append(metrics)
            if tracker is not None:
                tracker.log(metrics, step + 1)
            report_progress(worker, progress, metrics, total_steps)
        if stopped_early_at is not None:
            worker.print(f"early stop at step {stopped_early_at}: validation loss has not "
                         f"improved on {state.best_val:.4g} for {state.bad_evals} validations")
            break
        if cfg.checkpoint_every_steps and (step + 1) % cfg.checkpoint_every_steps == 0 and not last:
            state.train_s = clock.train_s()
            save_checkpoint(engine, worker, state, cfg, storage, run_name)

    state.train_s = clock.train_s()
    summary = build_summary(cfg, worker, plan, mixture, state, clock, train, val,
                            stopped_early_at or total_steps, total_steps, start_step,
                            n_params, n_trainable, val_by_task, config["bf16"])
    # One fixed sequence that the export, reloaded, must score as the trained engine does.
    check_batch = worker.to_device(val if val is not None else train, np.array([0]))
    # A preference row is [chosen | rejected]: its chosen half is one sequence.
    width = cfg.seq_len if pairs is not None else 512
    export_stage(engine, cfg, config, worker, summary,
                 {k: v[:, :width] for k, v in check_batch.items()}, plan.global_batch_size)
    if tracker is not None:
        tracker.close()


def export_stage(engine, cfg: TrainingConfig, config: dict, worker: Worker,
                 summary: TrainingSummary, check_batch: dict, global_batch_size: int) -> None:
    """Export the trained model, verified, into the run's ``export`` dir in storage (rank 0;
    every rank takes part) and record it as the run's latest checkpoint."""
    storage, run_name = config["storage"], config["run_name"]
    if worker.is_main:  # the export of an attempt that died before recording it
        ckpt.discard(storage, run_name, ckpt.EXPORT_DIR)
    with (ckpt.writing(storage, run_name, ckpt.EXPORT_DIR) if worker.is_main
          else tempfile.TemporaryDirectory()) as out:
        export_verified(engine, cfg, worker, check_batch, config["model_dir"], config["bf16"],
                        summary, Path(out), EXPORT_MARKER)
    if worker.is_main:
        ckpt.commit(storage, run_name, ckpt.EXPORT_DIR,
                    {"step": summary.steps, "world_size": worker.world_size,
                     "global_batch_size": global_batch_size, "exported": True},
                    cfg.checkpoint_keep)


def start_engine(cfg: TrainingConfig, config: dict, worker: Worker,
                 total_steps: int) -> tuple[Any, int, int]:
    """(DeepSpeed engine, parameters, trainable parameters) of the stage's model."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    ds_config = build_ds_config(cfg, worker.world_size, total_steps, bf16=config["bf16"],
                                cuda=worker.cuda)
    # DeepSpeed's comm layer must wrap Ray Train's process group before zero.Init (inside
    # from_pretrained under ZeRO-3) parses the config; otherwise it sees world size 1 and
    # rejects train_batch_size. deepspeed.initialize makes the same call, a no-op after this.
    deepspeed.init_distributed(
        dist_backend=get_accelerator().communication_backend_name(), dist_init_required=False
    )
    # Under ZeRO-3 this object must exist before from_pretrained, so weights are partitioned
    # as they load instead of materialising the full model on every rank.
    hf_ds_config = HfDeepSpeedConfig(ds_config) if cfg.zero_stage == 3 else None  # noqa: F841
    model = load_model(config["model_dir"], cfg, config["bf16"], config.get("init_adapter"))
    n_params, n_trainable = count_parameters(model)
    # Now that the trainable count is known, the buckets are sized to it (loading only read
    # the stage and partitioning settings, which do not change).
    ds_config = build_ds_config(cfg, worker.world_size, total_steps, bf16=config["bf16"],
                                cuda=worker.cuda, trainable_params=n_trainable)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lambda optimizer: build_lr_scheduler(optimizer, cfg, total_steps),
        dist_init_required=False,  # Ray Train already created the process group.
    )
    # Loading is done: a from_pretrained after this (the export check) must not partition.
    unset_hf_deepspeed_config()
    return engine, n_params, n_trainable


def describe_stage(cfg: TrainingConfig, config: dict, worker: Worker, plan: BatchPlan,
                   mixture: Mixture, total_steps: int, seq_len: int, n_params: int,
                   n_trainable: int, placement: list[dict]) -> str:
    """The stage's opening lines: its length, batch, precision and where each rank runs."""
    mix = ", ".join(f"{n} {p:.0%}" for n, p in zip(mixture.names, mixture.probabilities,
                                                   strict=True))
    lines = [
        f"training: {total_steps} steps, {mixture.epoch_size} sequences an epoch of {seq_len} "
        f"tokens" + (f" ({mix})" if mixture.weighted else "")
        + f", global batch {plan.global_batch_size} ({cfg.micro_batch_size} x "
        f"{cfg.grad_accum_steps} accum x {worker.world_size} workers), ZeRO-{cfg.zero_stage}, "
        f"{cfg.method} ({n_trainable:,} of {n_params:,} parameters train), "
        f"{'bf16' if config['bf16'] else 'fp32'} on {worker.device.type}"
    ]
    lines += [f"  rank {w['rank']}: node {w['node_ip']} ({w['node_id'][:8]}) pid {w['pid']} "
              f"{w['device']}" for w in placement]
    return "\n".join(lines)


def resume(engine, cfg: TrainingConfig, worker: Worker, plan: BatchPlan,
           placement: list[dict], n_tasks: int, storage: str, run_name: str) -> ckpt.TrainState:
    """The state to start from: the run's latest checkpoint in storage, loaded into
    ``engine`` (a collective), or a fresh start."""
    state = ckpt.TrainState(worker.world_size, plan.global_batch_size,
                            task_counts=[0] * n_tasks)
    latest = ckpt.latest(storage, run_name)
    if latest is not None:
        with ckpt.open_checkpoint(storage, run_name, latest[0]).as_directory() as d:
            state = ckpt.load(engine, Path(d), worker.rank, worker.world_size,
                              exclude_frozen=cfg.method != "full")
        state.task_counts = state.task_counts or [0] * n_tasks
        worker.print(f"resumed from the checkpoint at step {state.step}")
    state.placement = placement
    return state


def report_validation(state: ckpt.TrainState, metrics: dict) -> None:
    """Report a validation (every rank; no checkpoint): the step, how many validations so
    far (this one included) and the loss."""
    evaluations = sum("val_loss" in h for h in state.history) + 1
    ray.train.report({"step": state.step, "evaluations": evaluations,
                      "val_loss": metrics["val_loss"]})


def save_checkpoint(engine, worker: Worker, state: ckpt.TrainState, cfg: TrainingConfig,
                    storage: str, run_name: str) -> None:
    """A resumable checkpoint of every rank at ``state.step`` into the run's dir in storage
    (collectives), recorded as the latest once every rank has written its part."""
    name = ckpt.checkpoint_dir_name(state.step)
    if worker.is_main:  # what an attempt killed while writing this step left
        ckpt.discard(storage, run_name, name)
    worker.barrier()
    with ckpt.writing(storage, run_name, name, worker.rank) as directory:
        ckpt.save(engine, directory, worker.rank, state, exclude_frozen=cfg.method != "full")
    worker.barrier()  # every rank's files are in storage
    if worker.is_main:
        ckpt.commit(storage, run_name, name,
                    {"step": state.step, "world_size": state.world_size,
                     "global_batch_size": state.global_batch_size}, cfg.checkpoint_keep)


@dataclass
class StepClock:
    """Wall time of the steps: this attempt's, each step's, and the launch to the first."""

    launch_time: float
    """When the driver launched the trainer (``time.time()``)."""
    train_s_before: float = 0.0
    """Training time of the attempts before this one."""
    t_start: float = field(default_factory=time.perf_counter)
    step_time_s: list[float] = field(default_factory=list)
    """Wall time of each optimizer step, as this rank saw it."""
    time_to_first_step_s: float | None = None

    def step_done(self, t_step: float) -> None:
        self.step_time_s.append(time.perf_counter() - t_step)
        if self.time_to_first_step_s is None:
            # From the driver's launch of the trainer: worker start-up, model load, engine.
            self.time_to_first_step_s = time.time() - self.launch_time

    def train_s(self) -> float:
        """Training time over every attempt, until now."""
        return self.train_s_before + time.perf_counter() - self.t_start


@dataclass
class LogWindow:
    """Loss and tokens of the micro-steps since the last log line."""

    loss: Any = 0.0
    micro_steps: int = 0
    tokens: int = 0
    t_start: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        # Accumulated on the device and counted from the host copy: a .item() per
        # micro-step would make the CPU wait for the GPU at every step.
        self.loss += loss.detach().float()
        self.micro_steps += 1
        self.tokens += tokens

    def flush(self, worker: Worker, engine, state: ckpt.TrainState, steps_per_epoch: int,
              n_params: int, n_trainable: int) -> dict[str, float]:
        """The window's metrics over every rank (a collective); starts a new window."""
        # One all-reduce per log line: mean loss and total tokens over every rank.
        loss_sum, n_micro, tokens = worker.all_reduce_sum(
            [float(self.loss), self.micro_steps, self.tokens])
        elapsed = time.perf_counter() - self.t_start
        state.train_tokens += int(tokens)
        metrics = {
            "train_loss": loss_sum / n_micro,
            "tokens_per_s": tokens / elapsed,
            "tokens_per_s_per_worker": tokens / elapsed / worker.world_size,
            "lr": engine.get_lr()[0],
            "epoch": state.step / steps_per_epoch,  # epochs completed after this step
        }
        achieved = mfu(tokens / elapsed, n_params, n_trainable, worker.world_size,
                       worker.device_name)
        if worker.cuda and achieved is not None:
            metrics["mfu"] = achieved
        self.loss, self.micro_steps, self.tokens, self.t_start = 0.0, 0, 0, time.perf_counter()
        return metrics


def report_progress(worker: Worker, progress, metrics: dict, total_steps: int) -> None:
    """Rank 0's log line: to the driver's progress bar when it shows one, else to stdout."""
    if progress is not None:
        # An unbounded queue: the put returns once the queue's actor holds the line.
        progress.put_nowait({**metrics, "total_steps": total_steps})
        return
    worker.print(f"step {metrics['step']}/{total_steps} "
                 + " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "step"))


def _validation_sums(engine, split: dict, rows: np.ndarray, micro_batch_size: int,
                     worker: Worker) -> tuple[float, float]:
    """(summed token loss, tokens) over ``rows`` of the validation split, on every rank.

    Every rank runs the same number of forward passes (padding its shard with zero-weight
    rows): under ZeRO-3 each forward gathers parameters collectively, so an uneven count hangs.
    """
    shard = rows[worker.rank::worker.world_size]
    n_batches = math.ceil(math.ceil(len(rows) / worker.world_size) / micro_batch_size)
    loss_sum = tokens = 0.0
    for b in range(n_batches):
        part = shard[b * micro_batch_size : (b + 1) * micro_batch_size]
        weight = 1.0 if len(part) else 0.0
        batch = worker.to_device(split, part if len(part) else rows[:1])
        out = engine(**batch)
        # HF's loss is a mean over this batch's predicted tokens; undo it to weight by tokens.
        n_tok = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss_sum += weight * float(out.loss) * n_tok
        tokens += weight * n_tok
    loss_sum, tokens = worker.all_reduce_sum([loss_sum, tokens])
    return loss_sum, tokens


def validation_loss(engine, split: dict, task_names: list[str], micro_batch_size: int,
                    worker: Worker) -> tuple[float, dict[str, float]]:
    """Token-weighted mean loss over the whole validation split, and per task; the same on
    every rank."""
    task = split.get("task")
    task = np.zeros(len(split["input_ids"]), dtype=np.int16) if task is None else task
    per_task: dict[str, float] = {}
    loss_sum = tokens = 0.0
    engine.eval()
    with torch.no_grad():
        for t, name in enumerate(task_names):
            rows = np.flatnonzero(task == t)
            if not len(rows):
                continue
            s, n = _validation_sums(engine, split, rows, micro_batch_size, worker)
            per_task[name] = s / max(n, 1.0)
            loss_sum, tokens = loss_sum + s, tokens + n
    engine.train()
    return loss_sum / max(tokens, 1.0), per_task


def build_summary(cfg: TrainingConfig, worker: Worker, plan: BatchPlan, mixture: Mixture,
                  state: ckpt.TrainState, clock: StepClock, train: dict, val: dict | None,
                  steps: int, planned_steps: int, resumed_from_step: int, n_params: int,
                  n_trainable: int, val_by_task: dict[str, float], bf16: bool) -> TrainingSummary:
    """What the stage did, from the state it ended in (the export check is added later)."""
    counts = np.array(state.task_counts, dtype=np.int64)
    tokens_per_s = state.train_tokens / state.train_s
    history = state.history
    return TrainingSummary(
        steps=steps,
        planned_steps=planned_steps,
        stopped_early_at=steps if steps < planned_steps else None,
        resumed_from_step=resumed_from_step,
        method=cfg.method,
        parameters=n_params,
        trainable_parameters=n_trainable,
        train_tokens=state.train_tokens,
        train_s=state.train_s,
        time_to_first_step_s=clock.time_to_first_step_s,
        step_time_s=clock.step_time_s,
        tokens_per_s=tokens_per_s,
        tokens_per_s_per_worker=tokens_per_s / worker.world_size,
        mfu=mfu(tokens_per_s, n_params, n_trainable, worker.world_size, worker.device_name)
        if worker.cuda else None,
        device=worker.device_name,
        peak_gpu_memory_mb=torch.cuda.max_memory_allocated(worker.device) / 2**20
        if worker.cuda else None,
        # Gathered before the export, which reloads the model on rank 0 to check it.
        peak_rss_mb=worker.peak_rss_mb(),
        placement=state.placement,
        global_batch_size=plan.global_batch_size,
        world_size=worker.world_size,
        bf16=bf16,
        use_gpu=worker.cuda,
        train_sequences=mixture.epoch_size,
        val_sequences=len(val["input_ids"]) if val is not None else 0,
        train_loss_tokens=int((train["labels"] != IGNORE_INDEX).sum()),
        final_train_loss=next((h["train_loss"] for h in reversed(history) if "train_loss" in h),
                              None),
        final_val_loss=next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
        kind=cfg.kind,
        reward_accuracy=next((h["val_reward_accuracy"] for h in reversed(history)
                              if "val_reward_accuracy" in h), None),
        reward_margin=next((h["val_reward_margin"] for h in reversed(history)
                            if "val_reward_margin" in h), None),
        val_loss_by_task=val_by_task,
        mix={
            "target": dict(zip(mixture.names, mixture.probabilities, strict=True)),
            "realised": dict(zip(mixture.names, (counts / max(counts.sum(), 1)).tolist(),
                                 strict=True)),
            "sequences": dict(zip(mixture.names, counts.tolist(), strict=True)),
        },
        history=history,
    )
