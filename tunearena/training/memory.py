"""Preflight for training: batch arithmetic and a per-worker memory estimate, before any worker.

Pure functions of the configs and the model's config (no weights are read, no process
starts), except ``gpu_memory_bytes``, which asks one GPU node of the cluster.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import ray
import torch

from tunearena.cluster.preflight import Check
from tunearena.remote_code import trust_remote_code
from tunearena.training.batch import BatchPlan
from tunearena.training.config import TrainingConfig
from tunearena.training.ds_config import bucket_elements
from tunearena.training.model import (
    CHUNK_LOGITS,
    CHUNKED_LOSS_MODEL_TYPES,
    count_parameters,
    peft_config,
)

GIB = 1024**3
MIB = 2**20
# The share of device memory an estimate may fill: the allocator's fragmentation and what
# the estimate leaves out take the rest.
MEMORY_HEADROOM = 0.9
CPU_PROCESS_BYTES = 700 * MIB
"""A CPU worker's resident memory before any model: Python, torch, transformers, peft,
DeepSpeed, the Ray worker and its gloo group (measured with bench/memory.py's tiny model)."""
GPU_CONTEXT_BYTES = 768 * MIB
"""Device memory a GPU worker holds besides tensors: the CUDA context, cuBLAS and NCCL
workspaces. A plausible figure, still to be checked on a GPU (bench/memory.py on one)."""
DEEPSPEED_PREFETCH_ELEMENTS = 50_000_000
"""DeepSpeed's default ``stage3_prefetch_bucket_size``: ZeRO-3 parameters gathered ahead."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model, read from its config alone."""

    total_params: int
    trainable_params: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    intermediate_size: int
    """The MLP's inner width (SwiGLU's gate and up projections)."""
    kv_size: int
    """Key (and value) width: key-value heads x head dim, below ``hidden_size`` under GQA."""
    adapter_in_features: int = 0
    """Per layer, the summed input widths of the LoRA-adapted linears: the adapter's dropout
    keeps a copy of each input for the backward pass."""
    adapter_rank: int = 0
    """Per layer, the summed ranks of the adapters (their inner activations)."""
    chunked_loss: bool = False
    """The loss runs in chunks (``use_chunked_loss``), so the full logits never exist."""


def model_shape(model_dir: str, adapter: TrainingConfig | None) -> ModelShape:
    """The shape of ``model_dir``'s architecture, from its config alone.

    The model is built on the meta device (shapes, no storage), and with ``adapter`` (a stage
    training a peft adapter) wrapped with the peft config that stage trains with, so adapter
    counts match. No weights are read.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code())
        if adapter is not None:
            from peft import get_peft_model

            # Virtual tokens start random here: their count, not their start, sets the shape.
            tokens = adapter.virtual_tokens.model_copy(update={"init_text": None})
            model = get_peft_model(model, peft_config(
                adapter.model_copy(update={"virtual_tokens": tokens}), model_dir))
    total, trainable = count_parameters(model)
    adapted = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        total_params=total, trainable_params=trainable, hidden_size=config.hidden_size,
        num_layers=layers, vocab_size=config.vocab_size,
        intermediate_size=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
        kv_size=(getattr(config, "num_key_value_heads", None) or heads) * head_dim,
        adapter_in_features=sum(m.lora_A["default"].in_features for m in adapted) // layers,
        adapter_rank=sum(m.lora_A["default"].out_features for m in adapted) // layers,
        chunked_loss=config.model_type in CHUNKED_LOSS_MODEL_TYPES,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training worker holds at its peak, by part: on a GPU, device memory; on a
    CPU, the worker process's resident memory. ``host_bytes`` is what offload puts in CPU
    memory (or NVMe) instead of the GPU.

    It also records the settings it was computed for, so a failing check can name the next
    lever to pull.
    """

    baseline_bytes: int
    """Before any model: the CPU process's libraries, or the GPU's CUDA context."""
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    """fp32 master weights and Adam's two moments."""
    buckets_bytes: int
    """DeepSpeed's gradient reduce buffers (see ``ds_config.bucket_elements``)."""
    activations_bytes: int
    logits_bytes: int
    """The loss's transient logits, log-probabilities and their gradient."""
    host_bytes: int
    use_gpu: bool
    zero_stage: int
    world_size: int
    micro_batch_size: int
    gradient_checkpointing: bool
    offload_optimizer: str
    offload_params: str
    method: str

    def parts(self) -> dict[str, int]:
        """Bytes by part, for a report."""
        return {"baseline": self.baseline_bytes, "weights": self.weights_bytes,
                "gradients": self.gradients_bytes, "optimizer": self.optimizer_bytes,
                "buckets": self.buckets_bytes, "activations": self.activations_bytes,
                "logits": self.logits_bytes, "host": self.host_bytes}

    @property
    def model_states_bytes(self) -> int:
        """Weights, gradients and optimizer states kept on the worker's device."""
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> int:
        """What the worker's device holds at its peak.

        Under ZeRO 0-2 the gradients and buckets live from the backward pass to the optimizer
        step (DeepSpeed releases its buckets and gradient partition there), while the
        activations and logits live from the forward pass into the backward. A GPU's caching
        allocator takes whole buffers at the start of the backward pass, while nearly every
        activation is still held: all of it counts. A CPU process holds a page once written,
        and gradients are written as activations are freed: the larger of the two phases
        counts (measured: within 1% of the peak for SmolLM2-135M, LoRA and full).
        """
        states = self.baseline_bytes + self.weights_bytes + self.optimizer_bytes
        forward = self.activations_bytes + self.logits_bytes
        backward = self.gradients_bytes + self.buckets_bytes
        if self.use_gpu:
            return states + forward + backward
        # ZeRO-3 keeps its reduce bucket and gradient partitions from step to step.
        kept = backward if self.zero_stage == 3 else 0
        return states + kept + max(forward, backward - kept)


def activation_bytes(shape: ModelShape, micro_batch_size: int, seq_len: int, value_bytes: int,
                     gradient_checkpointing: bool, lora_dropout: float = 0.0) -> int:
    """Activations one worker keeps for the backward pass.

    Counted per token and decoder layer as Korthikanti et al. 2022 ("Reducing Activation
    Recomputation in Large Transformer Models", arXiv:2205.05198, Section 4) count them, for
    a Llama-style layer with SDPA (no stored attention matrix) and no dropout: the two
    RMSNorms' inputs and normalised outputs (4h), the query and the attention output (2h),
    the rotated key and the value (2 x kv), the output projection's input (h), the
    residual's (h), and the SwiGLU MLP's gate, up, activated gate and product (4i). A LoRA
    adapter with dropout keeps its dropped-out input and mask (value + 1 byte per input
    feature) and its rank-r inner activation. Measured on SmolLM2-135M with saved-tensor
    hooks: within 1% (full and LoRA) and 7% (checkpointing) of this count. With full
    recomputation (Hugging Face's gradient checkpointing per decoder layer) only each
    layer's input is kept, plus one layer's full activations while it is recomputed.
    """
    tokens = micro_batch_size * seq_len
    h = shape.hidden_size
    layer_values = 8 * h + 2 * shape.kv_size + 4 * shape.intermediate_size
    adapter = shape.adapter_rank * value_bytes
    if lora_dropout > 0:
        adapter += shape.adapter_in_features * (value_bytes + 1)
    one_layer = tokens * (layer_values * value_bytes + adapter)
    if gradient_checkpointing:
        return shape.num_layers * tokens * h * value_bytes + one_layer
    return shape.num_layers * one_layer


def logits_bytes(shape: ModelShape, tokens: int, value_bytes: int, head_trains: bool) -> int:
    """The loss's peak: logits in the training dtype, their fp32 log-softmax and gradient.

    Hugging Face's loss upcasts the logits and keeps the log-softmax for the backward pass.
    The chunked loss holds one chunk of ``CHUNK_LOGITS`` at a time: the logits, their fp32
    log-probabilities turned in place into the gradient, and in bf16 its bf16 copy (8 bytes
    a logit either way), plus the fp32 gradients of a trained head and the hidden states.
    """
    logits = tokens * shape.vocab_size
    if not shape.chunked_loss:
        return logits * (value_bytes + 8)
    n_chunks = -(-logits // CHUNK_LOGITS)
    chunk = -(-tokens // n_chunks) * shape.vocab_size
    head = shape.vocab_size * shape.hidden_size * 4 if head_trains else 0
    return chunk * 8 + head + tokens * shape.hidden_size * 4


def estimate_memory_per_worker(cfg: TrainingConfig, world_size: int, bf16: bool,
                               shape: ModelShape, use_gpu: bool) -> MemoryEstimate:
    """Bytes one worker holds when training ``cfg`` on ``world_size`` DeepSpeed ranks
    (mixed-precision Adam accounting of Rajbhandari et al. 2020, "ZeRO", Section 3.1, as
    DeepSpeed 0.19 allocates it).

    Weights and gradients take 2 bytes a parameter in bf16, 4 in fp32; frozen parameters
    (LoRA) hold weights only, QLoRA's 4-bit base half a byte. Under ZeRO 1-3 DeepSpeed keeps
    an fp32 master partition beside Adam's two moments (12 bytes per trainable parameter,
    over ``world_size``), even when training in fp32; ZeRO-0 in fp32 steps torch's AdamW on
    the weights themselves (8). ZeRO-2 and 3 partition the gradients; ZeRO-3 the weights
    too, plus what it gathers (a layer and the prefetch bucket). Offload moves those parts to
    the host (on a GPU; on a CPU they stay in the same process). Add the communication
    buckets, the activations, the loss's logits and the process (CPU) or CUDA context (GPU).
    """
    value_bytes = 2 if bf16 else 4
    trainable = shape.trainable_params
    frozen = shape.total_params - trainable
    weights: float = frozen * (0.5 if cfg.method == "qlora" else value_bytes) \
        + trainable * value_bytes
    gradients: float = trainable * value_bytes
    optimizer: float = trainable * (12 if bf16 or cfg.zero_stage >= 1 else 8)
    if cfg.zero_stage >= 1:
        optimizer /= world_size
    if cfg.zero_stage >= 2:
        gradients = trainable * 4 / world_size  # the reduced fp32 partition
    host = 0.0
    if cfg.zero_stage == 3:
        per_layer = shape.total_params / max(shape.num_layers, 1)
        gathered = min(shape.total_params, per_layer + DEEPSPEED_PREFETCH_ELEMENTS) * value_bytes
        weights /= world_size
        if cfg.offload_params != "none" and use_gpu:
            host += weights
            weights = 0
        weights += gathered
    if cfg.offload_optimizer != "none" and use_gpu:
        host += optimizer
        optimizer = 0
    bucket = cfg.comm_bucket_elements or bucket_elements(trainable)
    # ZeRO-2 with overlap_comm double-buffers; ZeRO-1 stages in fp32; ZeRO-0 has none.
    n_buffers, bucket_value_bytes = {0: (0, 0), 1: (1, 4), 2: (2, value_bytes),
                                     3: (1, value_bytes)}[cfg.zero_stage]
    bucket_elems = n_buffers * bucket
    if not use_gpu:
        # A CPU process holds only the pages written, at most one per trainable gradient;
        # the GPU's caching allocator takes every buffer whole.
        bucket_elems = min(bucket_elems, trainable)
    tokens = cfg.micro_batch_size * cfg.seq_len
    return MemoryEstimate(
        baseline_bytes=GPU_CONTEXT_BYTES if use_gpu else CPU_PROCESS_BYTES,
        weights_bytes=math.ceil(weights),
        gradients_bytes=math.ceil(gradients),
        optimizer_bytes=math.ceil(optimizer),
        buckets_bytes=bucket_elems * bucket_value_bytes,
        activations_bytes=activation_bytes(
            shape, cfg.micro_batch_size, cfg.seq_len, value_bytes, cfg.gradient_checkpointing,
            cfg.lora.dropout if cfg.method in ("lora", "qlora", "dora") else 0.0),
        logits_bytes=logits_bytes(shape, tokens, value_bytes, head_trains=cfg.method == "full"),
        host_bytes=math.ceil(host),
        use_gpu=use_gpu,
        zero_stage=cfg.zero_stage,
        world_size=world_size,
        micro_batch_size=cfg.micro_batch_size,
        gradient_checkpointing=cfg.gradient_checkpointing,
        offload_optimizer=cfg.offload_optimizer,
        offload_params=cfg.offload_params,
        method=cfg.method,
    )


def estimate_for(model_dir: str, cfg: TrainingConfig, world_size: int, bf16: bool,
                 use_gpu: bool) -> MemoryEstimate:
    """The estimate for training ``model_dir`` (a local dir or hub id) on ``cfg``, from its
    config alone (no weights read)."""
    shape = model_shape(model_dir, cfg if cfg.method != "full" else None)
    return estimate_memory_per_worker(cfg, world_size, bf16, shape, use_gpu)


LEAN_HEAP_FROM_BYTES = 256 * 1024**2
"""The estimated activations and logits from which a CPU worker keeps glibc's mmap threshold
fixed (``worker.keep_mmap_threshold``). glibc's heap can keep about what a step frees, so
below this it keeps little, while a fixed threshold maps fresh pages for every tensor over
128 KiB: the demo's 1.1M-parameter steps took 1.6 times as long with it (268 ms against
168 ms, the same loss); SmolLM2-135M LoRA at micro-batch 4 held 5.2 GiB per worker without
it against 3.6 GiB with it."""


def needs_lean_heap(model_dir: str, cfg: TrainingConfig, world_size: int,
                    use_gpu: bool) -> bool:
    """Whether CPU workers training ``model_dir`` on ``cfg`` should keep glibc's mmap
    threshold fixed: their estimated activations and logits reach
    ``LEAN_HEAP_FROM_BYTES``. Never on GPUs, whose activations are not the process's."""
    if use_gpu:
        return False
    e = estimate_for(model_dir, cfg, world_size, False, False)
    return e.activations_bytes + e.logits_bytes >= LEAN_HEAP_FROM_BYTES


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
    parts = ", ".join(f"{name} {_size(n)}" for name, n in e.parts().items() if name != "host")
    parts += f"; host {_size(e.host_bytes)}"
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
def _device() -> tuple[str, int]:
    return torch.cuda.get_device_name(0), int(torch.cuda.get_device_properties(0).total_memory)


@functools.cache
def gpu_device(timeout_s: float = 60.0) -> tuple[str, int] | None:
    """(name, total memory in bytes) of one GPU of the connected cluster, asked of a GPU
    node once per driver; None without GPUs or on timeout."""
    if ray.cluster_resources().get("GPU", 0) < 1:
        return None
    ref = _device.remote()
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        # Every GPU is busy: report the estimate alone rather than wait.
        ray.cancel(ref, force=True)
        return None


def gpu_memory_bytes(timeout_s: float = 60.0) -> int | None:
    """Total memory of one GPU of the connected cluster; None without GPUs or on timeout."""
    found = gpu_device(timeout_s)
    return found[1] if found is not None else None
