"""Start or join a Ray cluster, and the scaling settings Ray Train workers get."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import ray
from ray.train import ScalingConfig

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.quiet import WORKER_SETUP_HOOK, drop_worker_noise, quiet_driver
from tunearena.errors import UserError
from tunearena.remote_code import ENV as TRUST_REMOTE_CODE_ENV

# Passed through to every worker when the driver has them: offline switches must hold on
# the workers too, or a worker may try the hub that the driver was told to avoid; and a
# worker loads a model with the run's trust_remote_code answer, not transformers' prompt.
PASSTHROUGH_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME",
                   "HF_HUB_CACHE", TRUST_REMOTE_CODE_ENV)


class ClusterConnectionError(UserError, RuntimeError):
    """Nothing answers at the cluster address given, or the cluster refused this driver."""

    why = ""
    """What the connection attempt met (``Connection refused``), when one was made."""


def probe_address(host: str, port: int, what: str, timeout_s: float = 5.0) -> None:
    """Open (and close) a TCP connection, raising ``ClusterConnectionError`` within ``timeout_s``.

    Ray's clients retry, or wait out the operating system's connect timeout (minutes for an
    address that drops packets); one bounded connect tells "nobody there" apart in seconds.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except TimeoutError:
        why = f"no answer within {timeout_s:g} s"
    except OSError as err:
        why = err.strerror or str(err)
    error = ClusterConnectionError(
        f"cannot reach {what} at {host}:{port}: {why}. Is the head node up, and is port {port} "
        f"reachable from this machine (a firewall, a VPN, or an SSH tunnel such as "
        f"`ray dashboard CLUSTER.yaml`)?")
    error.why = why
    raise error


def probe_cluster(address: str) -> None:
    """Check that a ``HOST:PORT`` or ``ray://HOST:PORT`` cluster address answers."""
    bare = address.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    if sep and port.isdigit() and host:
        what = "the Ray client server" if address.startswith("ray://") else "the Ray head (GCS)"
        probe_address(host.strip("[]"), int(port), what)


def resolve_auto() -> tuple[str, str]:
    """The cluster ``address: auto`` means: ``RAY_ADDRESS``, else the one the last
    ``ray start`` on this machine recorded in Ray's temp dir (``$RAY_TMPDIR``, default
    ``/tmp/ray``); returns (address, where it was found).

    Ray's own ``auto`` goes on to join any Ray instance it finds among this machine's
    processes, such as another program's embedded one; a run joins only a cluster someone
    started on purpose, so that fallback is left out.
    """
    from ray._common.utils import get_ray_address_file
    from ray._private.utils import read_ray_address

    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "from RAY_ADDRESS"
    recorded = read_ray_address(None)
    if recorded:
        return recorded, f"recorded by `ray start` in {get_ray_address_file(None)}"
    raise ClusterConnectionError(
        f"cluster.address is auto, but no Ray cluster is running here: RAY_ADDRESS is not set "
        f"and no `ray start` recorded one in {get_ray_address_file(None)}. Start one with "
        f"`ray start --head` (or join one: RAY_ADDRESS=HEAD:6379), or use cluster.address: "
        f"local to run on an embedded Ray of this run's own")


def join_failure(address: str, err: Exception) -> ClusterConnectionError:
    """``ray.init``'s failure to join ``address`` in our words. Ray reports a refused token,
    after retrying, as a ``ConnectionError`` raised from an error holding the
    ``AuthenticationError``."""
    text, cause = "", err  # type: str, BaseException | None
    while cause is not None:  # the refusal is in the error this one was raised from
        text += f"{type(cause).__name__}: {cause}\n"
        cause = cause.__cause__ or cause.__context__
    if "AuthenticationError" in text or "InvalidAuthToken" in text:
        return ClusterConnectionError(
            f"the cluster at {address} refused this driver: it was started with token "
            f"authentication, and this driver sent no token or a wrong one. Set "
            f"RAY_AUTH_MODE=token here and give the cluster's token (RAY_AUTH_TOKEN, "
            f"RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token as on the head)")
    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    return ClusterConnectionError(
        f"cannot join the Ray cluster at {address}: {first}. Is it the head's GCS address "
        f"(HOST:6379), and does the head run the same Ray version ({ray.__version__})?")


def describe_cluster(address: str, found: str) -> str:
    """One line naming the cluster this driver joined: address, live nodes, CPUs, GPUs."""
    try:
        gcs = ray.get_runtime_context().gcs_address or address
    except Exception:  # a Ray client connection has no GCS address to show
        gcs = address
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    res = ray.cluster_resources()
    where = "" if found == "cluster.address" else f" ({found})"
    counts = [(nodes, "node"), (res.get("CPU", 0), "CPU"), (res.get("GPU", 0), "GPU")]
    return f"joined the Ray cluster at {gcs}{where}: " + ", ".join(
        f"{n:g} {unit}{'s' if n != 1 else ''}" for n, unit in counts)


