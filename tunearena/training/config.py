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
    format: Literal["text", "instruction", "chat"] = "text"
    """``text``: ``{"text"}``, loss on every token; ``instruction``: ``{"prompt", "response"}``,
    loss on the response only; ``chat``: ``{"messages": [{"role", "content"}, ...]}`` through
    the tokenizer's chat template, loss on the assistant turns only."""


class LoraConfig(StrictModel):
    """Low-rank adapters (peft) for ``method: lora`` or ``qlora``."""

    rank: int = Field(default=16, ge=1)
    """Adapter rank r."""
    alpha: int = Field(default=32, ge=1)
    """Scaling numerator: the update is scaled by ``alpha / rank``."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter's input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. ``[q_proj, v_proj]``), or ``all-linear``: every linear layer
    but the output head."""
    merge: bool = True
    """Also export the adapter merged into a full model dir (the ``ft`` arms evaluate it)."""


class TrackingConfig(StrictModel):
    """Experiment trackers that receive rank 0's metrics; all off by default."""

    tensorboard_dir: Path | None = None
    """TensorBoard log dir, relative to the run directory (needs the ``tensorboard`` package);
    default: off. On several nodes, rank 0 writes it on its own node."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI: ``file:mlruns`` (MLflow's file store, relative to the run directory;
    offline, needs only ``mlflow-skinny``), ``sqlite:///mlflow.db`` (also needs ``sqlalchemy``
    and ``alembic``) or a server such as ``http://host:5000``; default: off. MLflow's
    telemetry is switched off."""
    mlflow_experiment: str = "tunearena"
    """MLflow experiment the run is logged under."""


class TrainingConfig(StrictModel):
    """One fine-tuning stage on DeepSpeed, run by Ray Train workers."""

    enabled: bool = True
    """Run the fine-tuning step (and the ``ft`` arms)."""
    datasets: list[DatasetConfig] = Field(default_factory=list)
    """Training files, concatenated."""
    validation_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of records held out for the validation loss (seeded)."""
    seq_len: int = Field(256, ge=8)
    """Tokens per training sequence."""
    method: Literal["full", "lora", "qlora"] = "full"
    """``full``: every weight trains; ``lora``: adapters only (see ``lora``); ``qlora``: adapters
    on a 4-bit base (CUDA and bitsandbytes only)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Adapter settings, used when ``method`` is ``lora`` or ``qlora``."""
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
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay after warm-up."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """The decay ends at ``lr * min_lr_ratio`` (``cosine`` and ``linear``)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up, in optimizer steps."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, ge=0)
    """Global gradient-norm clip (0 disables)."""
    zero_stage: int = Field(2, ge=0, le=3)
    """DeepSpeed ZeRO stage: 0 none, 1 optimizer states, 2 + gradients, 3 + parameters."""
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    """Where optimizer states live (ZeRO 1-3): ``cpu`` or ``nvme`` frees GPU memory, slower."""
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    """Where parameters live between uses (ZeRO-3 only)."""
    nvme_path: Path | None = None
    """Local NVMe directory on every node, for ``nvme`` offload."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 on CUDA, fp32 on CPU."""
    eval_every_steps: int = Field(50, ge=1)
    """Validation loss every N optimizer steps (and at the end)."""
    log_every_steps: int = Field(10, ge=1)
    """Training loss and tokens/s every N optimizer steps."""
    checkpoint_every_steps: int | None = Field(None, ge=1)
    """A resumable checkpoint every N optimizer steps (default: none mid-run)."""
    checkpoint_keep: int = Field(2, ge=1)
    """How many of the latest checkpoints to keep (older ones are deleted)."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Where metrics go besides the console and ``results.json``."""
    seed: int = 0
    """Seeds data order and any random initialisation."""

    @model_validator(mode="after")
    def _needs_data(self) -> TrainingConfig:
        if self.enabled and not self.datasets:
            raise ValueError("training.enabled is true but training.datasets is empty")
        return self

    @model_validator(mode="after")
    def _offload_fits_the_stage(self) -> TrainingConfig:
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError(f"offload_params {self.offload_params!r} needs zero_stage 3 "
                             f"(got {self.zero_stage}): only ZeRO-3 partitions parameters")
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError(f"offload_optimizer {self.offload_optimizer!r} needs zero_stage "
                             f"1, 2 or 3: ZeRO-0 keeps optimizer states whole on every GPU")
        if "nvme" in (self.offload_optimizer, self.offload_params) and self.nvme_path is None:
            raise ValueError("nvme offload needs nvme_path (a local NVMe directory on each node)")
        return self
