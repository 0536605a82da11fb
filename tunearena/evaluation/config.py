"""The ``evaluation:`` and ``report:`` sections: benchmarks, arms, scoring and statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunearena.configbase import StrictModel

ARMS = ("base", "base+rag", "ft", "ft+rag")
ARM_PATTERN = r"^(base|ft|ft@[a-z0-9][a-z0-9_-]*)(\+rag|\+fewshot)?$"
"""``base`` and ``ft`` (the selected fine-tuned model), ``ft@<stage>`` (one stage's model),
each alone, with ``+rag`` (retrieved passages) or with ``+fewshot`` (solved examples)."""


class BenchmarkConfig(StrictModel):
    """One benchmark: a QA JSONL file scored on a track, or a named lm-eval task."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    """Task name in lm-eval and in the report (lower case, digits, underscores)."""
    path: Path | None = None
    """QA JSONL: ``{"id", "question", "choices": [str], "answer": int, "doc_id"?}`` a line
    (the generative track also takes ``"answers": [str]``, gold aliases, instead of choices)."""
    kind: Literal["domain", "general"]
    """``domain``: what fine-tuning and RAG should improve; ``general``: the forgetting check."""
    track: Literal["multiple_choice", "generative"] = "multiple_choice"
    """``multiple_choice``: the choice of highest log-likelihood (acc, acc_norm);
    ``generative``: a greedy answer, scored by exact match and token F1 after normalisation."""
    lm_eval_task: str | None = None
    """Instead of ``path``: an lm-eval task or group by name (``arc_easy``, ``hellaswag``,
    ``mmlu``, ``wikitext``, ...), from lm-eval's registry or from ``task_dir``. Its data must
    be reachable (in the local datasets cache when offline). Scored as lm-eval defines it, with
    no retrieved context or examples; ``general`` benchmarks only. Multiple-choice and
    generate-until tasks are scored per question; loglikelihood-rolling ones (``wikitext``)
    as bits per byte, reported beside the forgetting checks."""
    task_dir: Path | None = None
    """A folder of lm-eval task YAMLs that holds ``lm_eval_task`` (instead of the registry)."""

    @model_validator(mode="after")
    def _one_source(self) -> BenchmarkConfig:
        if (self.path is None) == (self.lm_eval_task is None):
            raise ValueError(f"benchmark {self.name!r}: set exactly one of path (a QA JSONL) "
                             "and lm_eval_task (a task by name)")
        if self.task_dir is not None and self.lm_eval_task is None:
            raise ValueError(f"benchmark {self.name!r}: task_dir is read only with lm_eval_task")
        if self.lm_eval_task is not None and self.kind != "general":
            raise ValueError(f"benchmark {self.name!r}: an lm_eval_task is scored without "
                             "retrieved context, so it can only be a general benchmark (kind: "
                             "general); a domain benchmark needs a QA JSONL path")
        if self.lm_eval_task is not None and self.track != "multiple_choice":
            raise ValueError(f"benchmark {self.name!r}: an lm_eval_task's track is the one "
                             "the task defines; leave track unset")
        return self


class FewshotConfig(StrictModel):
    """Where the ``+fewshot`` arms take their solved examples from."""

    path: Path | None = None
    """Solved questions: a QA JSONL (the benchmark format) or instruction records
    (``{"prompt": "Question: ...\\nAnswer:", "response": ...}``, e.g. the training QA)."""
    k: int = Field(5, ge=1, le=64)
    """Examples placed before every question; the same ones, drawn with ``seed``, for every
    question and every ``+fewshot`` arm."""


class EvaluationConfig(StrictModel):
    """Which arms are scored on which benchmarks, and how."""

    enabled: bool = True
    """Run the evaluation step."""
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    """Every benchmark is scored on every arm, with the same prompt template and scorer."""
    arms: list[str] = Field(default_factory=lambda: list(ARMS))
    """Arms to compare: ``base``, ``ft`` (the fine-tuned model; with ``stages``, the stage
    chosen under ``forgetting_tolerance``), ``ft@<stage>`` (one stage's model; every stage is
    added when ``stages`` are set), each also with ``+rag``; with ``ft+rag``, the
    ``ft@<stage>+rag`` of every stage with ``rag_context`` is added beside it. ``base`` is
    always included, as every difference is taken against it."""
    fewshot: FewshotConfig = Field(default_factory=FewshotConfig)
    """Solved examples for the ``+fewshot`` arms (prompting alone, no training, no retrieval)."""
    long_prompts: Literal["error", "drop"] = "error"
    """A question whose prompt in some arm (with its retrieved passages or examples, and its
    answer) is longer than the model's context, which lm-eval would cut from the left:
    ``error`` stops the run before training, naming the benchmark, the arms and the counts;
    ``drop`` leaves the question out of every arm alike, so the arms stay paired, counted in
    ``results.json`` (``prompt_lengths``) and the report."""
    latency_questions: int = Field(32, ge=0)
    """Questions per benchmark timed one at a time (retrieval plus the model's answer) for
    each arm's latency p50/p95; 0 skips the timing."""
    probe: bool = True
    """Before any arm on a fine-tuned model is scored, stop the run if a stage's next-token
    log-probabilities on the probe prompts equal the base's (an adapter never applied, the
    base exported again); turn it off only for stages meant to leave the base unchanged."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N questions of each benchmark (a smoke switch)."""
    batch_size: int = Field(32, ge=1)
    """Log-likelihood requests per forward pass."""
    bootstrap_samples: int = Field(2000, ge=100)
    """Resamples for every confidence interval."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Confidence level of every interval."""

    forgetting_tolerance: float = Field(0.02, ge=0, le=1)
    """A drop in general accuracy up to this (absolute) is called negligible; a stage that
    forgets more is not chosen as ``ft`` while another stays within it. A benchmark whose
    interval against base reaches past it on both sides is warned about as too wide to
    decide."""

    @field_validator("arms")
    @classmethod
    def _base_first(cls, arms: list[str]) -> list[str]:
        import re

        bad = [a for a in arms if not re.match(ARM_PATTERN, a)]
        if bad:
            raise ValueError(f"unknown arm {bad[0]!r}: expected base, ft or ft@<stage>, each "
                             "optionally with +rag or +fewshot (e.g. base+rag, ft@qa+rag, "
                             "base+fewshot)")
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms are listed twice: {arms}")
        return ["base"] + [a for a in arms if a != "base"]

    @model_validator(mode="after")
    def _fewshot_has_examples(self) -> EvaluationConfig:
        wants = [a for a in self.arms if a.endswith("+fewshot")]
        if wants and self.fewshot.path is None:
            raise ValueError(f"evaluation.arms lists {wants[0]!r} but evaluation.fewshot.path "
                             "is not set (a file of solved questions to draw examples from)")
        return self


class ReportConfig(StrictModel):
    """What the report states and at what cost rates."""

    gpu_hour_cost_usd: float = Field(2.5, ge=0)
    """Price of one accelerator-hour (CPU-hours are priced the same on a CPU-only run)."""
    queries: int = Field(100_000, ge=1)
    """Questions the chosen option is expected to answer over its life: cost-of-pass spreads
    the one-off costs (training a model, building the RAG index) over this many answers."""
    serving_hour_cost_usd: float | None = Field(None, ge=0)
    """Price of one hour of the device answers are served on, for cost-of-pass (each answer
    costs its measured answer time at this price); unset: ``gpu_hour_cost_usd``."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: object) -> object:
        if isinstance(raw, dict) and "forgetting_tolerance" in raw:
            raise ValueError("report.forgetting_tolerance moved to "
                             "evaluation.forgetting_tolerance (it also chooses the ft stage)")
        return raw
