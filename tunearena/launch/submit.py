"""``tunearena submit``, ``status``, ``logs`` and ``stop``: a run as a Ray job on a cluster.

``submit`` checks what it can from here before anything is shipped (the config, the input
files inside the working dir, that the dashboard answers, that the cluster has the nodes the
workers need), then submits ``tunearena run CONFIG`` as a Ray job: the working dir goes
through the job's runtime env, the driver runs on the head node and joins the cluster. The
run directory lives on the cluster, so a job stopped or lost part-way is continued by
submitting again with ``--resume``, which reuses every finished step.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tunearena.cluster.jobs import (
    METADATA_KEY,
    JobError,
    alive_node_resources,
    connect,
    follow_logs,
    job_info,
    job_logs,
    our_jobs,
    stop_job,
)
from tunearena.configbase import ConfigError
from tunearena.launch.config import ExperimentConfig, input_paths, load_config

# Shipped with every job: the driver joins the cluster it runs on, whatever the config says
# (``local`` would start a second, private Ray inside the job), and prints as it goes, in
# lines as wide as a log reader's window rather than a terminal's default 80 columns.
JOB_OVERRIDES = ["cluster.address=auto", "cluster.num_cpus=null"]
JOB_ENV = {"PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
# Never shipped: version control, caches, environments and local run directories.
EXCLUDES = [".git", "__pycache__", "*.egg-info", ".venv", "venv", ".mypy_cache", ".ruff_cache",
            ".pytest_cache", "/runs"]


def check_submission(cfg: ExperimentConfig, working_dir: Path) -> list[Path]:
    """Refuse what cannot work as a job; returns the inputs that must already be on the
    cluster (those outside the working dir, which is all that is shipped)."""
    if not cfg.runs_dir.is_absolute():
        raise ConfigError(
            f"runs_dir {str(cfg.runs_dir)!r} is relative: a job runs in a temporary copy of the "
            f"working dir that the cluster deletes afterwards, so the run directory would be "
            f"lost; set runs_dir to a directory on the head node or on storage every node "
            f"mounts, e.g. --set runs_dir=/shared/tunearena/runs")
    return [p for p in input_paths(cfg) if not p.is_relative_to(working_dir)]


def check_cluster_fits(cfg: ExperimentConfig, address: str) -> str:
    """Raise ``JobError`` unless the cluster's alive nodes can hold the training workers."""
    from typing import cast

    from tunearena.cluster.preflight import resources_fit
    from tunearena.cluster.ray_cluster import scaling_config

    nodes = alive_node_resources(address)
    c = cfg.cluster
    use_gpu = any(n.get("GPU", 0) > 0 for n in nodes) if c.use_gpu == "auto" else bool(c.use_gpu)
    per_worker = cast(dict[str, float], scaling_config(c, use_gpu).resources_per_worker)
    check = resources_fit(nodes, per_worker, c.num_workers, c.placement)
    if not check.ok:
        raise JobError(f"the cluster at {address} cannot hold the training workers: "
                       f"{check.detail}; fix: {check.fix}. (An autoscaling cluster must have "
                       f"its nodes up first: set its min_workers.)")
    return check.detail


def submit(config_path: Path, overrides: list[str], address: str, working_dir: Path,
           resume: bool, console: Console) -> str:
    """Check, then submit ``tunearena run`` as a Ray job; returns the job's id."""
    from tunearena.launch.inputs import check_inputs

    working_dir, config_path = working_dir.resolve(), config_path.resolve()
    if not working_dir.is_dir():
        raise ConfigError(f"--working-dir {working_dir}: not a directory")
    if not config_path.is_relative_to(working_dir):
        raise ConfigError(f"{config_path} is outside the working dir {working_dir}, which is "
                          f"all the job receives; run from the project's directory or pass "
                          f"--working-dir")
    cfg = load_config(config_path, [*overrides, *JOB_OVERRIDES])
    remote_inputs = check_submission(cfg, working_dir)
    if remote_inputs:
        listed = ", ".join(str(p) for p in remote_inputs)
        console.print(f"not shipped (outside {working_dir}), read on the cluster and checked "
                      f"there before any worker starts: {escape(listed)}", soft_wrap=True)
    else:
        console.print("checking inputs")
        check_inputs(cfg, runs_dir_here=False)
    client = connect(address)
    if cfg.resolved_stages():
        console.print(f"cluster resources: {check_cluster_fits(cfg, address)}", soft_wrap=True)
    relative_config = str(config_path.relative_to(working_dir))
    argv = ["tunearena", "run", relative_config]
    for assignment in [*overrides, *JOB_OVERRIDES]:
        argv += ["--set", assignment]
    if resume:
        argv.append("--resume")
    run_dir = cfg.runs_dir / cfg.name
    try:
        job_id = client.submit_job(
            entrypoint=shlex.join(argv),
            submission_id=f"tunearena-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES,
                         "env_vars": JOB_ENV},
            metadata={METADATA_KEY: "run", "name": cfg.name, "run_dir": str(run_dir),
                      "config": relative_config, "overrides": shlex.join(overrides),
                      "resume": str(resume).lower()},
        )
    except (RuntimeError, ValueError) as err:  # e.g. a working dir over Ray's upload limit
        raise JobError(f"the cluster at {address} did not take the job: {err}") from None
    console.print(f"submitted job [bold]{job_id}[/bold] to {address}", soft_wrap=True)
    console.print(f"run directory on the cluster: {run_dir}", soft_wrap=True)
    console.print(f"  tunearena status {job_id} --address {address}\n"
                  f"  tunearena logs {job_id} --address {address} --follow\n"
                  f"  tunearena stop {job_id} --address {address}", soft_wrap=True)
    return job_id


