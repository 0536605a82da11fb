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


def test_concurrent_trials_are_what_the_cluster_places_or_a_clear_refusal():
    from tunearena.cluster.config import ClusterConfig
    from tunearena.training.sweep_run import SweepUnplaceable, concurrent_trials

    four = SweepConfig.model_validate({"space": {"lr": {"grid": [1e-4, 3e-4, 1e-3, 3e-3]}}})
    two_workers = ClusterConfig(num_workers=2, cpus_per_worker=1, use_gpu=False)
    assert concurrent_trials(four, two_workers, False, {"CPU": 8.0}) == 4
    assert concurrent_trials(four, two_workers, False, {"CPU": 5.0}) == 2
    gpus = ClusterConfig(num_workers=2, gpus_per_worker=1)
    assert concurrent_trials(four, gpus, True, {"CPU": 64.0, "GPU": 2.0}) == 1
    asked = four.model_copy(update={"max_concurrent_trials": 3})
    with pytest.raises(SweepUnplaceable, match="max_concurrent_trials is 3, but the cluster "
                                               r"\(4 CPU, 0 GPU\) places 2 trial"):
        concurrent_trials(asked, two_workers, False, {"CPU": 4.0})
    with pytest.raises(SweepUnplaceable, match="one trial needs 2 workers"):
        concurrent_trials(four, two_workers, False, {"CPU": 1.0})


def _stage_with(sweep: dict, **training) -> list:
    from tunearena.training.config import StageConfig, TrainingConfig, resolve_stages

    base = TrainingConfig.model_validate({"datasets": [{"path": "x.jsonl", "format": "text"}],
                                          **training})
    return resolve_stages(base, [StageConfig.model_validate({"name": "qa", "sweep": sweep})])


def test_a_stage_sweep_is_checked_against_the_stage_before_anything_runs():
    [stage] = _stage_with({"space": {"lr": {"grid": [1e-4, 3e-4]}}})
    assert stage.sweep is not None and stage.sweep.trial_count() == 2
    with pytest.raises(ValueError, match=r"stages.0 \(qa\).sweep.space: 'method' says what the "
                                         "stage is"):
        _stage_with({"space": {"method": {"grid": ["full", "lora"]}}})
    with pytest.raises(ValueError, match="scheduler asha stops trials by their validation loss"):
        _stage_with({"space": {"lr": {"grid": [1e-4]}}}, validation_fraction=0.0)
    # Without ASHA, no validation data is needed.
    _stage_with({"space": {"lr": {"grid": [1e-4]}}, "scheduler": "none"}, validation_fraction=0.0)


def _summary(**changes):
    from tunearena.training.summary import SweepSummary, SweepTrial

    trials = [
        SweepTrial(trial="a_00000", params={"lr": 0.02}, status="finished", evaluations=6,
                   val_loss=2.5, train_s=60.0, device_hours=60 / 3600, domain_gain=0.2,
                   forgetting=0.3, within_tolerance=False),
        SweepTrial(trial="a_00001", params={"lr": 0.01}, status="finished", evaluations=6,
                   val_loss=2.6, train_s=60.0, device_hours=60 / 3600, domain_gain=0.1,
                   forgetting=0.05, within_tolerance=True),
        SweepTrial(trial="a_00002", params={"lr": 1e-6}, status="stopped early", evaluations=1,
                   val_loss=5.4, train_s=15.0, device_hours=15 / 3600),
    ]
    return SweepSummary(chosen="a_00001", rule="trial a_00001: the largest mean gain",
                        space={"lr": {"grid": [0.02, 0.01, 1e-6]}}, scheduler="asha",
                        num_samples=1, concurrent=2, scored=["a_00000", "a_00001"],
                        trials=trials, device_hours=135 / 3600, **changes)


def test_the_report_says_what_a_sweep_searched_how_trials_ended_and_what_it_cost():
    from tunearena.evaluation.report.sweep_view import sweep_sentence

    text = sweep_sentence("qa", _summary(), usd_per_hour=4.0)
    assert text.startswith("Stage qa was trained 3 times over lr in {0.02, 0.01, 1e-06} "
                           "(2 at a time): 2 finished, 1 stopped early.")
    assert "ASHA stopped a trial" in text and "trial a_00001: the largest mean gain" in text
    assert "0.0375 device-hours ($0.15)" in text


def test_the_sweep_plot_marks_the_tolerance_and_the_chosen_trial():
    from tunearena.evaluation.report.plots import sweep_figure

    assert sweep_figure([], 0.1, "x") is None
    fig = sweep_figure([("a_00000", 0.2, 0.3), ("a_00001", 0.1, 0.05)], 0.1, "a_00001")
    assert fig is not None
    ax = fig.axes[0]
    tolerance_lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert [ln.get_xdata()[0] for ln in tolerance_lines] == [pytest.approx(10.0)]
    offsets = [tuple(c.get_offsets()[0]) for c in ax.collections if len(c.get_offsets())]
    assert (pytest.approx(30.0), pytest.approx(20.0)) in offsets
    assert "the stage's model" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_optuna_draws_the_space_and_refuses_a_grid():
    sweep = SweepConfig.model_validate({
        "space": {"lr": {"loguniform": [1e-5, 1e-2]}, "epochs": {"choice": [1, 2, 3]},
                  "lora.rank": {"randint": [4, 8]}},
        "search": "optuna", "num_samples": 6})
    searcher = sweep.searcher(seed=0)
    searcher.set_search_properties("val_loss", "min", sweep.param_space())
    drawn = [searcher.suggest(f"trial_{i}") for i in range(6)]
    assert all(1e-5 <= d["lr"] <= 1e-2 and d["epochs"] in (1, 2, 3)
               and 4 <= d["lora.rank"] <= 8 for d in drawn)
    assert len({d["lr"] for d in drawn}) == 6
    with pytest.raises(ValidationError, match="search optuna draws every value itself, but "
                                              "space.lr is a grid"):
        SweepConfig.model_validate({"space": {"lr": {"grid": [1e-4, 1e-3]}}, "search": "optuna"})
    assert SweepConfig.model_validate({"space": {"lr": {"grid": [1e-4]}}}).searcher(0) is None


def test_a_trial_in_a_suffixed_dir_is_still_found_by_its_label(tmp_path):
    # Restored as pending after the driver died while starting it, a trial finds its dir
    # taken and Tune appends a suffix; its label, summary and model stay its own.
    from types import SimpleNamespace

    from tunearena.training.summary import TrainingSummary
    from tunearena.training.sweep_run import _trial_result

    (tmp_path / "t3.json").write_text(TrainingSummary(
        steps=2, planned_steps=2, method="full", parameters=10, trainable_parameters=10,
        train_tokens=64, train_s=1.0, tokens_per_s=64.0, tokens_per_s_per_worker=32.0,
        device="cpu", global_batch_size=4, world_size=2, bf16=False, use_gpu=False,
        train_sequences=8, val_sequences=2, train_loss_tokens=60, final_val_loss=1.25,
        mix={"target": {"t": 1.0}, "realised": {"t": 1.0}, "sequences": {"t": 8}},
    ).model_dump_json())
    result = SimpleNamespace(path=str(tmp_path / "exp" / "t3_24a4"), config={"lr": 1e-7},
                             metrics={"evaluations": 2, "val_loss": 1.5}, error=None)
    trial = _trial_result(result, tmp_path)
    assert (trial.trial_id, trial.status, trial.val_loss) == ("t3", "finished", 1.25)
    assert trial.model_dir == str(tmp_path / "t3")
