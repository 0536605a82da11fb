"""The ways a stage can train: every weight, or one of peft's parameter-efficient methods.

One table says, for each method, whether it adds an adapter, whether that adapter folds into
the base weights (so the stage exports a plain model the arms score and later stages start
from) or must be scored as base + adapter, and whether it takes room from the context. The
peft config each method trains with is built from the stage's settings in ``model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MethodName = Literal["full", "lora", "qlora", "dora", "ia3", "prompt_tuning", "prefix_tuning"]


@dataclass(frozen=True)
class Method:
    """What one training method is and needs."""

    name: str
    adapter: bool
    """Only peft's added weights train; the base stays frozen."""
    merges: bool
    """The adapter folds exactly into the base weights (``merge_and_unload``)."""
    virtual_tokens: bool
    """It prepends learned virtual tokens (to the input or to every layer's keys and values),
    which take room from the model's context."""
    summary: str
    """What it trains, in one line, for the docs and the report."""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", False, False, False, "every weight"),
    Method("lora", True, True, False, "low-rank updates of the linear layers"),
    Method("qlora", True, True, False, "LoRA on a 4-bit base (CUDA and bitsandbytes)"),
    Method("dora", True, True, False,
           "LoRA split into each weight's magnitude and direction (weight-decomposed LoRA)"),
    Method("ia3", True, True, False,
           "learned scales of the attention keys and values and the feed-forward input"),
    Method("prompt_tuning", True, False, True,
           "learned embeddings of virtual tokens before the input"),
    Method("prefix_tuning", True, False, True,
           "learned keys and values of virtual tokens in every layer"),
)}


def same_adapter(a: str, b: str) -> bool:
    """Whether a stage of method ``a`` can keep training an adapter of method ``b`` (QLoRA's
    adapter is a LoRA adapter)."""
    lora = ("lora", "qlora")
    return a == b or (a in lora and b in lora)
