"""Preflight's pure parts with integers: placement fit, batch arithmetic, memory estimate."""

from __future__ import annotations

import pytest

from tunearena.cluster.preflight import Check, PreflightError, format_checks, resources_fit
from tunearena.training.config import LoraConfig, TrainingConfig
from tunearena.training.memory import (
    GIB,
    activation_bytes,
    check_batch,
    check_memory,
    estimate_memory_per_gpu,
    parameter_counts,
)

CPU1 = {"CPU": 1}
GPU_WORKER = {"CPU": 2, "GPU": 1}


def nodes(*cpus_gpus: tuple[float, float]) -> list[dict[str, float]]:
    """Ray-style node resources, with the extra keys real nodes carry."""
    return [{"CPU": c, "GPU": g, "memory": 1e10, "node:10.0.0.1": 1.0} for c, g in cpus_gpus]


# ---------------------------------------------------------------------------- resources


def test_two_workers_fit_three_nodes():
    check = resources_fit(nodes((1, 0), (1, 0), (1, 0)), CPU1, 2, "PACK")
    assert check.ok
    assert check.detail == "2 workers x {CPU: 1} (PACK) on 3 nodes: fits"


def test_strict_spread_with_too_few_nodes_names_how_many_fit():
    # Three nodes fit one worker each; a fourth has a GPU but too few CPUs.
    check = resources_fit(nodes((2, 1), (4, 2), (2, 1), (1, 1)), GPU_WORKER, 4, "STRICT_SPREAD")
    assert not check.ok
    assert check.detail == "STRICT_SPREAD needs 4 nodes that each fit {CPU: 2, GPU: 1}; 3 do"
    # The second node holds two workers, so SPREAD would place all four.
    assert check.fix == "lower cluster.num_workers to 3, or choose placement SPREAD"


def test_strict_spread_fits_one_worker_per_node():
    assert resources_fit(nodes((2, 1), (2, 1)), GPU_WORKER, 2, "STRICT_SPREAD").ok


def test_strict_pack_needs_one_node_for_all():
    two_small = nodes((2, 0), (2, 0))
    check = resources_fit(two_small, {"CPU": 1}, 3, "STRICT_PACK")
    assert not check.ok
    assert "STRICT_PACK needs one node that fits 3 x {CPU: 1}" in check.detail
    assert check.fix == "lower cluster.num_workers to 2, or choose placement PACK"
    assert resources_fit(nodes((4, 0)), {"CPU": 1}, 3, "STRICT_PACK").ok


@pytest.mark.parametrize("placement", ["PACK", "SPREAD"])
def test_pack_and_spread_need_the_total_in_whole_workers(placement):
    # 3 CPUs in total, but 1.5 per node holds one 1-CPU worker each: only 2 fit.
    check = resources_fit(nodes((1.5, 0), (1.5, 0)), CPU1, 3, placement)
    assert not check.ok
    assert "fit 2" in check.detail
    assert check.fix == "lower cluster.num_workers to 2, or add nodes"
    assert resources_fit(nodes((2, 0), (1, 0)), CPU1, 3, placement).ok


def test_fractional_gpus_share_a_gpu():
    assert resources_fit(nodes((4, 1)), {"CPU": 1, "GPU": 0.25}, 4, "STRICT_PACK").ok


def test_missing_custom_resource_is_named():
    check = resources_fit(nodes((8, 1), (8, 1)), {"CPU": 1, "A100": 1}, 2, "PACK")
    assert not check.ok
    assert check.detail == "no node of 2 nodes has A100 (a worker needs {CPU: 1, A100: 1})"
    assert "remove A100 from cluster.resources_per_worker" in check.fix


def test_worker_larger_than_any_node_names_the_field_to_lower():
    check = resources_fit(nodes((4, 0), (2, 0)), {"CPU": 8}, 1, "PACK")
    assert not check.ok
    assert "no node of 2 nodes fits one worker's {CPU: 8}" in check.detail
    assert check.fix == "lower cluster.cpus_per_worker to 4"


def test_no_gpu_on_the_cluster():
    check = resources_fit(nodes((8, 0)), GPU_WORKER, 1, "PACK")
    assert not check.ok and "has GPU" in check.detail
    assert "cluster.use_gpu false" in check.fix


