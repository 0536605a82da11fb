"""The ``evaluation:`` and ``report:`` sections: benchmarks, arms, scoring and statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunearena.configbase import StrictModel

ARMS = ("base", "base+rag", "ft", "ft+rag")
ARM_PATTERN = r"^(base|ft|ft@[a-z0-9][a-z0-9_-]*)(\+rag)?$"
"""``base`` and ``ft`` (the selected fine-tuned model), ``ft@<stage>`` (one stage's model),
each with or without ``+rag``."""


class BenchmarkConfig(StrictModel):
    """One multiple-choice benchmark read from a QA JSONL file."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    """Task name in lm-eval and in the report (lower case, digits, underscores)."""
    path: Path
    """QA JSONL: ``{"id", "question", "choices": [str], "answer": int, "doc_id"?}`` a line."""
    kind: Literal["domain", "general"]
    """``domain``: what fine-tuning and RAG should improve; ``general``: the forgetting check."""


class EvaluationConfig(StrictModel):
    """Which arms are scored on which benchmarks, and how."""

    enabled: bool = True
    """Run the evaluation step."""
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    """Every benchmark is scored on every arm, with the same prompt template and scorer."""
    arms: list[str] = Field(default_factory=lambda: list(ARMS))
    """Arms to compare: ``base``, ``ft`` (the fine-tuned model; with ``stages``, the stage
    chosen under ``forgetting_tolerance``), ``ft@<stage>`` (one stage's model; every stage is
    added when ``stages`` are set), each also with ``+rag``. ``base`` is always included, as
    every difference is taken against it."""
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
    forgets more is not chosen as ``ft`` while another stays within it."""

    @field_validator("arms")
    @classmethod
    def _base_first(cls, arms: list[str]) -> list[str]:
        import re

        bad = [a for a in arms if not re.match(ARM_PATTERN, a)]
        if bad:
            raise ValueError(f"unknown arm {bad[0]!r}: expected base, ft or ft@<stage>, each "
                             "optionally with +rag (e.g. base+rag, ft@qa+rag)")
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms are listed twice: {arms}")
        return ["base"] + [a for a in arms if a != "base"]


class ReportConfig(StrictModel):
    """What the report states and at what cost rates."""

    gpu_hour_cost_usd: float = Field(2.5, ge=0)
    """Price of one accelerator-hour (CPU-hours are priced the same on a CPU-only run)."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: object) -> object:
        if isinstance(raw, dict) and "forgetting_tolerance" in raw:
            raise ValueError("report.forgetting_tolerance moved to "
                             "evaluation.forgetting_tolerance (it also chooses the ft stage)")
        return raw
