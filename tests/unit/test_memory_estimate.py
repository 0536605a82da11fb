"""Preflight's memory estimate, part by part, with integers (no training, no weights read).

What a real worker holds is measured by bench/memory.py; these tests pin the accounting.
"""

from __future__ import annotations

import dataclasses

import pytest

from tunearena.training.config import LoraConfig, TrainingConfig
from tunearena.training.ds_config import MIN_BUCKET_ELEMENTS
from tunearena.training.memory import (
    CPU_PROCESS_BYTES,
    DEEPSPEED_PREFETCH_ELEMENTS,
    GIB,
    GPU_CONTEXT_BYTES,
    ModelShape,
    activation_bytes,
    check_memory,
    estimate_memory_per_worker,
    logits_bytes,
    model_shape,
)

# Llama-2-7B: hidden 4096, 32 layers, vocab 32000, MLP 11008, no GQA, ~6.74e9 parameters.
LLAMA7B = ModelShape(total_params=6_738_415_616, trainable_params=6_738_415_616,
                     hidden_size=4096, num_layers=32, vocab_size=32000,
                     intermediate_size=11008, kv_size=4096)
SMALL = ModelShape(total_params=10**9, trainable_params=10**9, hidden_size=2048, num_layers=16,
                   vocab_size=32000, intermediate_size=5632, kv_size=256)
# SmolLM2-135M-Instruct with the default LoRA (rank 16 on every linear but the head), as
# model_shape reads it (test_smollm2_shape_is_what_model_shape_reads checks the figures).
SMOLLM2_LORA = ModelShape(total_params=139_399_488, trainable_params=4_884_480, hidden_size=576,
                          num_layers=30, vocab_size=49152, intermediate_size=1536, kv_size=192,
                          adapter_in_features=6 * 576 + 1536, adapter_rank=7 * 16,
                          chunked_loss=True)


def training(**overrides) -> TrainingConfig:
    return TrainingConfig(enabled=False, **overrides)


def estimate(cfg: TrainingConfig, shape: ModelShape = LLAMA7B, world_size: int = 1,
             bf16: bool = True, use_gpu: bool = True, trainable: int | None = None):
    if trainable is not None:
        shape = dataclasses.replace(shape, trainable_params=trainable)
    return estimate_memory_per_worker(cfg, world_size, bf16, shape, use_gpu)


# ---------------------------------------------------------------------------- model states


@pytest.mark.parametrize("bf16", [True, False])
def test_one_billion_params_at_zero0_need_16_bytes_each(bf16):
    # bf16: 2 weights + 2 grads + 12 (fp32 master, m, v); fp32: 4 + 4 + 8 (m, v).
    e = estimate(training(zero_stage=0), SMALL, bf16=bf16)
    assert e.model_states_bytes == 16 * 10**9
    assert e.weights_bytes == (2 if bf16 else 4) * 10**9
    assert e.optimizer_bytes == (12 if bf16 else 8) * 10**9
    assert e.host_bytes == 0 and e.buckets_bytes == 0


def test_zero_keeps_an_fp32_master_partition_even_in_fp32():
    e = estimate(training(zero_stage=1), SMALL, world_size=4, bf16=False, use_gpu=False)
    assert e.optimizer_bytes == 12 * 10**9 // 4


