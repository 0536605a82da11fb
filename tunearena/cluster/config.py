"""The ``cluster:`` section: which Ray cluster, how many workers, and where they go."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tunearena.configbase import StrictModel


class ClusterConfig(StrictModel):
    """Where training workers run."""

    address: str = "local"
    """``local`` starts an embedded Ray instance on this machine; ``auto`` joins the cluster
    ``RAY_ADDRESS`` names, else the one the last ``ray start`` on this machine recorded (never
    another program's embedded instance); ``ray://HOST:10001`` or ``HOST:6379`` joins that
    cluster."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs the embedded instance may use (``address: local`` only); default: all."""
    num_workers: int = Field(2, ge=1)
    """Ray Train workers, one DeepSpeed rank each (the data-parallel world size)."""
    use_gpu: bool | Literal["auto"] = "auto"
    """Give workers GPUs; ``auto`` uses GPUs when the cluster has them."""
    gpus_per_worker: float = Field(1.0, gt=0)
    """GPUs reserved per worker when GPUs are used (a fraction shares a GPU)."""
    cpus_per_worker: int = Field(1, ge=1)
    """CPUs reserved per worker; also the worker's torch and OpenMP thread count."""
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """Extra Ray resources each worker needs, e.g. ``{"A100": 1}`` or ``{"memory": 8e9}``."""
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How workers are spread over nodes (a Ray placement-group strategy)."""
    storage_path: str | None = None
    """Where Ray Train writes checkpoints: a directory every node sees (shared filesystem) or
    an object store URI Ray supports (``s3://...``, ``gs://...``); default: ``<run dir>/ray``,
    which only a single-node cluster can use."""
    max_failures: int = Field(0, ge=-1)
    """Worker-group restarts from the latest checkpoint after a failure (-1: unlimited)."""

    @field_validator("resources_per_worker")
    @classmethod
    def _no_cpu_or_gpu(cls, value: dict[str, float]) -> dict[str, float]:
        clash = sorted({"CPU", "GPU"} & value.keys())
        if clash:
            raise ValueError(f"{', '.join(clash)} belong in cpus_per_worker / gpus_per_worker, "
                             f"not resources_per_worker")
        return value
