"""The plain ``torchrun`` + DeepSpeed loop that ``bench/overhead.py`` measures Ray against.

    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/torchrun_baseline.py \
        --model-dir DIR --config cfg.json --data train.npz --launch-time T --out result.json

The same math as ``tunearena.training.loop``: the model dir loaded by the same
``load_model``, the same token arrays (an .npz the parent wrote from ``prepare_data``), the
DeepSpeed config of ``build_ds_config``, the lr schedule of ``build_lr_scheduler``, the same
data order and the same torch/OpenMP thread count per rank, and optionally the niceness Ray gives its workers. Nothing else: no Ray, no checkpoints, no export. Rank 0 writes the wall time
of each optimizer step (timed at the same points as the Ray loop), the time from the parent's
launch to the end of the first step, and the final train loss (mean of the last log window).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tunearena.training.batch import BatchPlan
from tunearena.training.config import TrainingConfig
from tunearena.training.ds_config import build_ds_config, build_lr_scheduler
from tunearena.training.memory import needs_lean_heap
from tunearena.training.model import count_parameters, load_model
from tunearena.training.worker import keep_mmap_threshold


def to_batch(arrays: dict, rows: np.ndarray) -> dict:
    return {
        "input_ids": torch.as_tensor(arrays["input_ids"][rows], dtype=torch.long),
        "labels": torch.as_tensor(arrays["labels"][rows], dtype=torch.long),
        "attention_mask": torch.as_tensor(arrays["attention_mask"][rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--config", type=Path, required=True, help="TrainingConfig as JSON")
    parser.add_argument("--data", type=Path, required=True, help=".npz of the training split")
    parser.add_argument("--launch-time", type=float, required=True,
                        help="the parent's time.time() just before it started torchrun")
    parser.add_argument("--out", type=Path, required=True, help="rank 0 writes its JSON here")
    parser.add_argument("--nice", type=int, default=0,
                        help="raise this rank's niceness by N (Ray starts its workers at 15)")
    args = parser.parse_args()
    os.nice(args.nice)

    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from transformers.integrations import HfDeepSpeedConfig

    # What a Ray worker gets from worker_env: OMP_NUM_THREADS = its reserved CPUs.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = TrainingConfig.model_validate_json(args.config.read_text())
    torch.manual_seed(cfg.seed)
    with np.load(args.data) as npz:
        train = {k: npz[k] for k in ("input_ids", "labels", "attention_mask")}

    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    rank, world_size = dist.get_rank(), dist.get_world_size()
    plan = BatchPlan(cfg.micro_batch_size, cfg.grad_accum_steps, world_size)
    n_train = len(train["input_ids"])
    steps_per_epoch = plan.steps_per_epoch(n_train)
    total_steps = plan.total_steps(n_train, cfg.epochs, cfg.max_steps)
    ds_config = build_ds_config(cfg, world_size, total_steps, bf16=False)
    # As in the Ray loop: under ZeRO-3 weights are partitioned as they load.
    hf_ds_config = HfDeepSpeedConfig(ds_config) if cfg.zero_stage == 3 else None  # noqa: F841
    model = load_model(args.model_dir, cfg, bf16=False)
    # As in the Ray loop: buckets sized to what trains, and glibc's mmap threshold fixed
    # where the activations are large.
    ds_config = build_ds_config(cfg, world_size, total_steps, bf16=False,
                                trainable_params=count_parameters(model)[1])
    if needs_lean_heap(args.model_dir, cfg, world_size, use_gpu=False):
        keep_mmap_threshold()
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lambda optimizer: build_lr_scheduler(optimizer, cfg, total_steps),
    )

    order = None
    t_start = time.perf_counter()
    t_first_step = None
    step_time_s: list[float] = []
    window_loss, window_micro, window_tokens = 0.0, 0, 0
    final_train_loss = None
    engine.train()
    for step in range(total_steps):
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        if order is None or step_in_epoch == 0:
            order = np.random.default_rng(cfg.seed + epoch).permutation(n_train)
        t_step = time.perf_counter()
        for micro in range(cfg.grad_accum_steps):
            rows = order[plan.rank_slice(step_in_epoch, micro, rank)]
            loss = engine(**to_batch(train, rows)).loss
            engine.backward(loss)
            engine.step()
            window_loss += loss.detach().float()
            window_micro += 1
            window_tokens += int(train["attention_mask"][rows].sum())
        step_time_s.append(time.perf_counter() - t_step)
        if t_first_step is None:
            t_first_step = time.time() - args.launch_time
        if (step + 1) % cfg.log_every_steps == 0 or step + 1 == total_steps:
            # The Ray loop's log line: one all-reduce of the window's loss over every rank.
            t = torch.tensor([float(window_loss), window_micro, window_tokens], dtype=torch.float64)
            dist.all_reduce(t)
            final_train_loss = t[0].item() / t[1].item()
            window_loss, window_micro, window_tokens = 0.0, 0, 0
    train_s = time.perf_counter() - t_start

    if rank == 0:
        args.out.write_text(json.dumps({
            "steps": total_steps,
            "world_size": world_size,
            "train_s": train_s,
            "time_to_first_step_s": t_first_step,
            "step_time_s": step_time_s,
            "final_train_loss": final_train_loss,
            "torch_threads": torch.get_num_threads(),
        }))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
