"""Export a trained engine as a Hugging Face model dir (safetensors), gathered under ZeRO-3."""

from __future__ import annotations

from pathlib import Path

import torch


class ExportError(RuntimeError):
    """An export that would write a broken model (for example an empty tensor)."""


def full_state_dict(engine, zero_stage: int, rank: int) -> dict[str, torch.Tensor] | None:
    """Every parameter and persistent buffer, whole, on CPU, on rank 0 (None elsewhere).

    Under ZeRO-3 each rank holds a shard and the module's own tensors are empty, so each
    parameter is gathered in turn (a collective every rank must enter, in the same order);
    gathering one at a time keeps peak memory at one full parameter, not the whole model.
    """
    import deepspeed

    module = engine.module
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if zero_stage == 3:
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if rank == 0:
                    state[name] = param.data.detach().to("cpu", copy=True)
        elif rank == 0:
            state[name] = param.data.detach().to("cpu", copy=True)
    if rank != 0:
        return None
    persistent = {k for k, _ in module.named_buffers() if k in module.state_dict()}
    for name, buf in module.named_buffers():
        if name in persistent:
            state[name] = buf.detach().to("cpu", copy=True)
    return state


def export_hf_model(engine, zero_stage: int, out_dir: Path, rank: int) -> int:
    """Write ``out_dir`` (config + safetensors) from rank 0; returns the tensor count there.

    Refuses to write an empty tensor: that is the signature of a ZeRO-3 export that saved
    partitions instead of gathered parameters.
    """
    state = full_state_dict(engine, zero_stage, rank)
    if rank != 0:
        return 0
    assert state is not None
    empty = [k for k, v in state.items() if v.numel() == 0]
    if empty:
        raise ExportError(f"refusing to export empty tensors: {', '.join(empty[:5])}")
    engine.module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    return len(state)
