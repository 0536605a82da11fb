"""Preflight: checks that run before training claims its workers, each a pass/fail with a fix.

Every check returns a ``Check``; the caller collects them, prints ``format_checks`` and raises
``PreflightError`` when any failed, so a run stops with one readable list of what to change
instead of a stack trace minutes into a stage. The logic that decides is kept in pure
functions (``resources_fit``); the Ray calls around them are thin.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import pyarrow.fs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.ray_cluster import scaling_config
from tunearena.cluster.storage import resolve_storage
from tunearena.errors import UserError

if TYPE_CHECKING:
    from tunearena.training.pool import WorkerPool

STORAGE_FIX = (
    "on a multi-node cluster cluster.storage_path must be a shared filesystem that every node "
    "mounts at the same path (NFS, Lustre, ...), or an object store URI (s3://bucket/path, "
    "gs://bucket/path)"
)


@dataclass(frozen=True)
class Check:
    """The outcome of one preflight check."""

    name: str
    ok: bool
    detail: str
    """What was measured, with the numbers."""
    fix: str = ""
    """What to change when not ok."""


class PreflightError(UserError, RuntimeError):
    """Raised when preflight checks failed; ``checks`` holds all of them, passed or not."""

    def __init__(self, checks: Sequence[Check]):
        self.checks = list(checks)
        failed = [c for c in self.checks if not c.ok]
        lines = [f"preflight: {len(failed)} of {len(self.checks)} checks failed"]
        for c in failed:
            lines.append(f"  {c.name}: {c.detail}")
            if c.fix:
                lines.append(f"    fix: {c.fix}")
        super().__init__("\n".join(lines))


def format_checks(checks: Iterable[Check]) -> str:
    """A plain aligned table for the console: name, PASS/FAIL, detail, fix."""
    rows = [("check", "result", "detail", "fix")]
    rows += [(c.name, "PASS" if c.ok else "FAIL", c.detail, "" if c.ok else c.fix)
             for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        ("  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True))
         + f"  {r[3]}").rstrip()
        for r in rows
    )


# ---------------------------------------------------------------------------- resources


def _fmt_resources(resources: Mapping[str, float]) -> str:
    """``{CPU: 2, GPU: 1}``: integers without a trailing ``.0``."""
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def _config_field(resource: str) -> str:
    """The cluster config field that sets a worker's need of ``resource``."""
    return {"CPU": "cluster.cpus_per_worker", "GPU": "cluster.gpus_per_worker"}.get(
        resource, f"cluster.resources_per_worker.{resource}"
    )


def _missing_fix(resource: str) -> str:
    """What to do when no node offers ``resource`` at all."""
    if resource == "GPU":
        return "set cluster.use_gpu false, or add GPU nodes"
    if resource == "CPU":
        return "add nodes with CPUs"
    return (f"remove {resource} from cluster.resources_per_worker, or start nodes that offer "
            f"it (ray start --resources='{{\"{resource}\": 1}}')")


def workers_per_node(node: Mapping[str, float], per_worker: Mapping[str, float]) -> int:
    """How many workers needing ``per_worker`` fit on a node offering ``node``."""
    # The epsilon keeps float division (0.3 / 0.1 == 2.999...) from losing a worker.
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items() if v > 0]
    return min(counts, default=sys.maxsize)


