"""What a served run needs before and at deployment: the checks on the machine and the
cluster (port, API key, request log, replicas' CPUs and GPUs), and the Ray Serve
application built from the arms."""

from __future__ import annotations

import hashlib
import math
import os
import socket
from typing import Any

from tunearena.serve.arms import ServedArm, ServeError
from tunearena.serve.config import ServeConfig

APP_NAME = "tunearena"


def deployment_name(arm: str) -> str:
    """A Ray Serve deployment name for an arm (``ft@qa+rag`` -> ``arm-ft-at-qa-rag``)."""
    return "arm-" + arm.replace("@", "-at-").replace("+", "-")


def check_port(host: str, port: int) -> None:
    """``ServeError`` when ``host:port`` cannot be bound here (taken, or not this machine's)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another "
                         "with --port (serve.port), or stop what holds it") from None


def api_key_digest(cfg: ServeConfig) -> str | None:
    """The SHA-256 of the key in ``serve.api_key_env``; ``ServeError`` when it is unset."""
    if cfg.api_key_env is None:
        return None
    key = os.environ.get(cfg.api_key_env, "").strip()
    if not key:
        raise ServeError(f"serve.api_key_env names {cfg.api_key_env}, but it is not set (or "
                         f"empty) here: export {cfg.api_key_env}=<the key clients will send>")
    return hashlib.sha256(key.encode()).hexdigest()


def check_log(cfg: ServeConfig) -> str | None:
    """The request log's absolute path, after checking it can be appended to."""
    if cfg.log_requests is None:
        return None
    path = cfg.log_requests.expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as e:
        raise ServeError(f"serve.log_requests: cannot append to {path}: {e.strerror or e}"
                         ) from None
    return str(path)


def replica_resources(cfg: ServeConfig, n_arms: int, cluster: dict[str, float],
                      local: bool) -> tuple[float, float]:
    """``(cpus, gpus)`` each arm replica reserves, and ``ServeError`` when the cluster
    cannot hold the replicas it starts with."""
    replicas = cfg.autoscaling.min_replicas if cfg.autoscaling else cfg.replicas
    starting = n_arms * max(replicas, 1)
    have_cpu, have_gpu = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    gpus = cfg.gpus_per_replica if cfg.gpus_per_replica is not None else (
        1.0 if have_gpu else 0.0)
    cpus = cfg.cpus_per_replica
    if cpus is None:
        cpus = 1.0 if not local else math.floor(100 * have_cpu / starting) / 100
    if cpus <= 0 or cpus * starting > have_cpu + 1e-9:
        raise ServeError(f"{starting} replica(s) of {cpus:g} CPU each need {cpus * starting:g} "
                         f"CPUs; the cluster has {have_cpu:g}: lower serve.cpus_per_replica "
                         "or serve.replicas, or serve fewer arms")
    if gpus * starting > have_gpu + 1e-9:
        raise ServeError(f"{starting} replica(s) of {gpus:g} GPU each need {gpus * starting:g} "
                         f"GPUs; the cluster has {have_gpu:g}: set serve.gpus_per_replica "
                         "(0 serves on CPUs)")
    return cpus, gpus


def build_app(arms: list[ServedArm], cfg: ServeConfig, cpus: float, gpus: float,
              key_sha256: str | None, log_path: str | None) -> Any:
    """The Serve application: a deployment per arm behind the router."""
    from ray import serve

    from tunearena.serve.app import ArmReplica, Router, RouterSettings

    scale: dict[str, Any] = (
        {"autoscaling_config": cfg.autoscaling.model_dump()} if cfg.autoscaling
        else {"num_replicas": cfg.replicas})
    handles = {
        arm.name: serve.deployment(
            name=deployment_name(arm.name), ray_actor_options={"num_cpus": cpus,
                                                               "num_gpus": gpus},
            max_ongoing_requests=max(64, 4 * cfg.max_batch_size), **scale,
        )(ArmReplica).bind(arm, cfg.max_batch_size, cfg.batch_wait_ms / 1000,
                           max(1, int(cpus)))
        for arm in arms}
    settings = RouterSettings(
        arms={arm.name: (arm.max_tokens, arm.stop) for arm in arms},
        max_tokens=cfg.max_tokens, max_request_bytes=cfg.max_request_bytes,
        request_timeout_s=cfg.request_timeout_s, key_sha256=key_sha256, log_path=log_path)
    return serve.deployment(
        name="router", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000,
    )(Router).bind(handles, settings)
