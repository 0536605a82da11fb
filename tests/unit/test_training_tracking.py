"""Tracker against real TensorBoard and MLflow (file store) in tmp dirs, read back by their own
readers: TensorBoard's ``EventAccumulator`` and ``MlflowClient``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tunearena.training.config import TrackingConfig
from tunearena.training.tracking import Tracker, TrackerUnavailable, check_trackers_available

METRICS = [
    {"train_loss": 2.5, "lr": 1e-4, "tokens_per_s": 1200.0},
    {"train_loss": 2.0, "lr": 9e-5, "tokens_per_s": 1300.0, "val_loss": 2.2},
    {"train_loss": 1.5, "lr": 8e-5, "tokens_per_s": 1250.0},
]
PARAMS = {"method": "lora", "lr": 1e-4, "lora": {"rank": 8, "target_modules": ["q_proj"]}}


@pytest.fixture(autouse=True)
def _restore_mlflow_env(monkeypatch):
    # The tracker sets these in its process; monkeypatch puts back what was there before.
    for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)


def both(tmp_path) -> TrackingConfig:
    return TrackingConfig(
        tensorboard_dir=tmp_path / "tb",
        mlflow_tracking_uri=f"file:{tmp_path / 'mlruns'}",
        mlflow_experiment="unit",
    )


def log_steps(tracker: Tracker, steps=range(3)) -> None:
    for step in steps:
        tracker.log(METRICS[step], step=step)


def tb_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(name: str, steps=range(3)) -> list[tuple[int, float]]:
    return [(step, METRICS[step][name]) for step in steps if name in METRICS[step]]


def mlflow_history(cfg: TrackingConfig, run_id: str, name: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def test_metrics_and_params_read_back_from_both_trackers(tmp_path):
    cfg = both(tmp_path)
    tracker = Tracker.open(cfg, "run-1", PARAMS)
    log_steps(tracker)
    tracker.close()

    scalars = tb_scalars(tmp_path / "tb" / "run-1")
    assert set(scalars) == {"train_loss", "val_loss", "lr", "tokens_per_s"}
    for name, points in scalars.items():
        # Event files store float32.
        assert [s for s, _ in points] == [s for s, _ in expected(name)]
        assert [v for _, v in points] == pytest.approx([v for _, v in expected(name)], rel=1e-6)

    client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri)
    run = client.get_run(tracker.mlflow_run_id)
    experiment = client.get_experiment_by_name("unit")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
    assert run.info.run_name == "run-1"
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "method": "lora",
        "lr": "0.0001",
        "lora.rank": "8",
        "lora.target_modules": "['q_proj']",
    }
    for name in ("train_loss", "val_loss", "lr", "tokens_per_s"):
        assert mlflow_history(cfg, tracker.mlflow_run_id, name) == expected(name)


def test_long_param_values_are_truncated_to_mlflow_limit(tmp_path):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    cfg = TrackingConfig(mlflow_tracking_uri=f"file:{tmp_path / 'mlruns'}")
    with Tracker.open(cfg, "long", {"prompt": "x" * (MAX_PARAM_VAL_LENGTH + 10)}) as tracker:
        pass
    params = (
        MlflowClient(tracking_uri=cfg.mlflow_tracking_uri)
        .get_run(tracker.mlflow_run_id)
        .data.params
    )
    assert params == {"prompt": "x" * MAX_PARAM_VAL_LENGTH}


def test_nothing_configured_is_a_no_op_that_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Tracker.open(TrackingConfig(), "run-1", PARAMS) as tracker:
        log_steps(tracker)
    assert tracker.mlflow_run_id is None
    assert list(tmp_path.iterdir()) == []


def test_non_finite_and_non_numeric_values_are_skipped(tmp_path):
    cfg = both(tmp_path)
    with Tracker.open(cfg, "run-1", {}) as tracker:
        tracker.log(
            {
                "train_loss": float("nan"),
                "lr": float("inf"),
                "phase": "warmup",
                "done": True,
                "val_loss": 1.25,
            },
            step=0,
        )
        tracker.log({"train_loss": 1.0}, step=1)

    assert tb_scalars(tmp_path / "tb" / "run-1") == {
        "val_loss": [(0, 1.25)],
        "train_loss": [(1, 1.0)],
    }
    run = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri).get_run(tracker.mlflow_run_id)
    assert run.data.metrics == {"val_loss": 1.25, "train_loss": 1.0}


def test_context_manager_marks_the_run_failed_on_exception(tmp_path):
    cfg = both(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), Tracker.open(cfg, "run-1", {}) as tracker:
        tracker.log(METRICS[0], step=0)
        raise RuntimeError("boom")
    client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri)
    assert client.get_run(tracker.mlflow_run_id).info.status == "FAILED"
    # Closed already: a second close changes nothing and logging after it is ignored.
    tracker.close()
    tracker.log(METRICS[1], step=1)
    assert client.get_run(tracker.mlflow_run_id).info.status == "FAILED"
    assert mlflow_history(cfg, tracker.mlflow_run_id, "train_loss") == expected("train_loss", [0])


def test_resume_continues_the_same_mlflow_run(tmp_path):
    cfg = both(tmp_path)
    with Tracker.open(cfg, "run-1", {**PARAMS, "max_steps": 2}) as first:
        log_steps(first, [0, 1])
    client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri)
    # A resumed training may carry a changed smoke switch; MLflow params are write-once, so
    # the first value stays and the new key is added.
    with Tracker.open(
        cfg, "run-1", {**PARAMS, "max_steps": 3, "resumed": True}, resume_run_id=first.mlflow_run_id
    ) as resumed:
        log_steps(resumed, [2])
        assert client.get_run(first.mlflow_run_id).info.status == "RUNNING"

    assert resumed.mlflow_run_id == first.mlflow_run_id
    assert len(client.search_runs([client.get_experiment_by_name("unit").experiment_id])) == 1
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["max_steps"] == "2" and run.data.params["resumed"] == "True"
    assert mlflow_history(cfg, first.mlflow_run_id, "train_loss") == expected("train_loss")
    # TensorBoard reads the second event file in the same dir as the continuation.
    assert tb_scalars(tmp_path / "tb" / "run-1")["train_loss"] == expected("train_loss")


def test_check_trackers_available_passes_when_installed(tmp_path):
    check_trackers_available(TrackingConfig())
    check_trackers_available(both(tmp_path))


@pytest.mark.parametrize("package", ["tensorboard", "mlflow"])
def test_check_trackers_available_names_the_missing_package_and_the_fix(
    tmp_path, monkeypatch, package
):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(TrackerUnavailable, match=package) as raised:
        check_trackers_available(both(tmp_path))
    assert 'pip install "tunearena[tracking]"' in str(raised.value)
    assert isinstance(raised.value, ImportError)
    # Not named, not needed.
    check_trackers_available(TrackingConfig())


def test_import_is_free_and_mlflow_telemetry_stays_off(tmp_path):
    # A fresh process without pytest's or CI's variables, under which MLflow would otherwise
    # start its telemetry client (it calls out to the internet on first use).
    uri = f"file:{tmp_path / 'mlruns'}"
    script = textwrap.dedent(f"""
        import socket, sys
        import tunearena.training.tracking as tracking
        assert not {{"mlflow", "tensorboard", "torch"}} & set(sys.modules), "eager import"

        def no_network(*args, **kwargs):
            raise AssertionError(f"network lookup: {{args}}")
        socket.getaddrinfo = no_network

        from tunearena.training.config import TrackingConfig
        cfg = TrackingConfig(mlflow_tracking_uri={uri!r})
        with tracking.Tracker.open(cfg, "run-1", {{"lr": 1e-4}}) as tracker:
            tracker.log({{"train_loss": 1.0}}, step=0)
        from mlflow.telemetry import get_telemetry_client
        from mlflow.telemetry.utils import is_telemetry_disabled
        assert is_telemetry_disabled() and get_telemetry_client() is None
    """)
    unset = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "DO_NOT_TRACK"}
    unset |= {"MLFLOW_DISABLE_TELEMETRY", "MLFLOW_ALLOW_FILE_STORE"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
