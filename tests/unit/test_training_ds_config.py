"""build_ds_config: a pure function of the training config, checked per ZeRO stage.

The dicts are also fed to DeepSpeed's own parser (``DeepSpeedConfig``) and the scheduler
parameters to DeepSpeed's own ``WarmupCosineLR``, so a key DeepSpeed renames or rejects fails
here rather than on a cluster.
"""

from __future__ import annotations

import pytest
import torch
from deepspeed.runtime.config import DeepSpeedConfig

from tunearena.training.config import TrainingConfig
from tunearena.training.ds_config import (
    DEEPSPEED_BUCKET_ELEMENTS,
    MIN_BUCKET_ELEMENTS,
    bucket_elements,
    build_ds_config,
    build_lr_scheduler,
    lr_ratio,
)


def make_cfg(**overrides) -> TrainingConfig:
    return TrainingConfig(datasets=[{"path": "train.jsonl"}], **overrides)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_section_per_stage(stage):
    zero = build_ds_config(make_cfg(zero_stage=stage), 2, 10, bf16=False)["zero_optimization"]
    assert zero["stage"] == stage
    # Stages 2 and 3 partition gradients: bucket them contiguously and overlap the reduction.
    assert zero.get("contiguous_gradients", False) is (stage >= 2)
    assert zero.get("overlap_comm", False) is (stage >= 2)
    # Only ZeRO-3 partitions parameters, so only it must gather them for a saved model.
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)


@pytest.mark.parametrize(("micro", "accum", "world"), [(1, 1, 1), (8, 1, 2), (2, 4, 3), (4, 2, 16)])
def test_batch_sizes_are_consistent(micro, accum, world):
    cfg = make_cfg(micro_batch_size=micro, grad_accum_steps=accum)
    ds = build_ds_config(cfg, world, 10, bf16=False)
    assert ds["train_micro_batch_size_per_gpu"] == micro
    assert ds["gradient_accumulation_steps"] == accum
    assert ds["train_batch_size"] == micro * accum * world


@pytest.mark.parametrize("bf16", [True, False])
def test_precision_flags(bf16):
    ds = build_ds_config(make_cfg(), 2, 10, bf16=bf16)
    assert ds["bf16"] == {"enabled": bf16}
    assert ds["fp16"] == {"enabled": False}  # fp16 is never used: bf16 on GPU, fp32 on CPU


@pytest.mark.parametrize("clip", [0.0, 0.5, 1.0])
def test_gradient_clipping(clip):
    assert build_ds_config(make_cfg(grad_clip=clip), 2, 10, bf16=False)["gradient_clipping"] == clip


def test_optimizer_carries_the_training_config():
    cfg = make_cfg(lr=3e-4, weight_decay=0.1)
    opt = build_ds_config(cfg, 2, 10, bf16=False)["optimizer"]
    assert opt["type"] == "AdamW"
    assert opt["params"]["lr"] == 3e-4
    assert opt["params"]["weight_decay"] == 0.1
    assert opt["params"]["torch_adam"] is True  # no compiled fused Adam on CPU


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("bf16", [True, False])
def test_deepspeed_parser_accepts_the_config(stage, bf16):
    # Outside a process group DeepSpeedConfig assumes world size 1, so its own check of
    # train_batch_size == micro x accum x world can only be run for world_size=1 here; the
    # integration tests run the generated config on two real ranks.
    cfg = make_cfg(zero_stage=stage, micro_batch_size=2, grad_accum_steps=3, grad_clip=0.5)
    parsed = DeepSpeedConfig(build_ds_config(cfg, 1, 20, bf16=bf16))
    assert parsed.world_size == 1
    assert parsed.train_batch_size == 6
    assert parsed.train_micro_batch_size_per_gpu == 2
    assert parsed.gradient_accumulation_steps == 3
    assert parsed.zero_optimization_stage == stage
    assert parsed.zero_config.gather_16bit_weights_on_model_save is (stage == 3)
    assert parsed.bfloat16_config.enabled is bf16
    assert parsed.gradient_clipping == 0.5
    assert parsed.optimizer_name == "adamw"
    assert parsed.scheduler_name is None  # the schedule is handed to deepspeed.initialize


def test_deepspeed_parser_rejects_a_world_size_mismatch():
    # The reason build_ds_config states all three batch numbers: a wrong world size fails.
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        DeepSpeedConfig(build_ds_config(make_cfg(), 2, 20, bf16=False))