def test_zero_stages_partition_optimizer_then_gradients_then_weights():
    by_stage = {s: estimate(training(zero_stage=s), SMALL, world_size=8) for s in range(4)}
    assert by_stage[1].optimizer_bytes == 12 * 10**9 // 8
    assert by_stage[1].gradients_bytes == 2 * 10**9
    assert by_stage[2].gradients_bytes == 4 * 10**9 // 8  # the reduced fp32 partition
    assert by_stage[2].weights_bytes == 2 * 10**9
    # Stage 3: an eighth of the weights plus one gathered layer and the prefetch bucket.
    gathered = (10**9 // 16 + DEEPSPEED_PREFETCH_ELEMENTS) * 2
    assert by_stage[3].weights_bytes == 2 * 10**9 // 8 + gathered
    totals = [by_stage[s].total_bytes for s in range(4)]
    assert totals == sorted(totals, reverse=True)
    states = [by_stage[s].model_states_bytes + by_stage[s].buckets_bytes for s in range(4)]
    assert states[3] < states[0] / 3


def test_offload_moves_optimizer_and_weights_to_the_host_on_a_gpu():
    base = estimate(training(zero_stage=3), SMALL, world_size=8)
    opt = estimate(training(zero_stage=3, offload_optimizer="cpu"), SMALL, world_size=8)
    assert opt.optimizer_bytes == 0
    assert opt.host_bytes == base.optimizer_bytes
    assert opt.total_bytes == base.total_bytes - base.optimizer_bytes
    both = estimate(training(zero_stage=3, offload_optimizer="cpu", offload_params="cpu"),
                    SMALL, world_size=8)
    assert both.host_bytes == base.optimizer_bytes + 2 * 10**9 // 8
    assert both.weights_bytes == (10**9 // 16 + DEEPSPEED_PREFETCH_ELEMENTS) * 2


def test_offload_on_a_cpu_stays_in_the_same_process():
    cfg = training(zero_stage=2, offload_optimizer="cpu")
    e = estimate(cfg, SMALL, world_size=2, bf16=False, use_gpu=False)
    assert e.host_bytes == 0 and e.optimizer_bytes == 12 * 10**9 // 2


def test_lora_keeps_frozen_weights_only():
    e = estimate(training(method="lora", zero_stage=1), trainable=20_000_000)
    assert e.weights_bytes == 2 * LLAMA7B.total_params
    assert e.gradients_bytes == 2 * 20_000_000
    assert e.optimizer_bytes == 12 * 20_000_000


# ---------------------------------------------------------------------------- buckets, baseline


def test_buckets_follow_the_trainable_count_on_a_gpu():
    # ZeRO-2 double-buffers its reduce bucket in the training dtype.
    full = estimate(training(zero_stage=2), SMALL, world_size=2)
    assert full.buckets_bytes == 2 * 500_000_000 * 2  # capped at DeepSpeed's default
    lora = estimate(training(zero_stage=2, method="lora"), SMALL, world_size=2,
                    trainable=20_000_000)
    assert lora.buckets_bytes == 2 * 20 * MIN_BUCKET_ELEMENTS * 2
    # DeepSpeed's default, asked for in the config, is counted whole on a GPU.
    default = estimate(training(zero_stage=2, method="lora", comm_bucket_elements=500_000_000),
                       SMALL, world_size=2, trainable=20_000_000)
    assert default.buckets_bytes == 2 * 500_000_000 * 2


def test_a_cpu_holds_only_the_bucket_pages_it_writes():
    cfg = training(zero_stage=2, method="lora", comm_bucket_elements=500_000_000)
    e = estimate(cfg, SMOLLM2_LORA, world_size=2, bf16=False, use_gpu=False)
    assert e.buckets_bytes == 4_884_480 * 4  # one buffer's worth: every gradient fits it
    small = estimate(training(zero_stage=2, method="lora", comm_bucket_elements=2**20),
                     SMOLLM2_LORA, world_size=2, bf16=False, use_gpu=False)
    assert small.buckets_bytes == 2 * 2**20 * 4  # both buffers, alternating
    zero1 = estimate(training(zero_stage=1, method="lora"), SMOLLM2_LORA, world_size=2,
                     bf16=False, use_gpu=False)
    assert zero1.buckets_bytes == 4_884_480 * 4  # one fp32 staging bucket


def test_baseline_is_the_process_on_a_cpu_and_the_cuda_context_on_a_gpu():
    assert estimate(training(), SMALL, use_gpu=False, bf16=False).baseline_bytes == \
        CPU_PROCESS_BYTES
    assert estimate(training(), SMALL).baseline_bytes == GPU_CONTEXT_BYTES


def test_a_gpu_holds_every_part_at_once():
    e = estimate(training(), SMALL, world_size=2)
    assert e.total_bytes == sum(v for k, v in e.parts().items() if k != "host")


@pytest.mark.parametrize("stage", [1, 2])
def test_a_cpu_holds_the_larger_of_the_forward_and_backward_phases(stage):
    e = estimate(training(zero_stage=stage), SMALL, world_size=2, bf16=False, use_gpu=False)
    states = e.baseline_bytes + e.weights_bytes + e.optimizer_bytes
    forward, backward = e.activations_bytes + e.logits_bytes, e.gradients_bytes + e.buckets_bytes
    assert e.total_bytes == states + max(forward, backward)
    # ZeRO-3 keeps its bucket and gradient partition between steps.
    e3 = estimate(training(zero_stage=3), SMALL, world_size=2, bf16=False, use_gpu=False)
    assert e3.total_bytes == (e3.baseline_bytes + e3.weights_bytes + e3.optimizer_bytes
                              + e3.gradients_bytes + e3.buckets_bytes + e3.activations_bytes
                              + e3.logits_bytes)


# ---------------------------------------------------------------------------- activations, logits


def test_activations_count_a_llama_layer_and_checkpointing_keeps_layer_inputs():
    plain = estimate(training(seq_len=2048, micro_batch_size=4))
    ckpt = estimate(training(seq_len=2048, micro_batch_size=4, gradient_checkpointing=True))
    tokens, h = 4 * 2048, 4096
    # Two norms' inputs and outputs, query, attention output, its projection's input and
    # the residual (8h), key and value (2 kv), the SwiGLU MLP's four (4i); 2 bytes in bf16.
    one_layer = tokens * (8 * h + 2 * 4096 + 4 * 11008) * 2
    assert plain.activations_bytes == 32 * one_layer
    assert ckpt.activations_bytes == 32 * tokens * h * 2 + one_layer
    assert ckpt.activations_bytes < plain.activations_bytes / 10


def test_lora_dropout_keeps_each_adapted_input_and_its_mask():
    shape, tokens = SMOLLM2_LORA, 4 * 256
    with_dropout = activation_bytes(shape, 4, 256, 4, False, lora_dropout=0.05)
    without = activation_bytes(shape, 4, 256, 4, False, lora_dropout=0.0)
    assert with_dropout - without == 30 * tokens * shape.adapter_in_features * (4 + 1)
    base = activation_bytes(dataclasses.replace(shape, adapter_rank=0), 4, 256, 4, False)
    assert without - base == 30 * tokens * shape.adapter_rank * 4


def test_chunked_loss_holds_one_chunk_of_logits():
    tokens = 8 * 1024
    whole = logits_bytes(LLAMA7B, tokens, 2, head_trains=True)
    assert whole == tokens * 32000 * (2 + 8)  # bf16 logits, fp32 log-softmax and gradient
    chunked_shape = dataclasses.replace(LLAMA7B, chunked_loss=True)
    chunked = logits_bytes(chunked_shape, tokens, 2, head_trains=True)
    # 262M logits make two chunks of 4096 tokens (bf16 logits, fp32 log-probabilities made
    # the gradient in place, its bf16 copy), plus the fp32 head and hidden gradients.
    assert chunked == 4096 * 32000 * 8 + 32000 * 4096 * 4 + tokens * 4096 * 4
    frozen_head = logits_bytes(chunked_shape, tokens, 2, head_trains=False)
    assert chunked - frozen_head == 32000 * 4096 * 4


# ---------------------------------------------------------------------------- a real shape


def test_smollm2_lora_estimate_is_plausible_from_its_parameter_counts():
    # The measured shape (docs/performance.md): ZeRO-2, 2 CPU workers, seq 256, micro-batch 4.
    cfg = training(method="lora", zero_stage=2, seq_len=256, micro_batch_size=4)
    e = estimate(cfg, SMOLLM2_LORA, world_size=2, bf16=False, use_gpu=False)
    frozen_fp32 = 4 * SMOLLM2_LORA.total_params
    trainable = SMOLLM2_LORA.trainable_params
    assert e.weights_bytes == frozen_fp32
    # fp32 grads partition (4), master + Adam (12) over two ranks; of its two buckets a CPU
    # process holds what every trainable gradient writes.
    assert e.gradients_bytes + e.optimizer_bytes == 8 * trainable
    assert e.buckets_bytes == trainable * 4
    # Activations dominate at this shape: more than the weights, less than four times them.
    assert frozen_fp32 < e.activations_bytes < 4 * frozen_fp32
    # The whole: baseline and weights, plus activations and logits (the forward phase).
    assert e.total_bytes == (CPU_PROCESS_BYTES + frozen_fp32 + e.optimizer_bytes
                             + e.activations_bytes + e.logits_bytes)
    assert 3.2 * GIB < e.total_bytes < 4.6 * GIB
    # Preflight's old figure, without activations' LoRA copies, logits or the process: 1.9 GiB.
    assert e.total_bytes > 1.9 * GIB * 1.5


@pytest.mark.slow
def test_smollm2_shape_is_what_model_shape_reads():
    from tunearena.training.gguf import resolve_base

    assert model_shape(str(resolve_base("smollm2-135m-instruct")),
                       TrainingConfig(enabled=False, method="lora")) == SMOLLM2_LORA


def test_model_shape_matches_the_real_model(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    real = sum(p.numel() for p in model.parameters())
    shape = model_shape(str(tiny_model_dir), None)
    assert (shape.total_params, shape.trainable_params) == (real, real)
    assert shape.hidden_size == config.hidden_size
    assert shape.intermediate_size == config.intermediate_size
    assert shape.kv_size == config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads)
    assert shape.adapter_in_features == 0 and shape.chunked_loss


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_lora_shape_matches_peft(tiny_model_dir, targets):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    lora = LoraConfig(rank=4, alpha=8, target_modules=targets)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"),
    )
    trainable, total = peft_model.get_nb_trainable_parameters()
    shape = model_shape(str(tiny_model_dir), TrainingConfig(enabled=False, method="lora", lora=lora))
    assert (shape.total_params, shape.trainable_params) == (total, trainable)
    h = AutoConfig.from_pretrained(tiny_model_dir).hidden_size
    i = AutoConfig.from_pretrained(tiny_model_dir).intermediate_size
    if targets == "all-linear":  # q, k, v, o, gate, up read h features; down reads i
        assert (shape.adapter_in_features, shape.adapter_rank) == (6 * h + i, 7 * 4)
    else:
        assert (shape.adapter_in_features, shape.adapter_rank) == (2 * h, 2 * 4)


# ---------------------------------------------------------------------------- the check


def test_7b_full_fine_tune_at_zero0_does_not_fit_80_gib():
    e = estimate(training(zero_stage=0))
    check = check_memory(e, 80 * GIB, "NVIDIA H100 80GB")
    assert not check.ok
    assert "exceeds 90% of 80.0 GiB on NVIDIA H100 80GB" in check.detail
    assert "buckets" in check.detail and "baseline" in check.detail
    # The next lever first; all of them named, in order.
    assert check.fix.startswith("try, in order: training.gradient_checkpointing: true")
    assert "training.offload_optimizer: cpu" in check.fix
    assert check.fix.endswith("training.method: lora")


def test_7b_lora_fits_80_gib():
    e = estimate(training(method="lora", gradient_checkpointing=True), trainable=40_000_000)
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
    check = check_memory(estimate(training(zero_stage=0), use_gpu=False, bf16=False), None, "CPU")
    assert check.ok
    assert "GiB per worker" in check.detail and "not compared" in check.detail


# ---------------------------------------------------------------- CPU workers' glibc heap


def test_only_large_activations_keep_the_cpu_heap_lean(tmp_path):
    from pathlib import Path

    from transformers import LlamaConfig

    from tunearena.training.memory import LEAN_HEAP_FROM_BYTES, estimate_for, needs_lean_heap

    demo = str(Path(__file__).resolve().parents[2] / "examples" / "demo_world" / "base_model")
    cfg = training(seq_len=256, micro_batch_size=4, zero_stage=2)
    small = estimate_for(demo, cfg, 2, False, False)
    assert small.activations_bytes + small.logits_bytes < LEAN_HEAP_FROM_BYTES
    assert not needs_lean_heap(demo, cfg, 2, use_gpu=False)
    # SmolLM2-135M's shape (config only: the estimate reads no weights).
    LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                tie_word_embeddings=True).save_pretrained(tmp_path)
    lora = training(seq_len=256, micro_batch_size=4, zero_stage=2, method="lora")
    assert needs_lean_heap(str(tmp_path), lora, 2, use_gpu=False)
    assert not needs_lean_heap(str(tmp_path), lora, 2, use_gpu=True)