def worker_env(cfg: ClusterConfig) -> dict[str, str]:
    """Environment for worker processes.

    OpenMP and torch default to one thread per core of the whole machine; with several
    workers per node they oversubscribe the CPU, so each gets its reserved CPUs only.
    """
    env = {
        "OMP_NUM_THREADS": str(cfg.cpus_per_worker),
        "MKL_NUM_THREADS": str(cfg.cpus_per_worker),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env |= {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    # Ray's helpers inside workers (Ray Train's placement-group cleaner) find their cluster
    # by scanning the machine's processes, which fails where several clusters share one
    # machine: name the cluster. (Inside a Ray job, RAY_ADDRESS already holds it.)
    if cfg.address != "local" and not cfg.address.startswith("ray://"):
        gcs = cfg.address
        if gcs == "auto":  # the cluster joined, once joined
            gcs = os.environ.get("RAY_ADDRESS") or (
                ray.get_runtime_context().gcs_address if ray.is_initialized() else "")
        if gcs:
            env["RAY_ADDRESS"] = gcs
    return env


@contextmanager
def ray_session(cfg: ClusterConfig, say: Callable[[str], None] = print,
                dashboard: bool = False) -> Iterator[None]:
    """Connect to (or start) Ray for the duration of the block.

    An already-initialised Ray (a test's cluster, a notebook) is used as it is and left running.
    Joining a cluster (any address but ``local``), ``say`` gets a line naming it: its address,
    nodes, CPUs and GPUs.
    """
    if ray.is_initialized():
        yield
        return
    runtime_env = {
        "env_vars": worker_env(cfg),
        "worker_process_setup_hook": WORKER_SETUP_HOOK,
    }
    if cfg.address == "local":
        # "local" always starts a new instance: without it, ray.init joins whatever cluster
        # `ray start` left running on this machine.
        quiet_driver()
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            # The dashboard serves the State API, by which Ray Train removes the workers'
            # placement group of a run whose controller died: a sweep's stopped trial.
            include_dashboard=dashboard,
            runtime_env=runtime_env,
            log_to_driver=True,
        )
    else:
        address, found = (resolve_auto() if cfg.address == "auto"
                          else (cfg.address, "cluster.address"))
        if cfg.address == "auto":
            runtime_env["env_vars"] = worker_env(cfg.model_copy(update={"address": address}))
        try:
            probe_cluster(address)
        except ClusterConnectionError as err:
            if not found.startswith("recorded"):
                raise
            raise ClusterConnectionError(
                f"cluster.address is auto, but the cluster {found} ({address}) does not answer "
                f"({err.why}): it was stopped, or its head is gone. Start one with `ray start "
                f"--head`, or use cluster.address: local to run on an embedded Ray of this "
                f"run's own") from None
        try:
            ray.init(address=address, runtime_env=runtime_env)
        except (ray.exceptions.AuthenticationError, ConnectionError, RuntimeError) as err:
            raise join_failure(address, err) from None
        say(describe_cluster(address, found))
    drop_worker_noise()
    try:
        yield
    finally:
        ray.shutdown()


def cluster_has_gpus() -> bool:
    """Whether the connected cluster offers at least one GPU."""
    return ray.cluster_resources().get("GPU", 0) > 0


def resolve_use_gpu(cfg: ClusterConfig) -> bool:
    """``use_gpu`` with ``auto`` decided by the connected cluster's resources."""
    return cluster_has_gpus() if cfg.use_gpu == "auto" else bool(cfg.use_gpu)


def scaling_config(cfg: ClusterConfig, use_gpu: bool) -> ScalingConfig:
    """Ray Train scaling for ``cfg``: workers, their resources and their placement."""
    return ScalingConfig(
        num_workers=cfg.num_workers,
        use_gpu=use_gpu,
        resources_per_worker={"CPU": cfg.cpus_per_worker}
        | ({"GPU": cfg.gpus_per_worker} if use_gpu else {})
        | cfg.resources_per_worker,
        placement_strategy=cfg.placement,
    )


CPUS_PER_DATA_ACTOR = 2  # CPUs a Ray Data model actor gets when the cluster has no GPU


def ray_data_actors(resources: Mapping[str, float], actors: int | None,
                    key: str) -> tuple[int, bool]:
    """``(actors, use_gpu)`` for a Ray Data job whose actors each load a model, on a cluster
    offering ``resources`` (``ray.cluster_resources()``).

    A cluster with GPUs runs one actor a GPU; a CPU-only cluster one per
    ``CPUS_PER_DATA_ACTOR`` CPUs (at least one). ``actors``, the config key ``key``, overrides
    the count; it may not exceed the GPUs (or CPUs) there are, since the extra actors could
    never start.
    """
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    use_gpu = gpus > 0
    available, unit = (gpus, "GPU") if use_gpu else (cpus, "CPU")
    if actors is None:
        return (gpus if use_gpu else max(1, cpus // CPUS_PER_DATA_ACTOR)), use_gpu
    if actors > available:
        raise ValueError(
            f"{key} is {actors}, but the Ray cluster has {available} {unit}s and each actor "
            f"needs one; set it to at most {available} or leave it unset"
        )
    return actors, use_gpu
