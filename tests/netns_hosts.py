"""Two "hosts" on one machine: Linux network namespaces joined by a veth pair.

Each namespace has its own loopback and one address on a private /24, and no default route,
so its processes reach only each other. Processes are started inside a namespace with
``ip netns exec``; ``TwoHosts.close`` ends every one of them by pid (the process groups it
started and whatever else ``ip netns pids`` finds in the namespaces) and deletes the
namespaces, so nothing machine-wide is ever touched. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TERM_GRACE_S = 3.0  # SIGTERM, then this long to exit, then SIGKILL
KILL_WAIT_S = 5.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def netns_unavailable() -> str | None:
    """Why two hosts cannot be made here, or None when they can.

    Probes by adding (and deleting) a throwaway namespace: root alone is not enough in a
    container without CAP_SYS_ADMIN or without iproute2.
    """
    if os.geteuid() != 0:
        return "needs root and `ip netns` to make two hosts: not root"
    probe = f"ta-probe-{os.getpid()}"
    try:
        added = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "needs root and `ip netns` to make two hosts: no `ip` command (iproute2)"
    if added.returncode != 0:
        return f"ip netns add failed: {added.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One namespace, its address and the interface that holds it."""

    netns: str
    ip: str
    iface: str

    def argv(self, *cmd: str) -> list[str]:
        """``cmd`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    def pids(self) -> list[int]:
        """Every live process in the namespace."""
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]


@dataclass
class TwoHosts:
    """Two namespaces on one veth pair; see ``create`` and ``close``."""

    h1: Host
    h2: Host
    started: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def create(cls) -> TwoHosts:
        """Make ``ta-h1-<pid>`` and ``ta-h2-<pid>`` at ``10.213.<x>.1`` and ``.2``.

        The namespaces have no route out, so their /24 cannot clash with the machine's own
        networks; ``x`` comes from the pid so concurrent runs show distinct addresses in
        their logs. Names carry the pid so concurrent runs never share a namespace.
        """
        pid = os.getpid()
        subnet = f"10.213.{pid % 250 + 1}"
        # Interface names hold at most 15 characters.
        hosts = cls(Host(f"ta-h1-{pid}", f"{subnet}.1", f"ta1-{pid}"),
                    Host(f"ta-h2-{pid}", f"{subnet}.2", f"ta2-{pid}"))
        try:
            for h in (hosts.h1, hosts.h2):
                _ip("netns", "add", h.netns)
            # Each end is created inside its namespace, so the machine never sees either.
            _ip("link", "add", hosts.h1.iface, "netns", hosts.h1.netns, "type", "veth",
                "peer", "name", hosts.h2.iface, "netns", hosts.h2.netns)
            for h in (hosts.h1, hosts.h2):
                _ip("-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", h.iface)
                _ip("-n", h.netns, "link", "set", "lo", "up")
                _ip("-n", h.netns, "link", "set", h.iface, "up")
        except BaseException:
            hosts.close()
            raise
        return hosts

    def start(self, host: Host, cmd: list[str], log: Path, env: dict[str, str]
              ) -> subprocess.Popen:
        """Start ``cmd`` in ``host``'s namespace as its own process group, output to ``log``."""
        with log.open("wb") as out:
            proc = subprocess.Popen(host.argv(*cmd), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.started.append(proc)
        return proc

    def _live(self) -> set[int]:
        """Our process groups' leaders still running (``poll`` reaps the ones that ended,
        leaving no zombie), and every process in the namespaces."""
        return ({p.pid for p in self.started if p.poll() is None}
                | set(self.h1.pids()) | set(self.h2.pids()))

    def _signal(self, sig: signal.Signals) -> None:
        for p in self.started:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)  # start_new_session: the group id is its pid
        for pid in set(self.h1.pids()) | set(self.h2.pids()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._live():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def close(self) -> list[str]:
        """End every process, delete both namespaces (the veth pair goes with them).

        Returns what is left behind (empty when the machine is as before).
        """
        if not self._wait_gone(0):
            self._signal(signal.SIGTERM)
            if not self._wait_gone(TERM_GRACE_S):
                self._signal(signal.SIGKILL)
                self._wait_gone(KILL_WAIT_S)
        left = [f"pid {pid} still running" for pid in sorted(self._live())]
        for h in (self.h1, self.h2):
            if h.netns in _ip("netns", "list", check=False).stdout.split():
                deleted = _ip("netns", "del", h.netns, check=False)
                if deleted.returncode != 0:
                    left.append(f"ip netns del {h.netns}: {deleted.stderr.strip()}")
        return left
