"""One driver per run directory: an exclusive lock on ``RUN_DIR/.lock`` for the run's life.

Two drivers on one run directory overwrite each other's exported models, train into the same
checkpoint directory and delete each other's checkpoints, so the second one is refused, told
who holds the directory. The lock is a ``flock``: the kernel releases it when its holder exits,
however it exits, so a driver killed with SIGKILL leaves no lock behind, only the file naming
it, which the next driver reports as a holder that died and takes over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunearena.errors import UserError

LOCK_NAME = ".lock"


class RunDirLocked(UserError, RuntimeError):
    """Another driver is running in this run directory."""


class RunDirUnwritable(UserError, PermissionError):
    """The run directory (or its lock) cannot be created."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run directory's lock, as written inside the lock file."""

    pid: int
    host: str
    command: str
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since} ({self.command})"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a lock file names; None for an empty or unreadable one."""
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None


class RunLock:
    """The exclusive lock of one run directory (created if missing), as a context manager.

    ``stale``: the holder named in the file when the lock was free, i.e. a driver that died
    holding it (a driver that exits normally empties the file).
    """

    def __init__(self, run_dir: Path, command: str):
        self.run_dir, self.command = run_dir, command
        self.path = run_dir / LOCK_NAME
        self.stale: Holder | None = None
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise ``RunDirLocked`` naming its holder."""
        try:
            self._created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = self._lock_current_file()
        except OSError as e:
            raise RunDirUnwritable(
                f"cannot create or lock {self.path}: {e.strerror or e}; runs_dir must be a "
                f"directory this user can write, on a filesystem with file locks (flock)"
            ) from None
        stale = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        self.stale = Holder.parse(stale)
        me = Holder(os.getpid(), socket.gethostname(), self.command,
                    time.strftime("%Y-%m-%d %H:%M:%S"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
        self._fd = fd

    def _lock_current_file(self) -> int:
        """Open and lock the lock file; a file unlinked (by a holder cleaning up the run dir
        it created) between our open and our lock is opened again."""
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                raise RunDirLocked(self._busy_message(holder)) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        raise OSError(f"{self.path} keeps being replaced")

    def _busy_message(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "another tunearena process (starting up)"
        return (f"{self.run_dir} is in use by {who}: one driver per run directory. Wait for "
                f"it to finish, or stop it (Ctrl-C, or kill {holder.pid if holder else 'PID'}) "
                f"and rerun with --resume; to keep both, choose another name (--set name=...)")

    def release(self) -> None:
        """Empty the file (a later driver then sees no dead holder) and unlock; a run
        directory this lock created and nothing else wrote to is removed."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if self._created_dir and [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
                self.path.unlink()
                self.run_dir.rmdir()
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock
