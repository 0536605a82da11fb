"""Preflight for training: batch arithmetic and a per-GPU memory estimate, before any worker.

Pure functions of the configs and the model's config (no weights are read, no process
starts), except ``gpu_memory_bytes``, which asks one GPU node of the cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray
import torch

from tunearena.cluster.preflight import Check
from tunearena.training.batch import BatchPlan
from tunearena.training.config import LoraConfig, TrainingConfig
from tunearena.training.model import count_parameters, peft_lora_config

GIB = 1024**3
# The share of device memory an estimate may fill: the CUDA context, the allocator's
# fragmentation and DeepSpeed's communication buckets take the rest.
MEMORY_HEADROOM = 0.9


def parameter_counts(model_dir: str, lora: LoraConfig | None) -> tuple[int, int]:
    """(total, trainable) parameters of ``model_dir``'s architecture, from its config alone.

    The model is built on the meta device (shapes, no storage), and for LoRA wrapped with the
    same peft config training uses, so adapter counts match. No weights are read.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        if lora is not None:
            from peft import get_peft_model

            # The training config only carries the adapter settings into peft's config.
            model = get_peft_model(model, peft_lora_config(TrainingConfig(enabled=False, lora=lora)))
    return count_parameters(model)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training worker needs on its GPU, by part, and what offload puts on the host.

    It also records the settings it was computed for, so a failing check can name the next
    lever to pull.
    """

    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    """fp32 master weights (bf16 only) and Adam's two moments."""
    activations_bytes: int
    logits_bytes: int
    host_bytes: int
    """Offloaded optimizer states / parameters, in CPU memory (or NVMe) per worker."""
    zero_stage: int
    world_size: int
    micro_batch_size: int
    gradient_checkpointing: bool
    offload_optimizer: str
    offload_params: str
    method: str

    @property
    def model_states_bytes(self) -> int:
        """Weights, gradients and optimizer states kept on the GPU."""
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> int:
        """Everything on the GPU."""
        return self.model_states_bytes + self.activations_bytes + self.logits_bytes


def activation_bytes(
    micro_batch_size: int, seq_len: int, hidden_size: int, num_layers: int,
    bytes_per_value: int, gradient_checkpointing: bool,
) -> int:
    """Activations one worker keeps for the backward pass.

    Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
    (arXiv:2205.05198), Eq. 1: a transformer layer stores ``s*b*h*(34 + 5*a*s/h)`` bytes with
    16-bit activations. The ``5*a*s/h`` term is the attention score matrix, which SDPA /
    flash attention never stores, so it is left out; values scale with ``bytes_per_value / 2``.
    With full recomputation (Section 4.1, what Hugging Face's gradient checkpointing does per
    decoder layer) only each layer's input, ``2*s*b*h`` bytes, is kept, plus one layer's full
    activations while it is recomputed in the backward pass.
    """
    sbh = micro_batch_size * seq_len * hidden_size
    scale = bytes_per_value / 2
    one_layer = 34 * sbh * scale
    if gradient_checkpointing:
        return int(num_layers * 2 * sbh * scale + one_layer)
    return int(num_layers * one_layer)


def estimate_memory_per_gpu(
    cfg: TrainingConfig,
    world_size: int,
    bf16: bool,
    total_params: int,
    trainable_params: int,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
) -> MemoryEstimate:
    """Bytes per GPU for training ``cfg`` on ``world_size`` DeepSpeed ranks (mixed-precision
    Adam accounting of Rajbhandari et al. 2020, "ZeRO", Section 3.1).

    bf16: 2 bytes of weights and 2 of gradients per parameter, plus 12 of optimizer states
    per trainable one (fp32 master, Adam m and v); fp32: 4 + 4 + 8 (m and v). Frozen
    parameters (LoRA) hold weights only; QLoRA's 4-bit base holds half a byte. ZeRO partitions
    over ``world_size``: stage 1 the optimizer states, 2 also the gradients, 3 also the
    weights (plus one gathered layer in use). Offload moves those parts to the host.
    """
    value_bytes = 2 if bf16 else 4
    frozen = total_params - trainable_params
    frozen_bytes = 0.5 if cfg.method == "qlora" else value_bytes
    weights: float = frozen * frozen_bytes + trainable_params * value_bytes
    gradients: float = trainable_params * value_bytes
    optimizer: float = trainable_params * (12 if bf16 else 8)
    if cfg.zero_stage >= 1:
        optimizer /= world_size
    if cfg.zero_stage >= 2:
        gradients /= world_size
    host = 0.0
    if cfg.zero_stage == 3:
        # ZeRO-3 gathers a layer's full parameters for its forward and backward.
        gathered = total_params / max(num_layers, 1) * value_bytes
        weights /= world_size
        if cfg.offload_params != "none":
            host += weights
            weights = 0
        weights += gathered
    if cfg.offload_optimizer != "none":
        host += optimizer
        optimizer = 0
    activations = activation_bytes(cfg.micro_batch_size, cfg.seq_len, hidden_size, num_layers,
                                   value_bytes, cfg.gradient_checkpointing)
    # The loss upcasts the logits to fp32.
    logits = cfg.micro_batch_size * cfg.seq_len * vocab_size * 4
    return MemoryEstimate(
        weights_bytes=math.ceil(weights),
        gradients_bytes=math.ceil(gradients),
        optimizer_bytes=math.ceil(optimizer),
        activations_bytes=activations,
        logits_bytes=logits,
        host_bytes=math.ceil(host),
        zero_stage=cfg.zero_stage,
        world_size=world_size,
        micro_batch_size=cfg.micro_batch_size,
        gradient_checkpointing=cfg.gradient_checkpointing,
        offload_optimizer=cfg.offload_optimizer,
        offload_params=cfg.offload_params,
        method=cfg.method,
    )


