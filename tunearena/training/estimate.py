"""What a stage will cost before it runs: its training FLOPs over the GPUs' peak at an MFU
taken from a measured run on that GPU kind (or a stated default), in hours and dollars.

    hours = tokens x FLOPs per token / (GPUs x peak x MFU)

``tokens`` counts every position the steps compute (rows x padded width), since padding
costs as much as text; FLOPs per token is ``throughput.flops_per_token`` (6N for full
fine-tuning, about 4N for LoRA). The report sets the estimate beside what training spent, so
the next estimate can be trusted or its MFU corrected. With ``--plan``, ``tunearena
preflight`` estimates for a GPU kind it names without any cluster: memory per ZeRO stage,
time and cost of a run too large for the machine it is planned on.
"""

from __future__ import annotations

from pydantic import BaseModel

from tunearena.training.throughput import flops_per_token, peak_tflops

MEASURED_MFU: tuple[tuple[str, str, float, str], ...] = (
    ("H100", "full", 0.458, "1B Llama full fine-tune, sequence 2048, ZeRO-2, compiled, "
                            "micro-batch 20"),
    ("H100", "lora", 0.169, "1B Llama LoRA, sequence 2048, uncompiled"),
)
"""(GPU name part, method family, MFU, what ran): ``bench/train_throughput.py`` on one GPU
(the performance page has each command). An H200 computes at an H100's peak, so its
figures stand for it until it has its own."""
SAME_COMPUTE = {"H200": "H100"}
DEFAULT_MFU = 0.35
"""Where no run on the GPU kind was measured: what well-tuned dense training reaches."""
GPU_MEMORY_GIB = (("H200", 141.0), ("H100", 80.0), ("A100", 80.0), ("L40S", 48.0),
                  ("A10G", 24.0), ("L4", 24.0))
"""Each GPU kind's memory (the A100's larger model), for planning without the GPU."""


class TrainingEstimate(BaseModel):
    """A stage's training time and cost, estimated before it ran."""

    gpu: str
    gpus: int
    tokens: int
    """Positions the steps compute: steps x global batch x padded sequence width."""
    flops: float
    mfu: float
    mfu_source: str
    """The measured run the MFU comes from, or ``default``."""
    hours: float
    """Wall hours of the steps (start-up and evaluation not counted)."""
    device_hours: float
    usd: float


def assumed_mfu(gpu: str, method: str) -> tuple[float, str]:
    """(MFU, where it comes from) for ``method`` on GPU ``gpu``."""
    family = "full" if method == "full" else "lora"
    name = next((same for part, same in SAME_COMPUTE.items() if part in gpu), gpu)
    for part, measured_family, mfu, what in MEASURED_MFU:
        if part in name and measured_family == family:
            return mfu, f"measured on {part}: {what}"
    return DEFAULT_MFU, "default"


def gpu_memory_gib(gpu: str) -> float | None:
    """The memory of GPU kind ``gpu`` (a part of its name, e.g. ``H100``); None if unknown."""
    return next((gib for part, gib in GPU_MEMORY_GIB if part in gpu), None)


def estimate_training(gpu: str, gpus: int, steps: int, global_batch: int, width: int,
                      n_params: int, n_trainable: int, method: str,
                      usd_per_gpu_hour: float) -> TrainingEstimate | None:
    """The estimate for ``steps`` steps of ``global_batch`` rows ``width`` tokens wide on
    ``gpus`` GPUs named ``gpu``; None when that GPU's peak is unknown (a CPU run)."""
    peak = peak_tflops(gpu)
    if peak is None:
        return None
    mfu, source = assumed_mfu(gpu, method)
    tokens = steps * global_batch * width
    flops = float(tokens) * flops_per_token(n_params, n_trainable)
    hours = flops / (gpus * peak * 1e12 * mfu) / 3600
    return TrainingEstimate(gpu=gpu, gpus=gpus, tokens=tokens, flops=flops, mfu=mfu,
                            mfu_source=source, hours=hours, device_hours=hours * gpus,
                            usd=hours * gpus * usd_per_gpu_hour)


def estimate_line(stage: str, e: TrainingEstimate | None, device: str) -> str:
    """The console's line for a stage's estimate."""
    if e is None:
        return (f"{stage}: no time or cost estimate on {device} (only GPUs of a known peak "
                "are estimated)")
    return (f"{stage}: ~{_duration(e.hours)} on {e.gpus} x {e.gpu} "
            f"({e.tokens:,} tokens, {e.flops:.3g} FLOPs at {e.mfu:.0%} MFU, "
            f"{'assumed' if e.mfu_source == 'default' else e.mfu_source}), "
            f"{e.device_hours:.3g} GPU-hours, about ${e.usd:,.2f}")


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h"
