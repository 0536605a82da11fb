"""Ray jobs on a running cluster: reach its dashboard, read its nodes, submit, watch, stop.

A thin layer over Ray's Job Submission API (``ray.job_submission``) and state API that turns
their failure modes into one readable ``JobError``: an address nobody answers at fails in
seconds instead of waiting out TCP's timeouts (``probe_address``), and an unknown job id
says how to list the jobs there are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from tunearena.cluster.ray_cluster import probe_address
from tunearena.errors import UserError

# Ray's clients let these variables override an explicit address; an explicit --address wins.
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
DASHBOARD_PORT = 8265
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
# Marks a job as a tunearena run in the job's metadata, so `status` can list ours only.
METADATA_KEY = "tunearena"


# Ray's clients log each upload and connection at INFO; its warnings (a large file in the
# working dir) still show.
for _name in ("ray.dashboard.modules.job.sdk", "ray.dashboard.modules.dashboard_sdk",
              "ray._private.runtime_env.packaging"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class JobError(UserError, RuntimeError):
    """The cluster could not be reached, or refused or does not know the job."""


def dashboard_address(address: str | None) -> str:
    """The dashboard URL to use: ``address``, else an http(s) URL in Ray's address
    variables, normalised.

    ``HEAD`` or ``HEAD:8265`` becomes ``http://HEAD:8265``.
    """
    if not address:
        # RAY_ADDRESS often holds a GCS address (HEAD:6379), which is no dashboard.
        from_env = [os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")]
        address = next((a for a in from_env if a and a.startswith(("http://", "https://"))),
                       None)
    if not address:
        raise JobError("no cluster address: pass --address http://HEAD:8265 (the Ray "
                       "dashboard of the cluster's head node) or set RAY_API_SERVER_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobError(f"{address}: expected the dashboard's URL, http://HEAD:{DASHBOARD_PORT}")
    if parts.port is None:
        address = f"{address.rstrip('/')}:{DASHBOARD_PORT}"
    return address.rstrip("/")


@contextmanager
def _explicit_address() -> Iterator[None]:
    """Hide Ray's address variables while a client is built from an explicit address."""
    saved = {v: os.environ.pop(v) for v in ADDRESS_ENV if v in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str) -> JobSubmissionClient:
    """A job client for the dashboard at ``address`` (a URL from ``dashboard_address``)."""
    parts = urlsplit(address)
    assert parts.hostname is not None and parts.port is not None
    probe_address(parts.hostname, parts.port, "the Ray dashboard")
    try:
        with _explicit_address():
            return JobSubmissionClient(address)
    except AuthenticationError as err:  # Ray's message says where the token must be
        raise JobError(f"{address}: {err}") from None
    except (ConnectionError, RuntimeError) as err:
        raise JobError(f"{address} answered but is not a usable Ray job server: {err}") from None


def alive_node_resources(address: str, timeout_s: int = 10) -> list[dict[str, float]]:
    """The total resources of each alive node, read through the dashboard's state API."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    try:
        with _explicit_address():
            nodes = list_nodes(address=address, timeout=timeout_s,
                               filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    except RayStateApiException as err:
        raise JobError(f"cannot list the nodes of the cluster at {address}: {err}") from None
    return [dict(n.resources_total) for n in nodes]


def _call(what: str, job_id: str, fn, *args) -> Any:
    """Run a client call, turning "no such job" and transport errors into ``JobError``."""
    try:
        return fn(job_id, *args)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            raise JobError(f"the cluster has no job {job_id!r}; `tunearena status --address "
                           f"ADDRESS` lists the tunearena jobs it has") from None
        raise JobError(f"cannot {what} job {job_id!r}: {err}") from None


def job_info(client: JobSubmissionClient, job_id: str) -> JobDetails:
    """The job's details (status, message, times, metadata)."""
    return _call("read", job_id, client.get_job_info)


def job_logs(client: JobSubmissionClient, job_id: str) -> str:
    """Everything the job's driver has printed so far."""
    return _call("read the logs of", job_id, client.get_job_logs)


def follow_logs(client: JobSubmissionClient, job_id: str) -> Iterator[str]:
    """The job's output as it is printed, from the start, until the job ends."""
    job_info(client, job_id)  # an unknown id fails here, with the usual message
    stream = cast(AsyncGenerator[str, None], client.tail_job_logs(job_id))
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(stream.aclose())
        loop.close()


def stop_job(client: JobSubmissionClient, job_id: str, timeout_s: float = 60.0) -> JobStatus:
    """Ask the job to stop (Ray sends its driver SIGTERM, then SIGKILL) and wait until it has.

    Returns the final status; a job that had already ended keeps the status it ended with.
    """
    _call("stop", job_id, client.stop_job)
    deadline = time.monotonic() + timeout_s
    while True:
        status = job_info(client, job_id).status
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise JobError(f"job {job_id!r} is still {status} {timeout_s:g} s after it was "
                           f"asked to stop")
        time.sleep(0.5)


def our_jobs(client: JobSubmissionClient) -> list[JobDetails]:
    """The cluster's tunearena jobs, oldest first."""
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get(METADATA_KEY)]
    return sorted(jobs, key=lambda j: j.start_time or 0)