def _levers(e: MemoryEstimate) -> list[str]:
    """Settings that lower GPU memory and are not in use yet, cheapest first."""
    levers = []
    if not e.gradient_checkpointing:
        levers.append("training.gradient_checkpointing: true")
    if e.zero_stage < 3 and e.world_size > 1:
        levers.append(f"training.zero_stage: {e.zero_stage + 1}")
    if e.offload_optimizer == "none":
        levers.append("training.offload_optimizer: cpu"
                      + (" (with zero_stage >= 1)" if e.zero_stage == 0 else ""))
    if e.offload_params == "none":
        levers.append("training.offload_params: cpu"
                      + (" (with zero_stage: 3)" if e.zero_stage < 3 else ""))
    if e.micro_batch_size > 1:
        levers.append(f"training.micro_batch_size: {e.micro_batch_size // 2} (raise "
                      f"grad_accum_steps to keep the global batch)")
    if e.method == "full":
        levers.append("training.method: lora")
    return levers


def _size(n: float) -> str:
    """Bytes as GiB, or MiB below one GiB (a tiny model's estimate is not "0.0 GiB")."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def check_memory(estimate: MemoryEstimate, device_memory_bytes: int | None, device: str) -> Check:
    """Whether ``estimate`` fits in ``MEMORY_HEADROOM`` of one worker's device memory.

    ``device_memory_bytes`` is what one worker may use (a GPU's memory times
    ``gpus_per_worker`` when workers share a GPU); None (a CPU run) only reports the estimate.
    """
    e = estimate
    parts = (f"weights {_size(e.weights_bytes)}, gradients {_size(e.gradients_bytes)}, "
             f"optimizer {_size(e.optimizer_bytes)}, activations {_size(e.activations_bytes)}, "
             f"logits {_size(e.logits_bytes)}; host {_size(e.host_bytes)}")
    summary = f"~{_size(e.total_bytes)} per worker ({parts})"
    if device_memory_bytes is None:
        return Check("memory", True, f"{summary} on {device}; device memory unknown, not compared")
    budget = MEMORY_HEADROOM * device_memory_bytes
    if e.total_bytes <= budget:
        return Check("memory", True, f"{summary} fits {MEMORY_HEADROOM:.0%} of "
                                     f"{_size(device_memory_bytes)} on {device}")
    levers = _levers(e)
    fix = ("try, in order: " + "; ".join(levers)) if levers else \
        "use GPUs with more memory or a smaller model"
    return Check("memory", False, f"{summary} exceeds {MEMORY_HEADROOM:.0%} of "
                                  f"{_size(device_memory_bytes)} on {device}", fix)


def check_batch(cfg: TrainingConfig, world_size: int, n_train_sequences: int) -> Check:
    """Whether the training data holds at least one global batch (micro x accum x workers)."""
    plan = BatchPlan(cfg.micro_batch_size, cfg.grad_accum_steps, world_size)
    arithmetic = (f"global batch {plan.global_batch_size} = micro_batch_size "
                  f"{cfg.micro_batch_size} x grad_accum_steps {cfg.grad_accum_steps} x "
                  f"{world_size} workers")
    steps = n_train_sequences // plan.global_batch_size
    if steps == 0:
        return Check("batch", False,
                     f"{arithmetic}, but there are only {n_train_sequences} training sequences",
                     f"lower training.micro_batch_size or training.grad_accum_steps (or "
                     f"cluster.num_workers) so a global batch is at most {n_train_sequences} "
                     f"sequences, or add training data")
    return Check("batch", True,
                 f"{arithmetic}; {n_train_sequences} training sequences give {steps} steps "
                 f"per epoch")


@ray.remote(num_gpus=1, num_cpus=0)
def _device_memory() -> int:
    return int(torch.cuda.get_device_properties(0).total_memory)


def gpu_memory_bytes(timeout_s: float = 60.0) -> int | None:
    """Total memory of one GPU of the connected cluster; None without GPUs or on timeout."""
    if ray.cluster_resources().get("GPU", 0) < 1:
        return None
    ref = _device_memory.remote()
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        # Every GPU is busy: report the estimate alone rather than wait.
        ray.cancel(ref, force=True)
        return None
