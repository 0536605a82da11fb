"""What one training stage hands the next steps: a typed summary, not a dict to guess at.

Rank 0 fills ``TrainingSummary`` at the end of ``train_loop_per_worker`` and writes it beside
the exported model; ``run_stage`` reads it back; the runner adds where the stage started and
what data it read; ``results.json`` carries it under ``training`` and ``stages``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tunearena.training.estimate import TrainingEstimate


class _Record(BaseModel):
    """Unknown keys are an error: a renamed field must fail where it is read, not later."""

    model_config = ConfigDict(extra="forbid")


class ExportCheck(_Record):
    """The exported weights reloaded and scored on one fixed sequence against the trained ones."""

    what: str
    """``model`` (full weights or merged adapter) or ``adapter``."""
    trained_loss: float
    reloaded_loss: float
    abs_diff: float
    tolerance: float
    """Allowed relative difference."""


class WorkerPlacement(_Record):
    """Where one rank ran."""

    rank: int
    node_ip: str
    node_id: str
    pid: int
    device: str


class TaskMix(_Record):
    """The stage's mixture over its tasks: asked for, realised, and sequences drawn."""

    target: dict[str, float]
    realised: dict[str, float]
    sequences: dict[str, int]


class ReplaySummary(_Record):
    fraction: float
    """Share of each batch drawn from replayed tasks."""
    sources: list[str]
    """The replayed tasks, ``<stage>/<task>`` or a replay dataset's task."""


class SweepTrial(_Record):
    """One trial of a stage's sweep."""

    trial: str
    """Ray Tune's trial id; its scored arm is ``ft@<stage>#<trial>``."""
    params: dict[str, Any]
    """The trial's training keys (dotted)."""
    status: Literal["finished", "stopped early", "failed"]
    evaluations: int
    """Validations it reached; ASHA compares trials at the same count."""
    val_loss: float | None
    """Its last validation loss."""
    train_s: float
    """Wall seconds the trial ran."""
    device_hours: float
    """``train_s`` times its workers (GPUs on a GPU cluster)."""
    error: str | None = None
    domain_gain: float | None = None
    """Fully scored trials only: mean gain over the base on the domain benchmarks."""
    forgetting: float | None = None
    """Fully scored trials only: the largest drop below the base on a general benchmark."""
    within_tolerance: bool | None = None


class SweepSummary(_Record):
    """A stage's sweep: its settings, every trial, and which became the stage's model."""

    chosen: str
    """The trial whose model is the stage's."""
    rule: str
    """How it was chosen, as a sentence."""
    warning: str | None = None
    space: dict[str, Any]
    """Training key -> its distribution, as configured."""
    scheduler: str
    search: str = "random"
    num_samples: int
    concurrent: int
    """Trials that trained side by side."""
    scored: list[str]
    """The trials scored as arms on every benchmark (lowest validation loss first)."""
    trials: list[SweepTrial]
    device_hours: float
    """Every trial's, the stopped and failed ones included."""


class TrainingSummary(_Record):
    """One stage's training: its length, speed, losses, mixture and verified export."""

    steps: int
    """Optimizer steps run (fewer than ``planned_steps`` when stopped early)."""
    planned_steps: int
    stopped_early_at: int | None = None
    resumed_from_step: int = 0
    """The checkpoint's step this attempt continued from (0: a fresh start)."""
    method: str
    parameters: int
    trainable_parameters: int
    train_tokens: int
    """Tokens in the trained batches (padding excluded)."""
    train_s: float
    """Wall time of the training steps, over every attempt."""
    time_to_first_step_s: float | None = None
    step_time_s: list[float] = []
    tokens_per_s: float
    tokens_per_s_per_worker: float
    mfu: float | None = None
    """Model FLOPs utilisation on CUDA; ``None`` on CPU."""
    device: str
    peak_gpu_memory_mb: float | None = None
    peak_rss_mb: list[float] = []
    """Each rank's peak resident memory (its process's high-water mark) up to the end of
    training, before the export, in rank order."""
    placement: list[WorkerPlacement] = []
    global_batch_size: int
    world_size: int
    bf16: bool
    use_gpu: bool
    train_sequences: int
    val_sequences: int
    train_loss_tokens: int
    """Tokens that carry loss in an epoch of training sequences."""
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    kind: str = "sft"
    """``sft``, or the preference objective (``dpo``, ``simpo``)."""
    reward_accuracy: float | None = None
    """A preference stage's share of held-out pairs whose chosen reply's reward beats the
    rejected one's, at the end (0 at the start of DPO, where every reward is 0)."""
    reward_margin: float | None = None
    """Its mean chosen-minus-rejected reward on the held-out pairs, at the end."""
    val_loss_by_task: dict[str, float] = {}
    mix: TaskMix
    history: list[dict[str, int | float]] = []
    """Logged metrics by step: ``step``, ``train_loss``, ``val_loss``, ``tokens_per_s``, ..."""
    export_check: list[ExportCheck] = []
    # Added by the runner, which knows where the stage started and what it read.
    start_from: str | None = None
    """``base`` or the stage whose weights this one continued."""
    lora_init: str | None = None
    replay: ReplaySummary | None = None
    data: dict[str, Any] = {}
    """The prepare step's report per task: records read, kept, dropped, split."""
    sweep: SweepSummary | None = None
    """A swept stage's trials and the choice among them (the rest of this summary is the
    chosen trial's)."""
    estimate: TrainingEstimate | None = None
    """The time and cost estimated before the stage trained (GPU runs; ``estimate.py``)."""

    @property
    def median_step_s(self) -> float:
        ordered = sorted(self.step_time_s) or [0.0]
        return ordered[len(ordered) // 2]

    @property
    def p90_step_s(self) -> float:
        ordered = sorted(self.step_time_s) or [0.0]
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
