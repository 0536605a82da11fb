"""The ``serve:`` section: which arms ``tunearena serve`` puts behind its endpoint, where it
listens, how many replicas each arm gets, and the limits every request is held to."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tunearena.configbase import StrictModel


class AutoscalingConfig(StrictModel):
    """Ray Serve's autoscaling of each arm's replicas, by requests in flight per replica."""

    min_replicas: int = Field(1, ge=0)
    """Replicas kept however quiet it is (0 lets an idle arm scale away; its next request
    waits for a replica to load)."""
    max_replicas: int = Field(4, ge=1)
    """Replicas at most, however busy."""
    target_ongoing_requests: float = Field(4.0, gt=0)
    """The requests each replica should have in flight; more adds a replica."""

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas "
                             f"({self.max_replicas})")
        return self


class ServeConfig(StrictModel):
    """How ``tunearena serve RUN_DIR`` serves a finished run's arms (OpenAI-compatible)."""

    arms: list[str] = Field(default_factory=list)
    """The arms to serve, each under its own model name (``ft``, ``ft+rag``, ``base+rag``,
    ``ft@<stage>``, ``base``); empty serves the arm the report's verdict chose."""
    address: str = "local"
    """``local`` starts an embedded Ray instance of the server's own; ``auto`` or
    ``HOST:PORT`` joins a running cluster (the run directory must be readable there)."""
    host: str = "127.0.0.1"
    """The address the HTTP server binds: this machine only, unless set (``0.0.0.0``)."""
    port: int = Field(8000, ge=1, le=65535)
    """The HTTP port; the API is at ``http://HOST:PORT/v1``."""
    api_key_env: str | None = None
    """An environment variable holding the API key requests must send as ``Authorization:
    Bearer KEY``; unset, no key is asked for."""
    replicas: int = Field(1, ge=1)
    """Replicas of each arm (ignored when ``autoscaling`` is set)."""
    autoscaling: AutoscalingConfig | None = None
    cpus_per_replica: float | None = Field(None, gt=0)
    """CPUs each arm replica reserves (and its PyTorch threads). Unset: 1 on a cluster; on
    the embedded Ray, this machine's CPUs shared equally among the replicas."""
    gpus_per_replica: float | None = Field(None, ge=0)
    """GPUs each arm replica reserves. Unset: 1 when the cluster has GPUs, else 0."""
    max_batch_size: int = Field(8, ge=1)
    """Requests generated together in one batch (Ray Serve's request batching)."""
    batch_wait_ms: float = Field(0.0, ge=0)
    """How long a replica waits for more requests before it generates. 0 takes what is
    queued: a lone request is not held back, and under load the batch fills while the one
    before it generates."""
    max_tokens: int = Field(512, ge=1)
    """The most tokens a request may ask for (``max_tokens``); more is refused (400)."""
    max_request_bytes: int = Field(1_000_000, ge=1024)
    """The largest request body accepted; larger is refused (413)."""
    request_timeout_s: float = Field(120.0, gt=0)
    """A request still unanswered after this long fails (504) rather than hang."""
    lora: Literal["merged", "adapter"] = "merged"
    """A LoRA stage's arm as its ``merged`` model, or as the base with its ``adapter`` on top
    (peft; the stage must have kept ``models/<stage>/adapter``)."""
    log_requests: Path | None = None
    """Append every question, its retrieved documents and the answer to this JSONL file."""
