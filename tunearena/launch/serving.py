"""``tunearena serve RUN_DIR``: check everything, start (or join) Ray, run the application
on Ray Serve, wait for Ctrl-C, and leave nothing running behind.

Every check that can fail on the user's input runs before Ray starts: the serve settings, the
run directory, the arms, their weights and index, the API key's variable, the request log's
folder and the port.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from tunearena.launch.config import apply_override
from tunearena.serve.arms import ServedArm, ServeError, served_arms
from tunearena.serve.config import ServeConfig
from tunearena.serve.deploy import (
    APP_NAME,
    api_key_digest,
    build_app,
    check_log,
    check_port,
    replica_resources,
)


def serve_config(run_dir: Path, overrides: Sequence[str] = ()) -> ServeConfig:
    """The ``serve:`` section of the run's ``config.yaml`` (defaults when it has none), with
    ``--set serve.KEY=VALUE`` overrides; ``ConfigError`` names the source and field."""
    import yaml
    from pydantic import ValidationError

    from tunearena.configbase import ConfigError, format_validation_error

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




def serve_run(run_dir: Path, cfg: ServeConfig, console: Console) -> int:
    """Serve the run's arms until Ctrl-C or SIGTERM, then stop Serve (and an embedded Ray)
    and end any process Ray left. Returns the exit status."""
    import ray

    from tunearena.cluster.config import ClusterConfig
    from tunearena.launch.interrupts import enter_ray
    from tunearena.remote_code import set_trust_remote_code

    set_trust_remote_code(False)  # a served model never runs code of its own
    arms = served_arms(run_dir, cfg.arms, cfg.lora)
    key = api_key_digest(cfg)
    log_path = check_log(cfg)
    local = cfg.address == "local"
    if local:
        check_port(cfg.host, cfg.port)
    # Ray Serve's per-request lines go to its log files (RAY_LOG_DIR/serve/), not this console.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    with ExitStack() as stack:
        enter_ray(stack, ClusterConfig(address=cfg.address), console,
                  say=lambda line: console.print(line))
        cpus, gpus = replica_resources(cfg, len(arms), ray.cluster_resources(), local)
        from ray import serve

        console.print(f"starting {len(arms)} arm(s) on Ray Serve ({cpus:g} CPU"
                      + (f", {gpus:g} GPU" if gpus else "") + " per replica); loading "
                      "the models...")
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # set up by serve.start
        if APP_NAME in serve.status().applications:
            raise ServeError(f"this cluster already serves an application named {APP_NAME} "
                             "(another tunearena serve); stop that one first")
        # Ours alone on an embedded Ray; on a shared cluster only our application goes.
        stack.callback(serve.shutdown if local else lambda: serve.delete(APP_NAME))
        t0 = time.perf_counter()
        try:
            serve.run(build_app(arms, cfg, cpus, gpus, key, log_path), name=APP_NAME,
                      route_prefix="/", blocking=False)
        except RuntimeError as e:  # a replica could not start: its error, not Serve's stack
            raise ServeError(f"an arm's replica failed to start: {_first_error(e)} (Ray "
                             "Serve's logs: /tmp/ray/session_latest/logs/serve/)") from None
        _announce(console, arms, f"http://{_url_host(cfg.host)}:{_http_port(cfg.port)}/v1",
                  time.perf_counter() - t0, key is not None, log_path)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping...")
        _summary(console)
    return 0


def _announce(console: Console, arms: list[ServedArm], url: str, ready_s: float,
              keyed: bool, log_path: str | None) -> None:
    """What is served, where, and where its metrics are."""
    import ray

    for arm in arms:
        what = arm.model_dir + (f" + adapter {arm.adapter_dir}" if arm.adapter_dir else "")
        rag = (f", retrieving the top {arm.top_k} passages from {arm.index_dir}" if arm.rag
               else "")
        console.print(f"  model [bold]{arm.name}[/bold]: {what}{rag}", soft_wrap=True)
    console.print(f"serving at [bold]{url}[/bold] (ready in {ready_s:.0f} s"
                  + (", API key required" if keyed else "")
                  + (f", requests logged to {log_path}" if log_path else "")
                  + "); Ctrl-C stops", soft_wrap=True)
    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            console.print(f"  metrics (Prometheus, with Ray's): http://"
                          f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics",
                          soft_wrap=True)


def _first_error(error: Exception) -> str:
    """The last line of ``error``'s text that names an exception (a replica's own error,
    inside Ray Serve's report), else its first line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error" in ln.split(":", 1)[0]]
    return (named[-1] if named else lines[0] if lines else type(error).__name__)[:500]


def _http_port(asked: int) -> int:
    """The port Ray Serve listens on: the one asked for, unless the cluster already ran Serve
    with its own (Ray Serve keeps a running instance's HTTP settings)."""
    try:
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except Exception:  # Ray Serve's internals moved: say what was asked for
        return asked


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
            plural = "s" if f["requests"] != 1 else ""
            console.print(f"  {name}: {f['requests']} request{plural} ({f['errors']} failed), p50 "
                          f"{f['latency_p50_ms'] or 0:.0f} ms, p95 {f['latency_p95_ms'] or 0:.0f} "
                          f"ms, {f['prompt_tokens']} prompt and {f['completion_tokens']} "
                          "completion tokens", soft_wrap=True)