def resources_fit(
    nodes: Sequence[Mapping[str, float]],
    per_worker: Mapping[str, float],
    num_workers: int,
    placement: str,
) -> Check:
    """Whether ``num_workers`` bundles of ``per_worker`` can be placed on ``nodes``.

    ``nodes`` are the alive nodes' resources (Ray's ``Resources`` dicts). Workers are
    identical bundles, so counting how many fit on each node is exact: STRICT_SPREAD needs
    ``num_workers`` nodes that each fit one; STRICT_PACK one node that fits all; PACK and
    SPREAD (best effort) need the per-node counts to add up to ``num_workers``.
    """
    request = _fmt_resources(per_worker)
    where = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    if not nodes:
        return Check("resources", False, "the cluster has no alive nodes",
                     "start the cluster (ray start --head) or check cluster.address")
    fits = [workers_per_node(n, per_worker) for n in nodes]
    if not any(fits):
        missing = [k for k, v in per_worker.items()
                   if v > 0 and not any(n.get(k, 0) > 0 for n in nodes)]
        if missing:
            return Check("resources", False,
                         f"no node of {where} has {', '.join(missing)} (a worker needs {request})",
                         "; ".join(_missing_fix(k) for k in missing))
        best = {k: max(n.get(k, 0.0) for n in nodes) for k in per_worker}
        short = [f"lower {_config_field(k)} to {best[k]:g}" for k, v in per_worker.items()
                 if best[k] < v]
        return Check("resources", False,
                     f"no node of {where} fits one worker's {request} (the most any node "
                     f"offers: {_fmt_resources(best)})",
                     ", or ".join(short) or "add nodes that offer every resource a worker needs")
    total_fit = sum(min(f, num_workers) for f in fits)
    if placement == "STRICT_SPREAD":
        spread = sum(1 for f in fits if f >= 1)
        if spread < num_workers:
            other = "choose placement SPREAD" if total_fit >= num_workers else "add nodes"
            return Check("resources", False,
                         f"STRICT_SPREAD needs {num_workers} nodes that each fit {request}; "
                         f"{spread} do",
                         f"lower cluster.num_workers to {spread}, or {other}")
    elif placement == "STRICT_PACK":
        best_node = max(fits)
        if best_node < num_workers:
            other = "choose placement PACK" if total_fit >= num_workers else "add a larger node"
            return Check("resources", False,
                         f"STRICT_PACK needs one node that fits {num_workers} x {request}; the "
                         f"best of {where} fits {best_node}",
                         f"lower cluster.num_workers to {best_node}, or {other}")
    elif total_fit < num_workers:
        return Check("resources", False,
                     f"{num_workers} workers x {request} do not fit on {where}: they fit "
                     f"{total_fit} (per node: {', '.join(str(min(f, num_workers)) for f in fits)})",
                     f"lower cluster.num_workers to {total_fit}, or add nodes")
    return Check("resources", True, f"{num_workers} workers x {request} ({placement}) on {where}: fits")


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def check_resources(cfg: ClusterConfig, use_gpu: bool) -> Check:
    """Whether the connected cluster's alive nodes can hold the training workers at all.

    Compares against the nodes' total resources: work already running can still delay the
    start, but a request that can never be placed is caught here instead of waiting forever.
    """
    # The very request training makes (ScalingConfig types it loosely).
    per_worker = cast(dict[str, float], scaling_config(cfg, use_gpu).resources_per_worker)
    nodes = [n["Resources"] for n in _alive_nodes()]
    return resources_fit(nodes, per_worker, cfg.num_workers, cfg.placement)


# ---------------------------------------------------------------------------- storage


def _join_uri(uri: str, name: str) -> str:
    """``uri/name``, keeping a URI's ``?query`` (e.g. ``s3://b/p?region=x``) at the end."""
    base, sep, query = uri.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def _node_label(ip: str, node_id: str) -> str:
    # Simulated clusters put every node on one IP, so the id prefix tells them apart.
    return f"{ip} [{node_id[:8]}]"


def _short(err: BaseException | str, limit: int = 160) -> str:
    """The last meaningful line of an error (a worker traceback ends with the cause)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@ray.remote(num_cpus=0)
def _probe_storage(probe_uri: str, node_id: str) -> str | None:
    """On one node: read the driver's marker and write it back; an error text, or None."""
    fs, path = pyarrow.fs.FileSystem.from_uri(probe_uri)
    try:
        with fs.open_input_stream(f"{path}/marker") as f:
            token = f.read()
    except Exception as err:  # any filesystem error means this node cannot see the marker
        return f"cannot read the marker: {_short(err)}"
    try:
        with fs.open_output_stream(f"{path}/node-{node_id}") as f:
            f.write(token)
    except Exception as err:
        return f"read the marker but cannot write: {_short(err)}"
    return None


def check_storage(storage_path: str, timeout_s: float = 60.0) -> Check:
    """Whether every alive node sees what the driver writes under ``storage_path``.

    The driver writes a marker holding a random token; one task pinned to each node reads it
    and writes its own file back, which the driver then reads. Checkpoints written by a
    worker on one node and read by the driver (or a restarted worker) on another need this.
    """
    uri = resolve_storage(storage_path)
    token = uuid.uuid4().hex
    probe_uri = _join_uri(uri, f".tunearena-preflight-{token[:12]}")
    try:
        fs, probe = pyarrow.fs.FileSystem.from_uri(probe_uri)
    except Exception as err:
        return Check("storage", False, f"cannot open {storage_path}: {_short(err)}",
                     "use a local path or a URI pyarrow supports (s3://, gs://, file://, ...)")
    try:
        try:
            fs.create_dir(probe, recursive=True)
            with fs.open_output_stream(f"{probe}/marker") as f:
                f.write(token.encode())
        except Exception as err:
            return Check("storage", False,
                         f"the driver cannot write under {uri}: {_short(err)}",
                         "point cluster.storage_path at a directory the driver can create and "
                         "write; " + STORAGE_FIX)
        nodes = {n["NodeID"]: _node_label(n["NodeManagerAddress"], n["NodeID"])
                 for n in _alive_nodes()}
        refs = {
            node_id: _probe_storage.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
            ).remote(probe_uri, node_id)
            for node_id in nodes
        }
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        problems: dict[str, str] = {}
        for node_id, ref in refs.items():
            if ref not in ready:
                ray.cancel(ref, force=True)
                problems[node_id] = f"no answer in {timeout_s:g} s"
                continue
            try:
                error = ray.get(ref)
            except Exception as err:
                error = f"the probe task failed: {_short(err)}"
            if error is None:
                error = _read_back(fs, f"{probe}/node-{node_id}", token)
            if error:
                problems[node_id] = error
        if problems:
            listed = "; ".join(f"{nodes[n]}: {why}" for n, why in problems.items())
            return Check("storage", False,
                         f"{len(problems)} of {len(nodes)} nodes do not share {uri} with the "
                         f"driver: {listed}", STORAGE_FIX)
        return Check("storage", True,
                     f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} read the driver's "
                     f"marker under {uri} and wrote back: {', '.join(nodes.values())}")
    finally:
        # Nothing was created, or it is gone already: nothing left to clean.
        with contextlib.suppress(Exception):
            fs.delete_dir(probe)


