"""One driver per run directory: the lock a second driver meets, and the one a dead driver
left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tunearena.launch.lock import RunDirLocked, RunLock


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_command(tmp_path):
    run_dir = tmp_path / "run"
    # A lock held in this process still refuses a second open of the file: flock belongs to
    # the open file, as it does between two drivers.
    with RunLock(run_dir, "tunearena run a.yaml"), pytest.raises(RunDirLocked) as refused:
        RunLock(run_dir, "tunearena run b.yaml").acquire()
    said = str(refused.value)
    assert f"pid {os.getpid()}" in said and "(tunearena run a.yaml)" in said
    assert "--resume" in said


def test_a_lock_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tunearena.launch.lock import RunLock
        lock = RunLock(Path({str(run_dir)!r}), "tunearena run other.yaml")
        lock.acquire()
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLocked, match=f"pid {holder.pid} on "):
            RunLock(run_dir, "tunearena run b.yaml").acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup, only the kernel releases the lock
        holder.wait()
    with RunLock(run_dir, "tunearena run b.yaml") as lock:
        assert lock.stale is not None and lock.stale.pid == holder.pid
        assert lock.stale.command == "tunearena run other.yaml"
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()


def test_a_clean_release_leaves_no_stale_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock(run_dir, "first"):
        pass
    assert (run_dir / ".lock").read_text() == ""
    with RunLock(run_dir, "second") as lock:
        assert lock.stale is None


def test_a_run_dir_the_lock_created_and_nothing_wrote_to_is_removed(tmp_path):
    empty, used = tmp_path / "empty", tmp_path / "used"
    with RunLock(empty, "x"):
        assert empty.is_dir()
    assert not empty.exists(), "a run refused at its input check leaves no directory behind"
    with RunLock(used, "x"):
        (used / "config.yaml").write_text("name: used\n")
    assert (used / "config.yaml").is_file() and (used / ".lock").is_file()