# SmolLM2-135M's parameter counts: all of them, and its rank-16 all-linear LoRA adapters.
SMOLLM2_PARAMS = 134_515_008
SMOLLM2_LORA_PARAMS = 4_884_480


@pytest.mark.parametrize(("trainable", "bucket"), [
    (SMOLLM2_LORA_PARAMS, 5 * MIN_BUCKET_ELEMENTS),  # rounded up to whole MiB of elements
    (SMOLLM2_PARAMS, 129 * MIN_BUCKET_ELEMENTS),
    (1_000, MIN_BUCKET_ELEMENTS),  # the floor
    (7_000_000_000, DEEPSPEED_BUCKET_ELEMENTS),  # never above DeepSpeed's own default
])
def test_bucket_holds_every_trainable_gradient_within_bounds(trainable, bucket):
    assert bucket_elements(trainable) == bucket
    assert bucket >= min(trainable, DEEPSPEED_BUCKET_ELEMENTS) and bucket % 2 == 0


@pytest.mark.parametrize("stage", [1, 2])
def test_buckets_follow_the_trainable_count_lora_against_full(stage):
    cfg = make_cfg(zero_stage=stage)
    lora = build_ds_config(cfg, 2, 10, bf16=False, trainable_params=SMOLLM2_LORA_PARAMS)
    full = build_ds_config(cfg, 2, 10, bf16=False, trainable_params=SMOLLM2_PARAMS)
    for ds, trainable in ((lora, SMOLLM2_LORA_PARAMS), (full, SMOLLM2_PARAMS)):
        zero = ds["zero_optimization"]
        assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"]
        assert trainable <= zero["reduce_bucket_size"] < trainable + MIN_BUCKET_ELEMENTS
    # LoRA's buckets are 26x smaller than full fine-tuning's, and 100x below DeepSpeed's.
    assert lora["zero_optimization"]["reduce_bucket_size"] * 25 < \
        full["zero_optimization"]["reduce_bucket_size"]
    assert lora["zero_optimization"]["reduce_bucket_size"] * 95 < DEEPSPEED_BUCKET_ELEMENTS


def test_zero3_sizes_its_reduce_bucket_and_zero0_has_none():
    zero3 = build_ds_config(make_cfg(zero_stage=3), 2, 10, bf16=False,
                            trainable_params=SMOLLM2_LORA_PARAMS)["zero_optimization"]
    assert zero3["reduce_bucket_size"] == 5 * MIN_BUCKET_ELEMENTS
    assert "allgather_bucket_size" not in zero3  # ZeRO-3 gathers by its prefetch bucket
    zero0 = build_ds_config(make_cfg(zero_stage=0), 2, 10, bf16=False,
                            trainable_params=SMOLLM2_LORA_PARAMS)["zero_optimization"]
    assert "reduce_bucket_size" not in zero0


def test_without_a_count_deepspeed_keeps_its_default_and_the_config_overrides_both():
    zero = build_ds_config(make_cfg(), 2, 10, bf16=False)["zero_optimization"]
    assert "reduce_bucket_size" not in zero and "allgather_bucket_size" not in zero
    cfg = make_cfg(comm_bucket_elements=12_345)
    zero = build_ds_config(cfg, 2, 10, bf16=False, trainable_params=10**9)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 12_345
    assert zero["allgather_bucket_size"] == 12_346  # the all-gather needs an even count


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_reads_the_sized_buckets(stage):
    cfg = make_cfg(zero_stage=stage)
    parsed = DeepSpeedConfig(build_ds_config(cfg, 1, 20, bf16=False,
                                             trainable_params=SMOLLM2_LORA_PARAMS))
    assert parsed.zero_config.reduce_bucket_size == 5 * MIN_BUCKET_ELEMENTS
    if stage < 3:
        assert parsed.zero_config.allgather_bucket_size == 5 * MIN_BUCKET_ELEMENTS


