"""A stage's hyperparameter sweep: its search space over the stage's training keys, checked
before anything starts, and the trials it gives as Ray Tune reads them.

A space maps a training key (``lr``, ``epochs``, ``lora.rank``, ``mixture_temperature``, ...)
to one distribution: ``grid`` (every value, crossed with the other grids), ``choice`` (one
value drawn per trial), ``uniform`` or ``loguniform`` (a float drawn from ``[low, high]``),
or ``randint`` (an integer drawn from ``[low, high]``, both included). Ray Tune's semantics
hold: a sweep runs ``num_samples`` times the product of the grids' lengths, each trial with
its own draw of the other keys.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from tunearena.configbase import StrictModel
from tunearena.errors import UserError

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


class Distribution(StrictModel):
    """The values one key takes across a sweep's trials: exactly one of the fields."""

    grid: list[Any] | None = Field(None, min_length=1)
    """Every value, each in its own trials (crossed with the other keys' grids)."""
    choice: list[Any] | None = Field(None, min_length=1)
    """One value drawn per trial."""
    uniform: tuple[float, float] | None = None
    """``[low, high]``: a float drawn evenly per trial."""
    loguniform: tuple[float, float] | None = None
    """``[low, high]``, both above zero: a float whose logarithm is drawn evenly (learning
    rates)."""
    randint: tuple[int, int] | None = None
    """``[low, high]``: an integer drawn per trial, both ends included."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [name for name in DISTRIBUTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)}"
                             + (f"; got {', '.join(given)}" if given else ""))
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None and bounds[0] > bounds[1]:
            raise ValueError(f"{given[0]}: low {bounds[0]} is above high {bounds[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: low must be above zero")
        return self

    @property
    def name(self) -> str:
        return next(n for n in DISTRIBUTIONS if getattr(self, n) is not None)

    def examples(self) -> list[Any]:
        """Values that stand for every trial's (each listed value, or a range's ends), to
        check against the stage's config before any trial starts."""
        if self.grid is not None or self.choice is not None:
            return list(self.grid or self.choice or [])
        low, high = self.uniform or self.loguniform or self.randint or (0, 0)
        return [low, high]

    def tune(self) -> Any:
        """The Ray Tune domain of this distribution."""
        from ray import tune

        if self.grid is not None:
            return tune.grid_search(self.grid)
        if self.choice is not None:
            return tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        assert self.randint is not None
        return tune.randint(self.randint[0], self.randint[1] + 1)  # Tune's high is excluded


class SweepSearchUnavailable(UserError, ImportError):
    """A search algorithm whose package is not installed."""


class SweepConfig(StrictModel):
    """A stage trained several times over a search space; the trial with the largest domain
    gain within ``evaluation.forgetting_tolerance`` becomes the stage's model."""

    space: dict[str, Distribution]
    """Training key (dotted for a nested one: ``lora.rank``) -> its distribution."""
    search: Literal["random", "optuna"] = "random"
    """How the non-grid keys are drawn: ``random`` (each trial on its own, Ray Tune's
    default), or ``optuna`` (Optuna's TPE, through Ray Tune's ``OptunaSearch``: each draw
    learns from the validation losses so far; needs ``pip install optuna`` and no ``grid``)."""
    num_samples: int = Field(1, ge=1, le=1000)
    """Repeats of the whole grid, each with fresh draws of the other keys (with ``optuna``:
    the number of trials)."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """Trials training side by side; default: as many as the cluster can place at once."""
    scheduler: Literal["asha", "none"] = "asha"
    """``asha``: stop trials whose validation loss trails the others' at the same evaluation
    (Ray Tune's ASHA); ``none``: every trial trains to its end."""
    grace_period: int = Field(1, ge=1)
    """Validation evaluations every trial gets before ASHA may stop it."""
    reduction_factor: int = Field(2, ge=2)
    """ASHA keeps about one trial in this many at each rung."""
    fully_scored: int = Field(3, ge=1)
    """Finished trials scored as arms on every benchmark, lowest validation loss first; the
    rest are shown by their validation loss alone."""

    @model_validator(mode="after")
    def _a_space_to_search(self) -> SweepConfig:
        if not self.space:
            raise ValueError("space is empty: name at least one training key and its values, "
                             "e.g. space: {lr: {grid: [1.0e-4, 3.0e-4]}}")
        grids = [key for key, d in self.space.items() if d.grid is not None]
        if self.search == "optuna" and grids:
            raise ValueError(f"search optuna draws every value itself, but space.{grids[0]} is "
                             "a grid; make it a choice, or use search random")
        return self

    def searcher(self, seed: int) -> Any:
        """Ray Tune's search algorithm for ``search`` (None: Tune's own random and grid
        variants); ``SweepSearchUnavailable`` when its package is missing."""
        if self.search == "random":
            return None
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise SweepSearchUnavailable("sweep.search optuna needs Optuna: pip install optuna "
                                         "(or search: random)") from None
        return OptunaSearch(seed=seed)

    def trial_count(self) -> int:
        """Trials the sweep runs: ``num_samples`` times the product of its grids' lengths."""
        grids = [len(d.grid) for d in self.space.values() if d.grid is not None]
        return self.num_samples * math.prod(grids)

    def param_space(self) -> dict[str, Any]:
        """The space as Ray Tune's ``param_space``, keyed by the dotted training keys."""
        return {key: dist.tune() for key, dist in self.space.items()}


def apply_trial(training: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``training`` (a stage's training config as a dict) with a trial's dotted keys set."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in training.items()}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[leaf] = value
    return out


def check_space(space: dict[str, Distribution], training: dict[str, Any],
                validate: Any, where: str) -> None:
    """``ValueError`` naming ``where`` and the key when a space names a key the stage's
    training config lacks, or a value it would refuse; ``validate`` builds the config from a
    dict (``TrainingConfig.model_validate``)."""
    for key, dist in space.items():
        node: Any = training
        for depth, part in enumerate(key.split(".")):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                hint = difflib.get_close_matches(part, known, n=1)
                prefix = ".".join(key.split(".")[:depth])
                raise ValueError(
                    f"{where}.space: {key!r} is not a training key"
                    + (f"; did you mean {'.'.join([prefix, hint[0]]).lstrip('.')!r}?" if hint
                       else f" ({prefix or 'training'} has {', '.join(known)})"))
            node = node[part]
        for value in dist.examples():
            try:
                validate(apply_trial(training, {key: value}))
            except ValidationError as e:
                problem = "; ".join(err["msg"] for err in e.errors())
                raise ValueError(f"{where}.space.{key}: {dist.name} value {value!r} is refused: "
                                 f"{problem}") from None
