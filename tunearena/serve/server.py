"""``tunearena serve RUN_DIR``: check everything, start (or join) Ray, run the application
on Ray Serve, wait for Ctrl-C, and leave nothing running behind.

Every check that can fail on the user's input runs before Ray starts: the run directory, the
arms, their weights and index, the API key's variable, the request log's folder and the port.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from tunearena.serve.arms import ServedArm, ServeError, served_arms
from tunearena.serve.config import ServeConfig

APP_NAME = "tunearena"


def serve_config(run_dir: Path, overrides: Sequence[str] = ()) -> ServeConfig:
    """The ``serve:`` section of the run's ``config.yaml`` (defaults when it has none), with
    ``--set serve.KEY=VALUE`` overrides; ``ConfigError`` names the source and field."""
    import yaml
    from pydantic import ValidationError

    from tunearena.configbase import ConfigError, format_validation_error
    from tunearena.launch.config import apply_override

    path = Path(run_dir) / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    raw = {"serve": (saved or {}).get("serve") or {}}
    for assignment in overrides:
        if not assignment.startswith("serve."):
            raise ConfigError(f"--set {assignment!r}: serve takes serve.KEY=VALUE only (the "
                              "run itself is finished)")
        apply_override(raw, assignment)
    try:
        return ServeConfig.model_validate(raw["serve"])
    except ValidationError as e:
        where = ", ".join(f"--set {a}" for a in overrides) or str(path)
        raise format_validation_error(e, ServeConfig, f"{where}: serve") from None


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
        cpus = 1.0 if not local else min(1.0, math.floor(100 * have_cpu / starting) / 100)
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
        )(ArmReplica).bind(arm, cfg.max_batch_size, cfg.batch_wait_ms / 1000)
        for arm in arms}
    settings = RouterSettings(
        arms={arm.name: (arm.max_tokens, arm.stop) for arm in arms},
        max_tokens=cfg.max_tokens, max_request_bytes=cfg.max_request_bytes,
        request_timeout_s=cfg.request_timeout_s, key_sha256=key_sha256, log_path=log_path)
    return serve.deployment(
        name="router", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000,
    )(Router).bind(handles, settings)


def serve_run(run_dir: Path, cfg: ServeConfig, console: Console,
              wait: Callable[[], None] | None = None) -> int:
    """Serve the run's arms until Ctrl-C (or until ``wait`` returns), then stop Serve and
    Ray and end any process Ray left. Returns the exit status."""
    import ray

    from tunearena.cluster.config import ClusterConfig
    from tunearena.cluster.ray_cluster import ray_session
    from tunearena.launch.interrupts import descendants, reap, reclaim

    arms = served_arms(run_dir, cfg.arms, cfg.lora)
    key = api_key_digest(cfg)
    log_path = check_log(cfg)
    local = cfg.address == "local"
    if local:
        check_port(cfg.host, cfg.port)
    # Ray Serve's per-request lines go to its log files (RAY_LOG_DIR/serve/), not this console.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    with ExitStack() as stack:
        if not ray.is_initialized():
            before = descendants()
            stack.callback(lambda: _reaped(reap(before), console))
        stack.enter_context(ray_session(ClusterConfig(address=cfg.address),
                                        say=lambda line: console.print(line)))
        reclaim()  # ray.init takes SIGTERM for itself
        cpus, gpus = replica_resources(cfg, len(arms), ray.cluster_resources(), local)
        from ray import serve

        stack.callback(serve.shutdown)
        console.print(f"starting {len(arms)} arm(s) on Ray Serve ({cpus:g} CPU"
                      + (f", {gpus:g} GPU" if gpus else "") + " per replica); loading "
                      "the models...")
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # set up by serve.start
        t0 = time.perf_counter()
        serve.run(build_app(arms, cfg, cpus, gpus, key, log_path), name=APP_NAME,
                  route_prefix="/", blocking=False)
        url = f"http://{_url_host(cfg.host)}:{cfg.port}/v1"
        for arm in arms:
            what = arm.model_dir + (f" + adapter {arm.adapter_dir}" if arm.adapter_dir else "")
            rag = f", retrieving the top {arm.top_k} passages from {arm.index_dir}" \
                if arm.rag else ""
            console.print(f"  model [bold]{arm.name}[/bold]: {what}{rag}", soft_wrap=True)
        console.print(f"serving at [bold]{url}[/bold] (ready in {time.perf_counter() - t0:.0f} "
                      "s" + (", API key required" if key else "")
                      + (f", requests logged to {log_path}" if log_path else "")
                      + "); Ctrl-C stops", soft_wrap=True)
        try:
            (wait or _forever)()
        except KeyboardInterrupt:
            console.print("stopping...")
        _summary(console)
    return 0


def _forever() -> None:
    while True:
        time.sleep(3600)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _summary(console: Console) -> None:
    """Each arm's figures from the router, as the server stops."""
    from ray import serve

    try:
        figures = serve.get_app_handle(APP_NAME).stats.remote().result(timeout_s=10)
    except Exception:  # the router is gone already (a second Ctrl-C): nothing to say
        return
    for name, f in figures.items():
        if f["requests"]:
            console.print(f"  {name}: {f['requests']} requests ({f['errors']} failed), p50 "
                          f"{f['latency_p50_ms'] or 0:.0f} ms, p95 {f['latency_p95_ms'] or 0:.0f} "
                          f"ms, {f['prompt_tokens']} prompt and {f['completion_tokens']} "
                          "completion tokens", soft_wrap=True)


def _reaped(left: list[str], console: Console) -> None:
    if left:
        console.print(f"[dim]ended {len(left)} process(es) Ray left running: "
                      f"{', '.join(left)}[/dim]")
