"""The ``cluster:`` section: which Ray cluster, how many workers, and where they go."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunearena.configbase import StrictModel


class ClusterConfig(StrictModel):
    """Where training workers run."""

    address: str = "local"
    """``local`` starts an embedded Ray instance on this machine; ``auto`` joins the cluster
    this machine belongs to; ``ray://HOST:10001`` or ``HOST:6379`` joins that cluster."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs the embedded instance may use (``address: local`` only); default: all."""
    num_workers: int = Field(2, ge=1)
    """Ray Train workers, one DeepSpeed rank each (the data-parallel world size)."""
    use_gpu: bool | Literal["auto"] = "auto"
    """One GPU per worker; ``auto`` uses GPUs when the cluster has them."""
    cpus_per_worker: int = Field(1, ge=1)
    """CPUs reserved per worker; also the worker's torch and OpenMP thread count."""
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How workers are spread over nodes (a Ray placement-group strategy)."""
    storage_path: str | None = None
    """Where Ray Train writes checkpoints; default: ``<run dir>/ray``."""