def _read_back(fs: pyarrow.fs.FileSystem, path: str, token: str) -> str | None:
    """An error text unless ``path`` holds ``token`` as the driver sees it."""
    try:
        with fs.open_input_stream(path) as f:
            seen = f.read().decode()
    except Exception as err:
        return f"wrote a file the driver cannot see: {_short(err)}"
    return None if seen == token else "read a different marker (a different filesystem)"


# ---------------------------------------------------------------------------- collective


def _all_reduce_loop(config: dict) -> dict:
    """On each worker (a job of the worker group): one all-reduce and one all-gather; rank 0
    returns what it saw."""
    import ray.train.torch
    import torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    t0 = time.perf_counter()
    value = torch.tensor([rank + 1.0], device=device)
    # Sums to world_size*(world_size+1)/2 only if every rank contributed exactly once.
    dist.all_reduce(value)
    all_reduce_s = time.perf_counter() - t0
    expected = world_size * (world_size + 1) / 2
    if value.item() != expected:
        raise RuntimeError(f"all-reduce gave {value.item():g}, expected {expected:g}")
    # Every rank's node, so the check shows where training's ranks will actually land.
    where: list = [None] * world_size
    dist.all_gather_object(
        where, (ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())
    )
    # Rank 0's return value comes back to the driver, which is all a smoke test needs.
    return {"nodes": where, "backend": dist.get_backend(), "all_reduce_s": all_reduce_s}


def check_collective(cfg: ClusterConfig, use_gpu: bool, storage_path: str, timeout_s: int = 60,
                     pool: WorkerPool | None = None) -> Check:
    """A tiny all-reduce across the real workers: those of ``pool``, the worker group that
    then trains (started here when it is not running), or a group of its own that ends with
    the check.

    Catches what only a collective shows: nodes that cannot reach each other on the ports
    gloo/NCCL pick, a wrong network interface, a GPU that NCCL cannot use.
    """
    # Imported here, not at the top: the pool pulls in ray.train (seconds), and every node's
    # storage probe imports this module.
    from tunearena.training.pool import PoolTimeout, WorkerPool

    own = pool is None
    group = WorkerPool(cfg, storage_path, use_gpu) if pool is None else pool
    # Placing and starting the workers comes first (Ray Train's own limit for it), then the
    # collective itself; a hung rendezvous fails after that instead of Ray's 30 min.
    limit = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 30)) + timeout_s
    t0 = time.perf_counter()
    try:
        seen = group.run(_all_reduce_loop, {}, timeout_s=None if group.alive else limit)
    except Exception as err:
        if isinstance(err, PoolTimeout) and err.started == 0:
            fix = ("the workers could not be placed: see the resources check, free what other "
                   "jobs hold, or on an autoscaling cluster raise "
                   "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")
        else:
            fix = ("the workers' nodes must reach each other on any TCP port; where a node's "
                   "hostname does not resolve to the network the nodes share, set "
                   "GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME to that interface in each node's "
                   "`ray start` environment (workers inherit it from there), and see the "
                   "worker logs above")
        group.close(wait_s=0)
        return Check("collective", False,
                     f"all-reduce over {cfg.num_workers} workers failed after "
                     f"{time.perf_counter() - t0:.1f} s: {_short(err)}", fix)
    finally:
        if own:
            group.close()
    places = ", ".join(_node_label(ip, node_id) for ip, node_id in seen["nodes"])
    return Check("collective", True,
                 f"all-reduce over {cfg.num_workers} workers ({seen['backend']}) on {places}: "
                 f"ok in {seen['all_reduce_s'] * 1000:.1f} ms (workers up and done in "
                 f"{time.perf_counter() - t0:.1f} s)")
