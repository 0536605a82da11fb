"""A sweep's search space: one distribution a key, checked against the stage's training
config before anything starts, and handed to Ray Tune as its own domains."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from ray import tune

from tunearena.training.config import TrainingConfig
from tunearena.training.sweep import Distribution, SweepConfig, apply_trial, check_space

TRAINING = TrainingConfig.model_validate(
    {"datasets": [{"path": "qa.jsonl", "format": "instruction"}], "method": "lora"}
).model_dump(exclude={"enabled"})


def sweep(**space) -> SweepConfig:
    return SweepConfig.model_validate({"space": space})


def test_trials_are_the_grids_crossed_times_the_samples():
    cfg = SweepConfig.model_validate({
        "space": {"lr": {"grid": [1e-4, 3e-4, 1e-3]}, "lora.rank": {"grid": [8, 16]},
                  "epochs": {"randint": [1, 3]}},
        "num_samples": 2})
    assert cfg.trial_count() == 12
    space = cfg.param_space()
    assert space["lr"] == tune.grid_search([1e-4, 3e-4, 1e-3])
    # Tune's randint leaves its upper end out; the config's includes it.
    assert (space["epochs"].lower, space["epochs"].upper) == (1, 4)


def test_a_trial_sets_nested_keys_without_touching_the_stage():
    out = apply_trial(TRAINING, {"lora.rank": 4, "lr": 0.01})
    assert (out["lora"]["rank"], out["lr"]) == (4, 0.01)
    assert out["lora"]["alpha"] == TRAINING["lora"]["alpha"]
    assert TRAINING["lora"]["rank"] != 4, "the stage's own config must not change"
    assert TrainingConfig.model_validate(out).lora.rank == 4


@pytest.mark.parametrize("space, message", [
    ({"lr": {"grid": [1e-4]}, "lora.rnak": {"grid": [8]}},
     r"'lora.rnak' is not a training key; did you mean 'lora.rank'\?"),
    ({"learning_rate": {"grid": [1e-4]}}, r"'learning_rate' is not a training key"),
    ({"lr": {"loguniform": [1e-5, 1e-3]}, "epochs": {"grid": [1, -2]}},
     r"stages.1 \(qa\).sweep.space.epochs: grid value -2 is refused"),
    ({"lora.rank": {"choice": [8, "big"]}}, r"space.lora.rank: choice value 'big' is refused"),
])
def test_a_space_naming_an_unknown_key_or_a_refused_value_is_named(space, message):
    cfg = SweepConfig.model_validate({"space": space})
    with pytest.raises(ValueError, match=message):
        check_space(cfg.space, TRAINING, TrainingConfig.model_validate, "stages.1 (qa).sweep")


@pytest.mark.parametrize("raw, message", [
    ({"space": {}}, "space is empty"),
    ({"space": {"lr": {}}}, "give exactly one of grid, choice"),
    ({"space": {"lr": {"grid": [1], "choice": [2]}}}, "got grid, choice"),
    ({"space": {"lr": {"uniform": [3, 1]}}}, "low 3.0 is above high 1.0"),
    ({"space": {"lr": {"loguniform": [0, 1]}}}, "low must be above zero"),
    ({"space": {"lr": {"grid": []}}}, "at least 1 item"),
    ({"space": {"lr": {"grid": [1]}}, "num_sample": 2}, "num_sample"),
])
def test_a_malformed_sweep_is_refused(raw, message):
    with pytest.raises(ValidationError, match=message):
        SweepConfig.model_validate(raw)


def test_the_examples_checked_are_each_value_or_the_range_ends():
    assert Distribution(grid=[1, 2, 3]).examples() == [1, 2, 3]
    assert Distribution(uniform=(0.1, 0.5)).examples() == [0.1, 0.5]
    assert Distribution(randint=(1, 4)).name == "randint"