def _lrs_seen_by_optimizer_steps(cfg: TrainingConfig, total_steps: int) -> tuple[list, float]:
    """The lr of each optimizer step, and the lr after the last one, stepping the scheduler
    as DeepSpeed's engine does (once after every optimizer step, never before the first)."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_lr_scheduler(optimizer, cfg, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs, optimizer.param_groups[0]["lr"]


def test_schedule_warms_up_linearly_then_decays_to_min_lr_at_the_last_step():
    cfg = make_cfg(lr=1.0, warmup_steps=3, min_lr_ratio=0.1)
    lrs, _ = _lrs_seen_by_optimizer_steps(cfg, 12)
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[2:-1], lrs[3:], strict=True))


def test_no_warmup_means_the_first_step_trains_at_peak_lr():
    lrs, _ = _lrs_seen_by_optimizer_steps(make_cfg(lr=1.0, warmup_steps=0, min_lr_ratio=0.0), 10)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.0)


@pytest.mark.parametrize("total_steps", [1, 2, 5])
def test_short_runs_and_long_warmups_stay_in_range(total_steps):
    for warmup in (0, 3, 50):
        ratios = [lr_ratio(s, warmup, total_steps, 0.2) for s in range(total_steps)]
        assert all(0.0 < r <= 1.0 for r in ratios), (warmup, ratios)


@pytest.mark.parametrize(
    ("stage", "optimizer", "params"),
    [(1, "cpu", "none"), (2, "cpu", "none"), (3, "cpu", "cpu"), (3, "none", "cpu")],
)
def test_offload_sections_reach_deepspeeds_parser(stage, optimizer, params):
    cfg = make_cfg(zero_stage=stage, offload_optimizer=optimizer, offload_params=params,
                   micro_batch_size=1)
    ds = build_ds_config(cfg, 1, 10, bf16=True, cuda=True)
    parsed = DeepSpeedConfig(ds)
    zero = parsed.zero_config
    assert (zero.offload_optimizer is not None) is (optimizer != "none")
    assert (zero.offload_param is not None) is (params != "none")
    if optimizer != "none":
        assert zero.offload_optimizer.device == "cpu"
        assert zero.offload_optimizer.pin_memory is True  # pinned host memory on CUDA
    # torch's AdamW steps the offloaded states: no compiled DeepSpeed CPU Adam, no fused kernel.
    assert ds["zero_force_ds_cpu_optimizer"] is False
    assert ds["optimizer"]["params"]["fused"] is False


def test_no_offload_keeps_deepspeeds_default_optimizer_rule():
    ds = build_ds_config(make_cfg(zero_stage=2), 1, 10, bf16=True, cuda=True)
    assert "offload_optimizer" not in ds["zero_optimization"]
    assert "zero_force_ds_cpu_optimizer" not in ds
    assert ds["optimizer"]["params"]["fused"] is True


def test_nvme_offload_carries_its_path():
    cfg = make_cfg(zero_stage=3, offload_params="nvme", offload_optimizer="nvme",
                   nvme_path="/local_nvme", micro_batch_size=1)
    zero = build_ds_config(cfg, 1, 10, bf16=True, cuda=True)["zero_optimization"]
    assert zero["offload_param"] == {"device": "nvme", "pin_memory": True,
                                     "nvme_path": "/local_nvme"}
    assert zero["offload_optimizer"]["nvme_path"] == "/local_nvme"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zero_stage": 2, "offload_params": "cpu"}, "needs zero_stage 3"),
        ({"zero_stage": 0, "offload_optimizer": "cpu"}, "needs zero_stage 1, 2 or 3"),
        ({"zero_stage": 3, "offload_params": "nvme"}, "needs nvme_path"),
    ],
)
def test_offload_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_cfg(**overrides)


def test_linear_and_constant_schedules():
    linear = [lr_ratio(s, 2, 12, 0.0, "linear") for s in range(12)]
    assert linear[:2] == pytest.approx([0.5, 1.0])
    assert linear[-1] == pytest.approx(0.0)
    steps = [a - b for a, b in zip(linear[2:-1], linear[3:], strict=True)]
    assert steps == pytest.approx([steps[0]] * len(steps))  # a straight line
    constant = [lr_ratio(s, 2, 12, 0.1, "constant") for s in range(12)]
    assert constant == pytest.approx([0.5] + [1.0] * 11)


def test_throughput_timer_is_off():
    # It synchronises the device at every forward and step; the loop times steps itself.
    ds = build_ds_config(make_cfg(), 1, 10, bf16=True, cuda=True)  # world 1: see above
    assert DeepSpeedConfig(ds).timers_config.enabled is False