# ---------------------------------------------------------------------------- batch


def training(**overrides) -> TrainingConfig:
    return TrainingConfig(enabled=False, **overrides)


def test_batch_states_the_arithmetic():
    check = check_batch(training(micro_batch_size=4, grad_accum_steps=3), 2, 100)
    assert check.ok
    assert "global batch 24 = micro_batch_size 4 x grad_accum_steps 3 x 2 workers" in check.detail
    assert "4 steps per epoch" in check.detail


def test_batch_fails_below_one_global_batch():
    check = check_batch(training(micro_batch_size=4, grad_accum_steps=3), 2, 23)
    assert not check.ok
    assert "global batch 24" in check.detail and "only 23 training sequences" in check.detail
    assert "training.micro_batch_size" in check.fix and "at most 23" in check.fix
    assert check_batch(training(micro_batch_size=4, grad_accum_steps=3), 2, 24).ok


# ---------------------------------------------------------------------------- memory

# Llama-2-7B's shape: hidden 4096, 32 layers, vocab 32000, ~6.74e9 parameters.
LLAMA7B = dict(total_params=6_738_415_616, hidden_size=4096, num_layers=32, vocab_size=32000)


def estimate(cfg: TrainingConfig, world_size: int = 1, bf16: bool = True,
             trainable_params: int | None = None, **shape):
    shape = shape or LLAMA7B
    trainable = shape["total_params"] if trainable_params is None else trainable_params
    return estimate_memory_per_gpu(cfg, world_size, bf16, trainable_params=trainable, **shape)


SMALL = dict(total_params=10**9, hidden_size=2048, num_layers=16, vocab_size=32000)


@pytest.mark.parametrize("bf16", [True, False])
def test_one_billion_params_at_zero0_need_16_bytes_each(bf16):
    # bf16: 2 weights + 2 grads + 12 (fp32 master, m, v); fp32: 4 + 4 + 8 (m, v).
    e = estimate(training(zero_stage=0), bf16=bf16, **SMALL)
    assert e.model_states_bytes == 16 * 10**9
    assert e.weights_bytes == (2 if bf16 else 4) * 10**9
    assert e.optimizer_bytes == (12 if bf16 else 8) * 10**9
    assert e.host_bytes == 0


def test_zero_stages_partition_optimizer_then_gradients_then_weights():
    by_stage = {s: estimate(training(zero_stage=s), world_size=8, **SMALL) for s in range(4)}
    assert by_stage[1].optimizer_bytes == 12 * 10**9 // 8
    assert by_stage[1].gradients_bytes == 2 * 10**9
    assert by_stage[2].gradients_bytes == 2 * 10**9 // 8
    assert by_stage[2].weights_bytes == 2 * 10**9
    # Stage 3: an eighth of the weights plus the one gathered layer in use.
    assert by_stage[3].weights_bytes == 2 * 10**9 // 8 + 2 * 10**9 // 16
    totals = [by_stage[s].total_bytes for s in range(4)]
    assert totals == sorted(totals, reverse=True) and totals[3] < totals[0] / 3


def test_offload_moves_optimizer_and_weights_to_the_host():
    base = estimate(training(zero_stage=3), world_size=8, **SMALL)
    opt = estimate(training(zero_stage=3, offload_optimizer="cpu"), world_size=8, **SMALL)
    assert opt.optimizer_bytes == 0
    assert opt.host_bytes == base.optimizer_bytes
    assert opt.total_bytes == base.total_bytes - base.optimizer_bytes
    both = estimate(training(zero_stage=3, offload_optimizer="cpu", offload_params="cpu"),
                    world_size=8, **SMALL)
    assert both.host_bytes == base.optimizer_bytes + 2 * 10**9 // 8
    assert both.weights_bytes == 2 * 10**9 // 16  # only the gathered layer stays


