"""Scoring a stage whose adapter was not merged: its base model with the peft adapter on it.

Such a stage (prompt or prefix tuning, which cannot merge, or LoRA with ``lora.merge``
false) exports ``models/<stage>/adapter`` and its tokenizer, and no model beside them. Its
arms load the base the adapter records (``training/adapters.py``) and put the adapter on it.

Prompt tuning prepends its virtual tokens to the input, so peft's logits are that many
positions longer than the input; lm-eval reads a continuation's logits by position, so the
scored model drops them. And peft's generation for both virtual-token methods disagrees with
its own forward under transformers 5 (prefix tuning's cached decoding leaves the prefix out
altogether), so such a model generates step by step through the forward it was trained and
scored with, without a cache: slower, and the same answers as that forward gives.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch

from tunearena.training.export import ADAPTER_DIR


def unmerged_adapter(model_dir: str | Path) -> Path | None:
    """The adapter of a stage exported without a merged model, or None for a model dir."""
    folder = Path(model_dir)
    adapter = folder / ADAPTER_DIR
    if (folder / "config.json").is_file() or not (adapter / "adapter_config.json").is_file():
        return None
    return adapter


def adapter_base(adapter: Path) -> str:
    """The model ``adapter`` (``<run>/models/<stage>/adapter``) was trained on."""
    from tunearena.training.adapters import AdapterBaseError, read_base, resolve_base

    record = read_base(adapter)
    if record is None:
        raise AdapterBaseError(f"{adapter} records no base model (tunearena_base.json); "
                               "train its stage again to score it")
    return resolve_base(record, adapter.parents[2])


def virtual_tokens(adapter: Path) -> int:
    """The positions the adapter's virtual tokens take from the context (0 for LoRA)."""
    from peft import PeftConfig

    return int(getattr(PeftConfig.from_pretrained(str(adapter)), "num_virtual_tokens", 0) or 0)


def load_adapted(adapter: Path, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The recorded base with ``adapter`` on it, in eval mode on ``device``, ready for lm-eval."""
    from peft import PeftModel, PeftType
    from transformers import AutoModelForCausalLM

    from tunearena.remote_code import trust_remote_code

    base = AutoModelForCausalLM.from_pretrained(
        adapter_base(adapter), local_files_only=True, dtype=dtype,
        trust_remote_code=trust_remote_code())
    model = PeftModel.from_pretrained(base, str(adapter)).to(device).eval()
    config = model.peft_config["default"]
    if config.peft_type == PeftType.PROMPT_TUNING:
        _drop_virtual_logits(model, config.num_virtual_tokens)
    if config.is_prompt_learning:
        model.generate = types.MethodType(generate_stepwise, model)
    return model


def _drop_virtual_logits(model: torch.nn.Module, n_virtual: int) -> None:
    """Make a prompt-tuned ``model``'s logits line up with its input."""
    forward = model.forward

    def aligned(self, *args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits[:, n_virtual:]
        return out

    model.forward = types.MethodType(aligned, model)


@torch.no_grad()
def generate_stepwise(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      max_length: int | None = None, max_new_tokens: int | None = None,
                      stopping_criteria=None, pad_token_id: int | None = None,
                      eos_token_id: int | list[int] | None = None, do_sample: bool = False,
                      temperature: float | None = None, top_p: float | None = None,
                      streamer=None, **_ignored) -> torch.Tensor:
    """Greedy (or sampled: temperature, top-p) decoding that runs the whole forward at every
    step on the prompt and what was generated so far, ended at an end-of-sequence id or by
    ``stopping_criteria``; finished rows are padded. Takes ``generate``'s arguments as lm-eval
    and serve pass them (stop strings are left to the caller, which cuts at them)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    eos = eos_token_id if eos_token_id is not None else model.generation_config.eos_token_id
    eos_ids = torch.tensor(eos if isinstance(eos, list) else [] if eos is None else [eos],
                           device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else 0
    limit = max_new_tokens if max_new_tokens is not None else \
        (max_length or input_ids.shape[1] + 32) - input_ids.shape[1]
    done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    for _ in range(max(limit, 0)):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1].float()
        step = (_sample(logits, temperature or 1.0, top_p or 1.0) if do_sample
                else logits.argmax(-1))
        step = torch.where(done, torch.full_like(step, pad), step)
        input_ids = torch.cat([input_ids, step[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, (~done).long()[:, None]], dim=1)
        if streamer is not None:
            streamer.put(step.cpu())
        done |= torch.isin(step, eos_ids)
        if stopping_criteria is not None:
            done |= torch.as_tensor(stopping_criteria(input_ids, logits), device=done.device)
        if bool(done.all()):
            break
    if streamer is not None:
        streamer.end()
    return input_ids


def _sample(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token a row from ``softmax(logits / temperature)``, kept to its top-p mass."""
    probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)
    ranked, order = probs.sort(dim=-1, descending=True)
    outside = ranked.cumsum(-1) - ranked > top_p  # the tokens past the top-p mass
    ranked = ranked.masked_fill(outside, 0.0)
    return order.gather(1, torch.multinomial(ranked, 1)).squeeze(1)
