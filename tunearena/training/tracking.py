"""Experiment trackers for rank 0's metrics: TensorBoard and MLflow, both optional extras.

What ``TrackingConfig`` names decides where metrics go:

- ``tensorboard_dir``: event files under ``<tensorboard_dir>/<run_name>``.
- ``mlflow_tracking_uri``:

  - ``file:/abs/path/mlruns``: MLflow's file store, offline, with plain ``mlflow-skinny``.
    MLflow 3 keeps it in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is
    true; this module sets that in its own process for ``file:`` URIs, so it just works.
  - ``sqlite:///abs/path/mlflow.db``: MLflow's recommended local store; it also needs
    ``sqlalchemy`` and ``alembic``, which ``mlflow-skinny`` does not install.
  - ``http(s)://host:5000``: a tracking server.

MLflow's usage telemetry (which calls out to the internet) is switched off in this process.
Nothing here imports tensorboard or mlflow until a tracker is opened, so importing this module
costs nothing when tracking is off.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import time
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from tunearena.errors import UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from torch.utils.tensorboard import SummaryWriter

    from tunearena.training.config import TrackingConfig


class TrackerUnavailable(UserError, ImportError):
    """A tracker named in the config cannot be imported."""


def _import_mlflow() -> ModuleType:
    # Telemetry is read from the environment on each check, so this works even if something
    # imported mlflow earlier; resetting the client drops one created at that import.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow
    from mlflow.telemetry import set_telemetry_client

    set_telemetry_client()
    return mlflow


def check_trackers_available(cfg: TrackingConfig) -> None:
    """Raise ``TrackerUnavailable`` if a tracker that ``cfg`` names is not installed.

    Called by the pipeline before it claims any cluster resource, so a missing extra fails in
    seconds on the driver rather than on rank 0 after the workers have started.
    """
    named = {"tensorboard": cfg.tensorboard_dir, "mlflow": cfg.mlflow_tracking_uri}
    for package in [name for name, setting in named.items() if setting is not None]:
        try:
            if package == "mlflow":
                _import_mlflow()  # so that even this import has telemetry off
            else:
                importlib.import_module(package)
        except ImportError as e:
            raise TrackerUnavailable(
                f"training.tracking names {package}, but it cannot be imported ({e}); "
                'install it with: pip install "tunearena[tracking]"'
            ) from e


def _flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class Tracker:
    """Sends metrics to every tracker the config names; a no-op when it names none.

    Only rank 0 creates one (in the training loop), so each metric is written once, and only
    rank 0's node holds TensorBoard files. Use it as a context manager, or call ``close``.
    """

    def __init__(
        self,
        writer: SummaryWriter | None = None,
        mlflow_client: MlflowClient | None = None,
        mlflow_run_id: str | None = None,
    ) -> None:
        self._writer = writer
        self._mlflow = mlflow_client
        self._run_id = mlflow_run_id
        self._closed = False

    @classmethod
    def open(
        cls,
        cfg: TrackingConfig,
        run_name: str,
        params: dict[str, Any],
        resume_run_id: str | None = None,
    ) -> Tracker:
        """Open the trackers ``cfg`` names and log ``params`` (flattened, dotted keys).

        With ``resume_run_id``, MLflow reopens that run, so a resumed training continues one
        run and one metric history; TensorBoard appends a new event file to the same dir.
        """
        writer = None
        if cfg.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(Path(cfg.tensorboard_dir) / run_name))
        client, run_id = None, None
        if cfg.mlflow_tracking_uri is not None:
            client, run_id = _open_mlflow_run(
                cfg.mlflow_tracking_uri, cfg.mlflow_experiment, run_name, params, resume_run_id
            )
        return cls(writer, client, run_id)

    @property
    def mlflow_run_id(self) -> str | None:
        """The MLflow run's id (pass it as ``resume_run_id`` on resume); None without MLflow."""
        return self._run_id

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Write each finite number (Python or NumPy; ``.item()`` a tensor first), under its
        own name, to every tracker; anything else is skipped."""
        # A NaN or inf would poison TensorBoard's axes and MLflow's charts; bools are not metrics.
        values = {
            name: float(value)
            for name, value in metrics.items()
            if isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        if not values or self._closed:
            return
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, global_step=step)
        if self._mlflow is not None and self._run_id is not None:
            from mlflow.entities import Metric

            timestamp_ms = int(time.time() * 1000)
            batch = [Metric(name, value, timestamp_ms, step) for name, value in values.items()]
            self._mlflow.log_batch(self._run_id, metrics=batch)

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close the writer, end the MLflow run with ``status``; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._mlflow is not None and self._run_id is not None:
            self._mlflow.set_terminated(self._run_id, status=status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


def _open_mlflow_run(
    uri: str,
    experiment_name: str,
    run_name: str,
    params: dict[str, Any],
    resume_run_id: str | None,
) -> tuple[MlflowClient, str]:
    # MLflow 3 refuses its file store unless opted in; it is the offline store mlflow-skinny
    # can use without sqlalchemy.
    if uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow = _import_mlflow()
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    # A client bound to the URI, not mlflow.set_tracking_uri: no process-wide state, and no
    # MLFLOW_TRACKING_URI exported to every subprocess (Ray workers included).
    client = mlflow.MlflowClient(tracking_uri=uri)
    if resume_run_id is not None:
        run_id = resume_run_id
        already_logged = client.get_run(run_id).data.params
        client.update_run(run_id, status="RUNNING")
    else:
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(experiment_name)
        )
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        already_logged = {}
    # MLflow params are write-once, so a resumed run logs only the keys it does not have yet.
    flat = {k: v[:MAX_PARAM_VAL_LENGTH] for k, v in _flatten_params(params).items()}
    new = [Param(k, v) for k, v in flat.items() if k not in already_logged]
    if new:
        client.log_batch(run_id, params=new)
    return client, run_id
