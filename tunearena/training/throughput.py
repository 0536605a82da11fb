"""Model FLOPs utilisation: the share of the GPUs' dense bf16 peak that training used."""

from __future__ import annotations

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s per GPU, from the vendors' data sheets.
# Matched as substrings of torch.cuda.get_device_name(), most specific first.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 125.0),
    ("L4", 121.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The bf16 peak of a GPU by its CUDA name; None for a device not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def flops_per_token(n_params: int, n_trainable: int) -> int:
    """Training FLOPs per token: 2N forward, 2N for activation gradients, 2 per trainable
    parameter for weight gradients. Full fine-tuning gives the usual 6N; LoRA about 4N.
    Recomputation under gradient checkpointing is not counted, as MFU conventionally omits it.
    """
    return 4 * n_params + 2 * n_trainable


def mfu(tokens_per_s: float, n_params: int, n_trainable: int, n_gpus: int,
        device_name: str) -> float | None:
    """Achieved model FLOP/s over the peak of ``n_gpus`` such GPUs; None when unknown."""
    peak = peak_tflops(device_name)
    if peak is None:
        return None
    return flops_per_token(n_params, n_trainable) * tokens_per_s / (peak * 1e12 * n_gpus)
