"""Export a trained engine as a Hugging Face model dir (safetensors) or a peft adapter, gathered
under ZeRO-3, and verify the export by reloading it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tunearena.remote_code import trust_remote_code
from tunearena.training.summary import ExportCheck, TrainingSummary

if TYPE_CHECKING:
    from tunearena.training.config import TrainingConfig
    from tunearena.training.worker import Worker

ADAPTER_DIR = "adapter"
"""Where an adapter stage's adapter goes inside the export dir (the merged model, when the
method merges, sits beside it)."""


class ExportError(RuntimeError):
    """An export that would write, or did write, a broken model."""


def gathered_state_dict(engine, zero_stage: int, rank: int,
                        trainable_only: bool = False) -> dict[str, torch.Tensor] | None:
    """Parameters (and persistent buffers) whole, on CPU, on rank 0 (None elsewhere).

    Under ZeRO-3 each rank holds a shard and the module's own tensors are empty, so each
    parameter is gathered in turn (a collective every rank must enter, in the same order);
    gathering one at a time keeps peak memory at one full parameter, not the whole model.
    ``trainable_only`` takes the parameters that train (a LoRA adapter) and no buffers.
    """
    import deepspeed

    module = engine.module
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        if zero_stage == 3:
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if rank == 0:
                    state[name] = param.data.detach().to("cpu", copy=True)
        elif rank == 0:
            state[name] = param.data.detach().to("cpu", copy=True)
    if rank != 0:
        return None
    if not trainable_only:
        persistent = module.state_dict().keys()
        state |= {k: b.detach().to("cpu", copy=True)
                  for k, b in module.named_buffers() if k in persistent}
    empty = [k for k, v in state.items() if v.numel() == 0]
    if empty:
        # The signature of a ZeRO-3 export that saved partitions instead of whole parameters.
        raise ExportError(f"refusing to export empty tensors: {', '.join(empty[:5])}")
    return state


def export(engine, zero_stage: int, is_lora: bool, out_dir: Path, rank: int) -> int:
    """Write the model (full) or the adapter (into ``out_dir/adapter``) from rank 0.

    A collective under ZeRO-3: every rank must call it. Returns the tensor count on rank 0.
    """
    import contextlib

    import deepspeed

    state = gathered_state_dict(engine, zero_stage, rank, trainable_only=is_lora)
    if not is_lora:
        if state is not None:
            engine.module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        return len(state or ())
    # peft keeps only the adapter's tensors of the given state dict, renamed as
    # PeftModel.from_pretrained expects them; but a prompt-learning adapter (prompt or
    # prefix tuning) is saved by running its prompt encoder, whose ZeRO-3 partitions every
    # rank must gather together, so every rank holds them whole while rank 0 saves.
    trainable = [p for p in engine.module.parameters() if p.requires_grad]
    whole = (deepspeed.zero.GatheredParameters(trainable, modifier_rank=None)
             if zero_stage == 3 else contextlib.nullcontext())
    with whole:
        if state is not None:
            engine.module.save_pretrained(out_dir / ADAPTER_DIR, state_dict=state,
                                          safe_serialization=True)
    return len(state or ())


def merge_adapter(base_dir: str, adapter_dir: Path, out_dir: Path, dtype: torch.dtype) -> None:
    """Fold an adapter (LoRA, DoRA, IA3) into its base weights and save a plain Hugging Face
    model dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, trust_remote_code=trust_remote_code())
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)


def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """The causal-LM loss of ``model`` on ``batch``, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = float(model(**batch).loss)
    model.train(was_training)
    return loss


def reload_loss(model_dir: Path, batch: dict[str, torch.Tensor], dtype: torch.dtype,
                base_dir: str | None = None) -> float:
    """Loss on ``batch`` of the model as a user would load it, on CPU.

    With ``base_dir``, ``model_dir`` is an adapter loaded with ``PeftModel.from_pretrained``.
    """
    from transformers import AutoModelForCausalLM

    model: torch.nn.Module
    if base_dir is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code())
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, trust_remote_code=trust_remote_code())
        model = PeftModel.from_pretrained(base, model_dir)
    return batch_loss(model, {k: v.cpu() for k, v in batch.items()})


def check_losses_match(what: str, trained: float, reloaded: float, tolerance: float) -> dict:
    """Raise ``ExportError`` unless the reloaded loss is within ``tolerance`` (relative)."""
    diff = abs(trained - reloaded)
    record = {"what": what, "trained_loss": trained, "reloaded_loss": reloaded,
              "abs_diff": diff, "tolerance": tolerance}
    if not math.isfinite(reloaded) or diff > tolerance * max(1.0, abs(trained)):
        raise ExportError(
            f"the exported {what} does not reproduce the trained model: loss {reloaded:.6g} on "
            f"reload against {trained:.6g} in training (allowed {tolerance:g} relative)"
        )
    return record


def export_tolerance(method: str, bf16: bool) -> float:
    """How far (relative) a reloaded export's loss may stray from the engine's.

    fp32 on the same CPU agrees to rounding; bf16 reloads on the CPU, not the GPU, and a
    QLoRA adapter trained on a 4-bit base is reloaded on the bf16 base it will be used with.
    """
    if method == "qlora":
        return 0.15
    return 5e-2 if bf16 else 1e-3


def export_verified(engine, cfg: TrainingConfig, worker: Worker, check_batch: dict,
                    model_dir: str, bf16: bool, summary: TrainingSummary, out: Path,
                    marker: str) -> None:
    """Export the trained engine to ``out`` and prove the export by reloading it (every rank
    calls it: it holds collectives); rank 0 writes ``summary`` (its export check filled in)
    into ``out / marker``.

    Raises ``ExportError`` when a reloaded model's loss on ``check_batch`` strays from the
    engine's beyond ``export_tolerance``.
    """
    from transformers import AutoTokenizer

    is_lora = cfg.method != "full"  # an adapter method
    merged = cfg.exports_merged
    # The loss of the trained engine on one fixed sequence (a collective under ZeRO-3: every
    # rank runs the same forward); the export must reproduce it when reloaded.
    trained_loss = batch_loss(engine, check_batch)
    export(engine, cfg.zero_stage, is_lora, out, worker.rank)  # a collective
    if not worker.is_main:
        return
    dtype = torch.bfloat16 if bf16 else torch.float32
    tolerance = export_tolerance(cfg.method, bf16)
    checks = []
    if is_lora:
        checks.append(check_losses_match(
            "adapter", trained_loss,
            reload_loss(out / ADAPTER_DIR, check_batch, dtype, model_dir), tolerance))
        if merged:
            merge_adapter(model_dir, out / ADAPTER_DIR, out, dtype)
    if merged:
        checks.append(check_losses_match(
            "model", trained_loss, reload_loss(out, check_batch, dtype), tolerance))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code())
    tokenizer.save_pretrained(out)
    if is_lora:
        tokenizer.save_pretrained(out / ADAPTER_DIR)
    summary.export_check = [ExportCheck(**c) for c in checks]
    (out / marker).write_text(summary.model_dump_json())
    worker.print("export verified: " + ", ".join(
        f"{c['what']} loss {c['reloaded_loss']:.6g} (trained {c['trained_loss']:.6g})"
        for c in checks))
