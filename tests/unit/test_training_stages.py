"""A stage's origin, its tasks with replay, tracker paths and its results record: plain
functions of the resolved stages and the run directory, tested without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

from tunearena.launch.config import load_config
from tunearena.training.config import DatasetConfig, ReplayConfig, Stage, TrainingConfig
from tunearena.training.export import ADAPTER_DIR
from tunearena.training.stages import model_stage, stage_origin, stage_tasks, training_config

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def _stage(name: str, start: str, task: str, method: str = "full", lora_init: str = "merge",
           replay: ReplayConfig | None = None) -> Stage:
    training = TrainingConfig(method=method, datasets=[DatasetConfig(path=Path(f"{task}.jsonl"),
                                                                     format="text", name=task)])
    return Stage(name, start, training, lora_init, replay)


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_stage_starts_from_base_its_parents_model_or_its_parents_adapter(tmp_path):
    models = tmp_path / "models"
    a = _stage("a", "base", "x", method="lora")
    b = _stage("b", "a", "y")
    c = _stage("c", "a", "y", method="lora", lora_init="continue")
    stages = [a, b, c]
    assert stage_origin(a, stages, "BASE", models) == ("BASE", None)
    assert stage_origin(b, stages, "BASE", models) == (str(models / "a"), None)
    # A continued adapter is trained on the model its parent's adapter was trained on.
    assert stage_origin(c, stages, "BASE", models) == ("BASE", models / "a" / ADAPTER_DIR)
    # A fresh adapter after a LoRA stage sits on that stage's merged model, and a chain of
    # continued adapters keeps the model the first one was trained on.
    d = _stage("d", "c", "z", method="lora")
    e = _stage("e", "d", "z", method="lora", lora_init="continue")
    f = _stage("f", "e", "z", method="lora", lora_init="continue")
    stages += [d, e, f]
    assert [model_stage(s, stages) for s in stages] == [None, "a", None, "c", "c", "c"]
    assert stage_origin(f, stages, "BASE", models) == (str(models / "c"),
                                                       models / "e" / ADAPTER_DIR)


def test_replayed_tasks_follow_the_stages_own(tmp_path):
    data = tmp_path / "data"
    for stage, sub, task in [("a", "", "x"), ("b", "", "y"), ("b", "replay", "g")]:
        _write(data / stage / sub / f"{task}.train.jsonl", [{"text": f"{stage} {task}"}])
        _write(data / stage / sub / f"{task}.validation.jsonl", [])
    replay = ReplayConfig(fraction=0.25, stages="earlier",
                          datasets=[DatasetConfig(path=Path("g.jsonl"), format="text",
                                                  name="g")])
    stages = [_stage("a", "base", "x"), _stage("b", "a", "y", replay=replay)]
    tasks, fraction = stage_tasks(stages[1], stages, data)
    assert fraction == 0.25
    assert [t.name for t in tasks] == ["y", "replay:a/x", "replay:g"]
    assert [t.train for t in tasks] == [[{"text": "b y"}], [{"text": "a x"}], [{"text": "b g"}]]
    assert stage_tasks(stages[0], stages, data)[1] == 0.0


def test_relative_tracker_locations_move_into_the_run_directory(tmp_path):
    cfg = load_config(DEMO, ["training.tracking.tensorboard_dir=tb",
                             "training.tracking.mlflow_tracking_uri=file:mlruns"])
    tracking = training_config(cfg.training, tmp_path).tracking
    assert tracking.tensorboard_dir == tmp_path / "tb"
    assert tracking.mlflow_tracking_uri == f"file:{tmp_path / 'mlruns'}"
    absolute = load_config(DEMO, ["training.tracking.mlflow_tracking_uri=file:/abs"])
    assert training_config(absolute.training, tmp_path).tracking.mlflow_tracking_uri == "file:/abs"
