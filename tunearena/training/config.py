"""The ``model:`` and ``training:`` sections."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tunearena.configbase import StrictModel


class ModelConfig(StrictModel):
    """The model every arm starts from."""

    base: str
    """A Hugging Face model id or a local model dir (config, tokenizer, weights)."""


class DatasetConfig(StrictModel):
    """One JSONL training file."""

    path: Path
    """JSONL file, one record a line."""
    format: Literal["text", "instruction"] = "text"
    """``text``: ``{"text"}``, loss on every token; ``instruction``: ``{"prompt", "response"}``,
    loss on the response only."""


class TrainingConfig(StrictModel):
    """One full fine-tuning stage on DeepSpeed, run by Ray Train workers."""

    enabled: bool = True
    """Run the fine-tuning step (and the ``ft`` arms)."""
    datasets: list[DatasetConfig] = Field(default_factory=list)
    """Training files, concatenated."""
    validation_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of records held out for the validation loss (seeded)."""
    seq_len: int = Field(256, ge=8)
    """Tokens per training sequence."""
    packing: bool = True
    """Concatenate records into full ``seq_len`` sequences (else: one record each, padded)."""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per worker per forward pass."""
    grad_accum_steps: int = Field(1, ge=1)
    """Forward passes per optimizer step; global batch = micro x accum x workers."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (ignored when ``max_steps`` is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps to run; a smoke switch that overrides ``epochs``."""
    lr: float = Field(1e-4, gt=0)
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up, in optimizer steps."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, ge=0)
    """Global gradient-norm clip (0 disables)."""
    zero_stage: int = Field(2, ge=0, le=3)
    """DeepSpeed ZeRO stage: 0 none, 1 optimizer states, 2 + gradients, 3 + parameters."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 on CUDA, fp32 on CPU."""
    eval_every_steps: int = Field(50, ge=1)
    """Validation loss every N optimizer steps (and at the end)."""
    log_every_steps: int = Field(10, ge=1)
    """Training loss and tokens/s every N optimizer steps."""
    checkpoint_every_steps: int | None = Field(None, ge=1)
    """A DeepSpeed checkpoint reported to Ray Train every N steps (default: none mid-run)."""
    seed: int = 0
    """Seeds data order and any random initialisation."""

    @model_validator(mode="after")
    def _needs_data(self) -> TrainingConfig:
        if self.enabled and not self.datasets:
            raise ValueError("training.enabled is true but training.datasets is empty")
        return self