def test_gradient_checkpointing_lowers_activations():
    plain = estimate(training(seq_len=2048, micro_batch_size=4))
    ckpt = estimate(training(seq_len=2048, micro_batch_size=4, gradient_checkpointing=True))
    assert ckpt.activations_bytes < plain.activations_bytes / 10
    # 34 bytes per s*b*h per layer in 16-bit (Korthikanti et al. 2022), 2 with recomputation.
    sbh = 4 * 2048 * 4096
    assert plain.activations_bytes == 32 * 34 * sbh
    assert ckpt.activations_bytes == 32 * 2 * sbh + 34 * sbh
    assert activation_bytes(4, 2048, 4096, 32, 4, False) == 2 * plain.activations_bytes
    assert plain.logits_bytes == 4 * 2048 * 32000 * 4


def test_lora_keeps_frozen_weights_only():
    e = estimate(training(method="lora"), trainable_params=20_000_000)
    assert e.weights_bytes == 2 * LLAMA7B["total_params"]
    assert e.gradients_bytes == 2 * 20_000_000
    assert e.optimizer_bytes == 12 * 20_000_000


def test_7b_full_fine_tune_at_zero0_does_not_fit_80_gib():
    e = estimate(training(zero_stage=0))
    check = check_memory(e, 80 * GIB, "NVIDIA H100 80GB")
    assert not check.ok
    assert "exceeds 90% of 80.0 GiB on NVIDIA H100 80GB" in check.detail
    # The next lever first; all of them named, in order.
    assert check.fix.startswith("try, in order: training.gradient_checkpointing: true")
    assert "training.offload_optimizer: cpu" in check.fix
    assert check.fix.endswith("training.method: lora")


def test_7b_lora_fits_80_gib():
    e = estimate(training(method="lora", gradient_checkpointing=True), trainable_params=40_000_000)
    check = check_memory(e, 80 * GIB, "cuda")
    assert check.ok, check.detail
    assert "fits 90% of 80.0 GiB" in check.detail


def test_memory_levers_skip_what_is_already_used():
    e = estimate(training(zero_stage=3, gradient_checkpointing=True, offload_optimizer="cpu",
                          micro_batch_size=1), world_size=8)
    check = check_memory(e, 1 * GIB, "cuda")
    assert not check.ok
    assert check.fix == "try, in order: training.offload_params: cpu; training.method: lora"


def test_unknown_device_memory_reports_the_estimate_only():
    check = check_memory(estimate(training(zero_stage=0)), None, "cpu")
    assert check.ok
    assert "GiB per worker" in check.detail and "not compared" in check.detail


# ---------------------------------------------------------------------------- parameter counts


def test_parameter_counts_match_the_real_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    real = sum(p.numel() for p in model.parameters())
    assert parameter_counts(str(tiny_model_dir), None) == (real, real)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_lora_parameter_counts_match_peft(tiny_model_dir, targets):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(rank=4, alpha=8, target_modules=targets)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"),
    )
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert parameter_counts(str(tiny_model_dir), lora) == (total, trainable)
    assert 0 < trainable < total


# ---------------------------------------------------------------------------- reporting


CHECKS = [
    Check("resources", True, "2 workers x {CPU: 1} (PACK) on 3 nodes: fits"),
    Check("storage", False, "1 of 2 nodes do not share /data with the driver",
          "use a shared filesystem"),
    Check("batch", False, "global batch 64 ...", "lower training.micro_batch_size"),
]


def test_format_checks_aligns_and_shows_fixes_for_failures():
    lines = format_checks(CHECKS).splitlines()
    assert lines[0].split() == ["check", "result", "detail", "fix"]
    assert lines[1].startswith("resources  PASS    2 workers")
    assert "FAIL" in lines[2] and lines[2].endswith("use a shared filesystem")
    assert lines[3].startswith("batch      FAIL    global") and lines[3].endswith("lower training.micro_batch_size")
    # The detail column starts at the same place on every line.
    assert len({line.index(word) for line, word in zip(lines, ["detail", "2 workers", "1 of 2", "global"], strict=True)}) == 1


def test_preflight_error_lists_every_failed_check_with_its_fix():
    err = PreflightError(CHECKS)
    assert err.checks == CHECKS
    message = str(err)
    assert message.splitlines()[0] == "preflight: 2 of 3 checks failed"
    assert "storage: 1 of 2 nodes" in message and "fix: use a shared filesystem" in message
    assert "batch: global batch 64" in message and "resources" not in message
