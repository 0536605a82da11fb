"""The DeepSpeed config and the learning-rate schedule, pure functions of the training config."""

from __future__ import annotations

import math

import torch

from tunearena.training.batch import BatchPlan
from tunearena.training.config import TrainingConfig

DEEPSPEED_BUCKET_ELEMENTS = 500_000_000
"""DeepSpeed's default ``reduce_bucket_size`` and ``allgather_bucket_size`` (elements)."""
MIN_BUCKET_ELEMENTS = 2**20
"""The smallest bucket we size (4 MiB in fp32): below it a bucket saves nothing worth having."""


def bucket_elements(trainable_params: int) -> int:
    """The communication bucket, in elements, for ``trainable_params`` trainable parameters.

    DeepSpeed allocates its gradient bucket at full size whatever trains: under ZeRO-2 with
    ``overlap_comm`` two buffers of ``reduce_bucket_size`` elements per rank, under ZeRO-1 and
    ZeRO-3 one, i.e. 4 GB (fp32) for its 5e8 default, while a 135M model's LoRA adapters have
    5M gradients. A bucket as large as every trainable gradient already reduces them all in
    one collective, which is what the default does for any model under 5e8 trainable
    parameters, so no larger bucket changes the communication; the size is rounded up to a
    multiple of the floor (which also keeps it even, as the all-gather's alignment needs).
    """
    rounded = -(-max(trainable_params, 1) // MIN_BUCKET_ELEMENTS) * MIN_BUCKET_ELEMENTS
    return min(DEEPSPEED_BUCKET_ELEMENTS, rounded)


def build_ds_config(
    cfg: TrainingConfig, world_size: int, total_steps: int, bf16: bool, cuda: bool = False,
    trainable_params: int | None = None,
) -> dict:
    """A DeepSpeed config dict for ``cfg`` on ``world_size`` ranks running ``total_steps``.

    DeepSpeed checks ``train_batch_size == micro x accum x world_size`` itself; we state all
    three so a mismatch fails at start-up rather than silently changing the batch. The
    schedule is not in here: see ``build_lr_scheduler``. The communication buckets are
    ``cfg.comm_bucket_elements``, else sized to ``trainable_params`` (``bucket_elements``),
    else (count unknown, as under ZeRO-3 before the model exists) DeepSpeed's default.
    """
    plan = BatchPlan(cfg.micro_batch_size, cfg.grad_accum_steps, world_size)
    zero: dict = {"stage": cfg.zero_stage}
    bucket = cfg.comm_bucket_elements or (
        bucket_elements(trainable_params) if trainable_params is not None else None)
    if cfg.zero_stage >= 1 and bucket is not None:
        zero |= {"reduce_bucket_size": bucket}
        if cfg.zero_stage < 3:  # ZeRO-3 gathers by prefetch bucket, not this one
            zero |= {"allgather_bucket_size": bucket + bucket % 2}
    if cfg.zero_stage >= 2:
        zero |= {"contiguous_gradients": True, "overlap_comm": True}
    if cfg.zero_stage == 3:
        # Export gathers the partitioned parameters on rank 0 (see export.py).
        zero |= {"stage3_gather_16bit_weights_on_model_save": True}
    for key, where in (("offload_optimizer", cfg.offload_optimizer),
                       ("offload_param", cfg.offload_params)):
        if where != "none":
            zero[key] = {"device": where, "pin_memory": cuda}
            if where == "nvme":
                zero[key]["nvme_path"] = str(cfg.nvme_path)
    offload = (cfg.offload_optimizer, cfg.offload_params) != ("none", "none")
    return {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: DeepSpeed's own fused Adam needs a JIT-compiled op.
            "params": {
                "lr": cfg.lr,
                "betas": [0.9, 0.95],
                "eps": 1e-8,
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
                # torch's single-kernel AdamW on CUDA; the CPU (and offloaded states) has none.
                "fused": cuda and not offload,
            },
        },
        # With offload DeepSpeed insists on its own CPU Adam, a C++ op compiled at start-up
        # (minutes, and a compiler on every node); torch's AdamW steps the offloaded fp32
        # states on the CPU just as well for the sizes we train.
        **({"zero_force_ds_cpu_optimizer": False} if offload else {}),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # Its throughput timer synchronises the device at every forward and step, only to
        # print at steps_per_print; the loop measures throughput itself.
        "timers": {"throughput": {"enabled": False}},
    }


def lr_ratio(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float,
             schedule: str = "cosine") -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (the first step already trains), then a ``cosine``
    or ``linear`` decay that reaches ``min_lr_ratio`` at the last step, or ``constant``.
    DeepSpeed's own WarmupCosineLR is not used: it gives lr 0 to the first two steps even
    with no warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule as a torch scheduler; DeepSpeed steps it once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_ratio(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio,
                              cfg.lr_schedule),
    )
