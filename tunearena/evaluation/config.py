"""The ``evaluation:`` and ``report:`` sections: benchmarks, arms, scoring and statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tunearena.configbase import StrictModel

ARMS = ("base", "base+rag", "ft", "ft+rag")


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
    arms: list[Literal["base", "base+rag", "ft", "ft+rag"]] = Field(
        default_factory=lambda: list(ARMS)
    )
    """Arms to compare; ``base`` is always included, as every difference is taken against it."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N questions of each benchmark (a smoke switch)."""
    batch_size: int = Field(32, ge=1)
    """Log-likelihood requests per forward pass."""
    bootstrap_samples: int = Field(2000, ge=100)
    """Resamples for every confidence interval."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Confidence level of every interval."""

    @field_validator("arms")
    @classmethod
    def _base_first(cls, arms: list[str]) -> list[str]:
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms are listed twice: {arms}")
        return ["base"] + [a for a in arms if a != "base"]


class ReportConfig(StrictModel):
    """What the report states and at what cost rates."""

    gpu_hour_cost_usd: float = Field(2.5, ge=0)
    """Price of one accelerator-hour (CPU-hours are priced the same on a CPU-only run)."""
    forgetting_tolerance: float = Field(0.02, ge=0, le=1)
    """A drop in general accuracy up to this (absolute) is called negligible."""
