"""Where runs keep their files: the storage path as pyarrow and Ray want it, and the removal of
a Ray Train run's own small record there."""

from __future__ import annotations

import os
import shutil

import pyarrow.fs


def resolve_storage(storage_path: str) -> str:
    """A URI stays as it is; a local path becomes absolute (pyarrow wants one)."""
    if "://" in storage_path:
        return storage_path
    return os.path.abspath(os.path.expanduser(storage_path))


def remove_run_dir(uri: str, name: str) -> None:
    """Delete a Ray Train run's dir under ``uri`` (a worker group's record of itself) when it
    is a local directory."""
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        shutil.rmtree(os.path.join(path, name), ignore_errors=True)
