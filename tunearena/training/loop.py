"""What every Ray Train worker runs: one DeepSpeed engine, one data-parallel rank.

The loop is kept in one function on purpose, so gradient accumulation, loss normalisation
and every collective can be read top to bottom.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from tunearena.training import checkpoint as ckpt
from tunearena.training.batch import BatchPlan
from tunearena.training.config import TrainingConfig
from tunearena.training.data import IGNORE_INDEX
from tunearena.training.ds_config import build_ds_config, build_lr_scheduler
from tunearena.training.export import (
    ADAPTER_DIR,
    batch_loss,
    check_losses_match,
    export,
    merge_adapter,
    reload_loss,
)
from tunearena.training.mixture import Mixture, count_tasks, epoch_order
from tunearena.training.model import count_parameters, load_model
from tunearena.training.throughput import mfu
from tunearena.training.tracking import Tracker

EXPORT_MARKER = "tunearena_export.json"
"""Written into a reported checkpoint that is a Hugging Face model dir (not DeepSpeed state)."""


def rank_zero_print(rank: int, message: str) -> None:
    """Only rank 0 speaks, so the driver's console shows one line per event.

    Written to stdout directly: Ray Train patches ``print`` into a logger whose output the
    driver would otherwise show twice.
    """
    if rank == 0:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def worker_placement(rank: int, device: torch.device) -> list[dict]:
    """Every rank's node, process and device, gathered on every rank (in rank order)."""
    here = {"rank": rank, "node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "device": str(device)}
    placement: list = [None] * dist.get_world_size()
    dist.all_gather_object(placement, here)
    return placement


def export_tolerance(cfg: TrainingConfig, bf16: bool) -> float:
    """How far (relative) a reloaded export's loss may stray from the engine's.

    fp32 on the same CPU agrees to rounding; bf16 reloads on the CPU, not the GPU, and a
    QLoRA adapter trained on a 4-bit base is reloaded on the bf16 base it will be used with.
    """
    if cfg.method == "qlora":
        return 0.15
    return 5e-2 if bf16 else 1e-3


def _to_device(split: dict, rows: np.ndarray, device: torch.device) -> dict:
    # From pinned memory the copy is queued behind the running kernels; from pageable memory
    # the CPU would wait for all of them (the previous optimizer step) before going on.
    pin = device.type == "cuda"

    def put(array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.as_tensor(array, dtype=dtype)
        return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    return {
        "input_ids": put(split["input_ids"][rows], torch.long),
        "labels": put(split["labels"][rows], torch.long),
        "attention_mask": put(split["attention_mask"][rows]),
    }


def _validation_sums(engine, split: dict, rows: np.ndarray, micro_batch_size: int, rank: int,
                     world_size: int, device: torch.device) -> tuple[float, float]:
    """(summed token loss, tokens) over ``rows`` of the validation split, on every rank.

    Every rank runs the same number of forward passes (padding its shard with zero-weight
    rows): under ZeRO-3 each forward gathers parameters collectively, so an uneven count hangs.
    """
    shard = rows[rank::world_size]
    n_batches = math.ceil(math.ceil(len(rows) / world_size) / micro_batch_size)
    loss_sum = tokens = 0.0
    for b in range(n_batches):
        part = shard[b * micro_batch_size : (b + 1) * micro_batch_size]
        weight = 1.0 if len(part) else 0.0
        batch = _to_device(split, part if len(part) else rows[:1], device)
        out = engine(**batch)
        # HF's loss is a mean over this batch's predicted tokens; undo it to weight by tokens.
        n_tok = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss_sum += weight * float(out.loss) * n_tok
        tokens += weight * n_tok
    loss_sum, tokens = _all_reduce_sum([loss_sum, tokens], device)
    return loss_sum, tokens


def validation_loss(engine, split: dict, task_names: list[str], micro_batch_size: int, rank: int,
                    world_size: int, device: torch.device) -> tuple[float, dict[str, float]]:
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
            s, n = _validation_sums(engine, split, rows, micro_batch_size, rank, world_size, device)
            per_task[name] = s / max(n, 1.0)
            loss_sum, tokens = loss_sum + s, tokens + n
    engine.train()
    return loss_sum / max(tokens, 1.0), per_task


def train_loop_per_worker(config: dict) -> None:
    """Train one stage; report metrics and checkpoints to Ray Train; export on rank 0.

    Starts from the latest checkpoint when Ray Train has one (a restart after a failure, or a
    resumed run), so the same step, lr and data position continue.
    """
    import deepspeed
    import transformers
    from deepspeed.accelerator import get_accelerator
    from transformers import AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    transformers.utils.logging.disable_progress_bar()

    cfg = TrainingConfig.model_validate(config["training"])
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(cfg.seed)
    data = ray.get(config["data_ref"])
    train, val = data["train"], data.get("val")
    is_lora = cfg.method != "full"

    mixture = Mixture(**config["mixture"])
    task_of_row = train["task"] if train.get("task") is not None else np.zeros(
        len(train["input_ids"]), dtype=np.int16)
    plan = BatchPlan(cfg.micro_batch_size, cfg.grad_accum_steps, world_size)
    n_train = mixture.epoch_size  # sequences one epoch visits
    steps_per_epoch = plan.steps_per_epoch(n_train)
    total_steps = plan.total_steps(n_train, cfg.epochs, cfg.max_steps)
    bf16 = config["bf16"]
    ds_config = build_ds_config(cfg, world_size, total_steps, bf16=bf16, cuda=device.type == "cuda")

    # DeepSpeed's comm layer must wrap Ray Train's process group before zero.Init (inside
    # from_pretrained under ZeRO-3) parses the config; otherwise it sees world size 1 and
    # rejects train_batch_size. deepspeed.initialize makes the same call, a no-op after this.
    deepspeed.init_distributed(
        dist_backend=get_accelerator().communication_backend_name(), dist_init_required=False
    )
    # Under ZeRO-3 this object must exist before from_pretrained, so weights are partitioned
    # as they load instead of materialising the full model on every rank.
    hf_ds_config = HfDeepSpeedConfig(ds_config) if cfg.zero_stage == 3 else None  # noqa: F841
    model = load_model(config["model_dir"], cfg, bf16, config.get("init_adapter"))
    n_params, n_trainable = count_parameters(model)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lambda optimizer: build_lr_scheduler(optimizer, cfg, total_steps),
        dist_init_required=False,  # Ray Train already created the process group.
    )
    # Loading is done: a from_pretrained after this (the export check) must not partition.
    unset_hf_deepspeed_config()
    placement = worker_placement(rank, device)

    rank_zero_print(
        rank,
        f"training: {total_steps} steps, {n_train} sequences an epoch of "
        f"{train['input_ids'].shape[1]} tokens"
        + (" (" + ", ".join(f"{n} {p:.0%}" for n, p in zip(mixture.names, mixture.probabilities,
                                                         strict=True)) + ")"
           if mixture.weighted else "")
        + f", global batch {plan.global_batch_size} ({cfg.micro_batch_size} x "
        f"{cfg.grad_accum_steps} accum x {world_size} workers), ZeRO-{cfg.zero_stage}, "
        f"{cfg.method} ({n_trainable:,} of {n_params:,} parameters train), "
        f"{'bf16' if bf16 else 'fp32'} on {device.type}",
    )
    for w in placement:
        rank_zero_print(rank, f"  rank {w['rank']}: node {w['node_ip']} ({w['node_id'][:8]}) "
                              f"pid {w['pid']} {w['device']}")

    # -- resume ----------------------------------------------------------------------------
    start_step, history, mlflow_run_id = 0, [], None
    train_s_before = tokens_before = 0.0
    task_counts = np.zeros(len(mixture.names), dtype=np.int64)  # sequences drawn per task
    best_val, bad_evals = math.inf, 0  # early stopping
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = ckpt.load(engine, Path(d), rank, world_size, exclude_frozen=is_lora)
        start_step, history = state["step"], state["history"]
        train_s_before, tokens_before = state["train_s"], state["train_tokens"]
        mlflow_run_id = state.get("mlflow_run_id")
        task_counts = np.array(state.get("task_counts", task_counts), dtype=np.int64)
        best_val, bad_evals = state.get("best_val", math.inf), state.get("bad_evals", 0)
        rank_zero_print(rank, f"resumed from the checkpoint at step {start_step}")
    tracker = (Tracker.open(cfg.tracking, config["run_name"], cfg.model_dump(mode="json"),
                            resume_run_id=mlflow_run_id) if rank == 0 else None)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type

    # -- train -----------------------------------------------------------------------------
    order: np.ndarray | None = None
    t_start = time.perf_counter()
    t_first_step = None
    step_time_s: list[float] = []  # wall time of each optimizer step, as rank 0 saw it
    window_loss, window_micro, window_tokens, t_window = 0.0, 0, 0, time.perf_counter()
    total_tokens = 0
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
        task_counts += count_tasks(task_of_row, order[step_in_epoch * plan.global_batch_size:
                                                      (step_in_epoch + 1) * plan.global_batch_size],
                                   len(mixture.names))
        t_step = time.perf_counter()
        for micro in range(cfg.grad_accum_steps):
            rows = order[plan.rank_slice(step_in_epoch, micro, rank)]
            batch = _to_device(train, rows, device)
            loss = engine(**batch).loss
            # DeepSpeed divides the loss by grad_accum_steps before backward and only applies
            # the optimizer (after averaging gradients over ranks) at the accumulation boundary.
            engine.backward(loss)
            engine.step()
            # Accumulated on the device and counted from the host copy: a .item() per
            # micro-step would make the CPU wait for the GPU at every step.
            window_loss += loss.detach().float()
            window_micro += 1
            window_tokens += int(train["attention_mask"][rows].sum())
        step_time_s.append(time.perf_counter() - t_step)
        if t_first_step is None:
            # From the driver's launch of the trainer: worker start-up, model load, engine.
            t_first_step = time.time() - config["launch_time"]
        last = step + 1 == total_steps
        metrics: dict = {"step": step + 1}
        if (step + 1) % cfg.log_every_steps == 0 or last:
            # One all-reduce per log line: mean loss and total tokens over every rank.
            loss_sum, n_micro, tokens = _all_reduce_sum(
                [float(window_loss), window_micro, window_tokens], device
            )
            elapsed = time.perf_counter() - t_window
            total_tokens += int(tokens)
            metrics |= {
                "train_loss": loss_sum / n_micro,
                "tokens_per_s": tokens / elapsed,
                "tokens_per_s_per_worker": tokens / elapsed / world_size,
                "lr": engine.get_lr()[0],
                "epoch": (step + 1) / steps_per_epoch,  # epochs completed after this step
            }
            achieved = mfu(tokens / elapsed, n_params, n_trainable, world_size, device_name)
            if device.type == "cuda" and achieved is not None:
                metrics["mfu"] = achieved
            window_loss, window_micro, window_tokens, t_window = 0.0, 0, 0, time.perf_counter()
        if val is not None and ((step + 1) % cfg.eval_every_steps == 0 or last):
            metrics["val_loss"], val_by_task = validation_loss(
                engine, val, list(mixture.names), cfg.micro_batch_size, rank, world_size, device
            )
            if len(val_by_task) > 1:
                metrics |= {f"val_loss/{name}": loss for name, loss in val_by_task.items()}
            # The same numbers on every rank, so every rank takes the same decision.
            if metrics["val_loss"] < best_val - cfg.early_stopping_min_delta:
                best_val, bad_evals = metrics["val_loss"], 0
            else:
                bad_evals += 1
            if (cfg.early_stopping_patience is not None and not last
                    and bad_evals >= cfg.early_stopping_patience):
                stopped_early_at = step + 1
        if len(metrics) > 1:
            history.append(metrics)
            if tracker is not None:
                tracker.log(metrics, step + 1)
            rank_zero_print(
                rank,
                f"step {step + 1}/{total_steps} "
                + " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "step"),
            )
        if stopped_early_at is not None:
            rank_zero_print(rank, f"early stop at step {stopped_early_at}: validation loss has "
                                  f"not improved on {best_val:.4g} for {bad_evals} validations")
            break
        if cfg.checkpoint_every_steps and (step + 1) % cfg.checkpoint_every_steps == 0 and not last:
            state = {
                "step": step + 1, "world_size": world_size,
                "global_batch_size": plan.global_batch_size, "history": history,
                "train_s": train_s_before + time.perf_counter() - t_start,
                "train_tokens": tokens_before + total_tokens,
                "mlflow_run_id": tracker.mlflow_run_id if tracker is not None else None,
                "placement": placement,
                "task_counts": task_counts.tolist(), "best_val": best_val, "bad_evals": bad_evals,
            }
            with tempfile.TemporaryDirectory() as tmp:
                ckpt.save(engine, Path(tmp), rank, state, exclude_frozen=is_lora)
                # Every rank reports its own files; Ray merges them into one checkpoint dir.
                ray.train.report(
                    {"step": step + 1, "world_size": world_size,
                     "global_batch_size": plan.global_batch_size},
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=ckpt.checkpoint_dir_name(step + 1),
                )

    train_s = train_s_before + time.perf_counter() - t_start
    total_tokens += int(tokens_before)
    steps_run = stopped_early_at or total_steps
    summary = {
        "steps": steps_run,
        "planned_steps": total_steps,
        "stopped_early_at": stopped_early_at,
        "resumed_from_step": start_step,
        "method": cfg.method,
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "train_tokens": total_tokens,
        "train_s": train_s,
        "time_to_first_step_s": t_first_step,
        "step_time_s": step_time_s,
        "tokens_per_s": total_tokens / train_s,
        "tokens_per_s_per_worker": total_tokens / train_s / world_size,
        "mfu": mfu(total_tokens / train_s, n_params, n_trainable, world_size, device_name)
        if device.type == "cuda" else None,
        "device": device_name,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda" else None,
        "placement": placement,
        "global_batch_size": plan.global_batch_size,
        "world_size": world_size,
        "bf16": bf16,
        "use_gpu": device.type == "cuda",
        "train_sequences": n_train,
        "val_sequences": len(val["input_ids"]) if val is not None else 0,
        "train_loss_tokens": int((train["labels"] != IGNORE_INDEX).sum()),
        "final_train_loss": next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None),
        "final_val_loss": next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
        "val_loss_by_task": val_by_task,
        "mix": {
            "target": dict(zip(mixture.names, mixture.probabilities, strict=True)),
            "realised": dict(zip(mixture.names, (task_counts / max(task_counts.sum(), 1)).tolist(),
                                 strict=True)),
            "sequences": dict(zip(mixture.names, task_counts.tolist(), strict=True)),
        },
        "history": history,
    }

    # -- export ----------------------------------------------------------------------------
    # The loss of the trained engine on one fixed sequence (a collective under ZeRO-3: every
    # rank runs the same forward); the export must reproduce it when reloaded.
    check_split = val if val is not None else train
    check_batch = _to_device(check_split, np.array([0]), device)
    check_batch = {k: v[:, :512] for k, v in check_batch.items()}
    trained_loss = batch_loss(engine, check_batch)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        written = export(engine, cfg.zero_stage, is_lora, out, rank)  # a collective
        checkpoint = None
        if rank == 0:
            dtype = torch.bfloat16 if bf16 else torch.float32
            tolerance = export_tolerance(cfg, bf16)
            checks = []
            if is_lora:
                checks.append(check_losses_match(
                    "adapter", trained_loss,
                    reload_loss(out / ADAPTER_DIR, check_batch, dtype, config["model_dir"]),
                    tolerance))
                if cfg.lora.merge:
                    merge_adapter(config["model_dir"], out / ADAPTER_DIR, out, dtype)
            if not is_lora or cfg.lora.merge:
                checks.append(check_losses_match(
                    "model", trained_loss, reload_loss(out, check_batch, dtype), tolerance))
            tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
            tokenizer.save_pretrained(out)
            if is_lora:
                tokenizer.save_pretrained(out / ADAPTER_DIR)
            summary["export_check"] = checks
            (out / EXPORT_MARKER).write_text(json.dumps({"tensors": written, **summary}))
            checkpoint = ray.train.Checkpoint.from_directory(out)
            rank_zero_print(rank, "export verified: " + ", ".join(
                f"{c['what']} loss {c['reloaded_loss']:.6g} (trained {c['trained_loss']:.6g})"
                for c in checks))
        if tracker is not None:
            tracker.close()
        ray.train.report(
            {"step": steps_run, "world_size": world_size,
             "global_batch_size": plan.global_batch_size, "exported": True},
            checkpoint=checkpoint, checkpoint_dir_name="export",
        )
