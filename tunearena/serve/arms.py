"""Which arms a finished run can serve, and everything a replica needs to answer as the
arm was scored: its weights, its retrieval, its prompt format.

Everything is read from the run directory (``results.json``, ``models/``, ``index/``) and checked here, in the driver, before any cluster resource is claimed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunearena.errors import UserError
from tunearena.evaluation.arm import Arm
from tunearena.evaluation.results import BenchmarkRetrieval, Results, load_results
from tunearena.evaluation.tasks import MAX_ANSWER_TOKENS
from tunearena.training.model_dir import check_model_dir

VERDICT_ARMS = {"both": "ft+rag", "fine-tune": "ft", "RAG": "base+rag", "neither": "base"}
"""The arm served by default for each verdict; neither: the base model, as it was."""
SCORED_STOP = ("\n",)
"""Where a scored answer ends (the generative track's ``until``)."""


class ServeError(UserError, ValueError):
    """A run directory, an arm or a serve setting that cannot be served: the message names
    it and what to do."""


@dataclass(frozen=True)
class ServedArm:
    """One arm as a replica loads it. ``name`` is the model name clients ask for."""

    name: str
    model_dir: str
    """The weights: the base model, or a stage's merged model under ``models/``."""
    adapter_dir: str | None = None
    """With ``serve.lora: adapter``: the stage's peft adapter, put on ``model_dir``."""
    index_dir: str | None = None
    """The run's FAISS index, for a ``+rag`` arm."""
    top_k: int = 0
    chat_template: bool = False
    """Prompts go through the tokenizer's chat template, as the run scored them."""
    max_tokens: int = MAX_ANSWER_TOKENS
    """The answer length a request gets when it names none: the length the arm was scored
    with."""
    stop: tuple[str, ...] = SCORED_STOP
    """Where an answer ends when a request names no ``stop``: where scored answers ended."""

    @property
    def rag(self) -> bool:
        return self.index_dir is not None


def default_arm(results: Results) -> str:
    """The arm the report's verdict puts forward; ``base`` for neither, or a run decided
    nothing."""
    if results.decision is None:
        return "base"
    return results.decision.chosen or VERDICT_ARMS[results.decision.verdict]


def served_arms(run_dir: Path, names: Sequence[str] = (), lora: str = "merged",
                ) -> list[ServedArm]:
    """The arms ``names`` of the run in ``run_dir`` (none: the verdict's arm), checked:
    scored by the run, and their weights and index on disk. ``ServeError`` names what is
    missing and what to do."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ServeError(f"{run_dir}: no such run directory (tunearena run CONFIG makes one)")
    results = load_results(run_dir / "results.json")
    names = list(dict.fromkeys(names)) or [default_arm(results)]
    arms = []
    for name in names:
        arm = _parse(name, results)
        arms.append(_served(arm, run_dir, results, lora))
    return arms


def _parse(name: str, results: Results) -> Arm:
    try:
        arm = Arm.parse(name)
    except ValueError as e:
        raise ServeError(str(e)) from None
    if arm.context == "fewshot":
        raise ServeError(f"arm {name}: a +fewshot arm is a prompting baseline, scored with "
                         "examples drawn per benchmark, and is not served; serve "
                         f"{arm.model_name} or {arm.model_name}+rag")
    if str(arm) not in results.arms:
        raise ServeError(f"arm {name} was not scored by this run, so nothing measured it; "
                         f"the run scored {', '.join(results.arms)}")
    return arm


def _served(arm: Arm, run_dir: Path, results: Results, lora: str) -> ServedArm:
    from tunearena.evaluation.adapted import adapter_base, unmerged_adapter

    base = results.run.base_model if results.run else None
    if not base:
        raise ServeError(f"{run_dir / 'results.json'}: run.base_model is not recorded; "
                         "rerun the report step (tunearena run --resume)")
    models = run_dir / "models"
    selected = results.selected_stage or _only_stage(models)
    try:
        model_dir = arm.model_dir(base, models, selected)
    except ValueError as e:
        raise ServeError(f"{e}; serve a named stage, ft@<stage>") from None
    if not Path(model_dir).is_dir():
        raise ServeError(f"arm {arm}: its model {model_dir} is not there (was the run "
                         "directory copied without models/?)")
    unmerged = unmerged_adapter(model_dir)
    # Config and weights complete, and no code of their own: the model's, or for a stage
    # exported as an adapter alone (which the engine loads on its base), the base's.
    check_model_dir(adapter_base(unmerged) if unmerged else str(model_dir))
    adapter = None
    if lora == "adapter" and arm.is_finetuned and unmerged is None:
        model_dir, adapter = _adapter(arm, Path(model_dir), run_dir)
    index_dir, top_k = None, 0
    if arm.context == "rag":
        index_dir = run_dir / "index"
        if not (index_dir / "index.faiss").is_file():
            raise ServeError(f"arm {arm}: the run's index {index_dir} is not there")
        top_k = _scored_top_k(results, arm)
    chat = results.run is not None and results.run.prompt_format == "chat_template"
    return ServedArm(str(arm), str(model_dir), str(adapter) if adapter else None,
                     str(index_dir) if index_dir else None, top_k, chat)


def _scored_top_k(results: Results, arm: Arm) -> int:
    """The passages per question the run's RAG arms were scored with (``results.json``'s
    retrieval ``k``, the same on every benchmark)."""
    ks = {r.k for r in (results.retrieval or {}).values()
          if isinstance(r, BenchmarkRetrieval) and r.k is not None}
    if len(ks) != 1:
        raise ServeError(f"arm {arm}: results.json records no single retrieval k (found "
                         f"{sorted(ks) or 'none'}), so the passages it was scored with are "
                         "unknown; rerun the retrieve step (tunearena run --resume)")
    return ks.pop()


def _adapter(arm: Arm, merged: Path, run_dir: Path) -> tuple[Path, Path]:
    """The base and adapter dirs of a LoRA stage's arm."""
    from tunearena.training.adapters import read_base, resolve_base

    adapter = merged / "adapter"
    record = read_base(adapter) if adapter.is_dir() else None
    if record is None:
        raise ServeError(f"arm {arm}: serve.lora is adapter, but {adapter} holds no adapter "
                         "with a recorded base (the stage was a full fine-tune, or exported "
                         "before bases were recorded); use serve.lora: merged")
    return Path(resolve_base(record, run_dir)), adapter


def _only_stage(models: Path) -> str | None:
    stages = sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
    return stages[0] if len(stages) == 1 else None