def _resubmit_command(meta: dict[str, str], address: str) -> str:
    sets = " ".join(f"--set {shlex.quote(o)}" for o in shlex.split(meta.get("overrides", "")))
    return (f"tunearena submit {meta['config']} {sets} --address {address} --resume"
            .replace("  ", " "))


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m" if hours else f"{m}m {s:02d}s"


def show_status(address: str, job_id: str | None, console: Console, tail_lines: int = 10) -> None:
    """One job's status, run directory and latest output; without an id, every tunearena job."""
    client = connect(address)
    if job_id is None:
        jobs = our_jobs(client)
        if not jobs:
            console.print(f"no tunearena jobs on {address}")
        for job in jobs:
            meta = job.metadata or {}
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime((job.start_time or 0) / 1000))
            console.print(f"{job.submission_id}  {job.status.value:<9}  {started}  "
                          f"{meta.get('run_dir', '')}", soft_wrap=True, highlight=False)
        return
    job = job_info(client, job_id)
    meta = job.metadata or {}
    start = (job.start_time or 0) / 1000
    elapsed = ((job.end_time / 1000) if job.end_time else time.time()) - start
    console.print(f"job {job_id}: [bold]{job.status.value}[/bold] "
                  f"({_duration(elapsed) if start else 'not started'})", soft_wrap=True)
    if meta.get("run_dir"):
        console.print(f"run directory on the cluster: {meta['run_dir']}", soft_wrap=True)
    if job.message and job.status != "RUNNING":
        console.print(f"message: {escape(job.message.strip())}", soft_wrap=True)
    if job.status == "SUCCEEDED" and meta.get("run_dir"):
        console.print(f"report: {meta['run_dir']}/report.html", soft_wrap=True)
    elif job.status in ("FAILED", "STOPPED") and meta.get("config"):
        console.print(f"continue it, reusing its finished steps: "
                      f"{_resubmit_command(meta, address)}", soft_wrap=True)
    if job.status in ("PENDING", "RUNNING"):
        lines = [line for line in job_logs(client, job_id).splitlines() if line.strip()]
        if lines:
            console.print("latest output:")
            for line in lines[-tail_lines:]:
                console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def show_logs(address: str, job_id: str, follow: bool, console: Console) -> int:
    """Print the job's output (as it comes, with ``follow``); 0 unless the job ended badly."""
    client = connect(address)
    if not follow:
        console.out(job_logs(client, job_id), end="", highlight=False)
        return 0
    for chunk in follow_logs(client, job_id):
        console.out(chunk, end="", highlight=False)
    status = job_info(client, job_id).status
    console.print(f"job {job_id}: [bold]{status.value}[/bold]")
    return 0 if status == "SUCCEEDED" else 1


def stop(address: str, job_id: str, console: Console) -> None:
    """Stop the job; finished steps stay in its run directory for ``--resume``."""
    client = connect(address)
    meta = job_info(client, job_id).metadata or {}
    status = stop_job(client, job_id)
    console.print(f"job {job_id}: [bold]{status.value}[/bold]")
    if status == "STOPPED" and meta.get("config"):
        console.print(f"its finished steps are kept in {meta.get('run_dir')}; continue with: "
                      f"{_resubmit_command(meta, address)}", soft_wrap=True)
