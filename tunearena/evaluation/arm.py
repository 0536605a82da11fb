"""An arm: which model is scored, and with which context in its prompts.

Arms are written as strings in configs and results (``"base"``, ``"base+rag"``, ``"ft"``,
``"ft@qa+fewshot"``); code parses them into an ``Arm`` rather than cutting strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Context = Literal["", "rag", "fewshot"]
CONTEXTS: tuple[Context, ...] = ("", "rag", "fewshot")


@dataclass(frozen=True, order=True)
class Arm:
    """``model`` is ``"base"`` or ``"ft"``; ``stage`` names the fine-tuned stage for an
    ``ft@<stage>`` arm (``None`` for ``base`` and for ``ft``, the selected stage)."""

    model: Literal["base", "ft"]
    stage: str | None = None
    context: Context = ""

    @classmethod
    def parse(cls, text: str) -> Arm:
        """``"ft@qa+rag"`` -> ``Arm("ft", "qa", "rag")``; raises ``ValueError`` naming what is
        wrong with any other shape."""
        name, _, context = text.partition("+")
        model, at, stage = name.partition("@")
        if model not in ("base", "ft") or (at and (model != "ft" or not stage)):
            raise ValueError(f"arm {text!r}: the model part must be base, ft or ft@<stage>")
        if context not in CONTEXTS:
            raise ValueError(f"arm {text!r}: the context after '+' must be rag or fewshot")
        return cls(model, stage or None, context)  # type: ignore[arg-type]

    def __str__(self) -> str:
        name = f"ft@{self.stage}" if self.stage else self.model
        return f"{name}+{self.context}" if self.context else name

    @property
    def model_name(self) -> str:
        """The model part alone: ``base``, ``ft`` or ``ft@<stage>``."""
        return str(self.with_context(""))

    @property
    def is_finetuned(self) -> bool:
        return self.model == "ft"

    def with_context(self, context: Context) -> Arm:
        return Arm(self.model, self.stage, context)

    def at_stage(self, stage: str) -> Arm:
        """The same arm on a named stage: ``ft+rag`` -> ``ft@<stage>+rag``; base is unchanged."""
        return self if self.model == "base" else Arm("ft", stage, self.context)

    def model_dir(self, base: str | Path, models_dir: Path, selected: str | None) -> Path:
        """Where this arm's weights live: the base model, or a stage's exported model under
        ``models_dir`` (``selected`` for the plain ``ft`` arms)."""
        if self.model == "base":
            return Path(base)
        stage = self.stage or selected
        if stage is None:
            raise ValueError(f"arm {self}: no stage is selected for it yet")
        return models_dir / stage

