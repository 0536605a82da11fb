"""``model.base`` checked before anything loads it: a local dir (its config, its custom code,
its weights read), or a hub id found in the local Hugging Face cache when offline.

tunearena runs with ``HF_HUB_OFFLINE=1`` unless told otherwise, so a hub id is usable only
when it is in the cache; a value that reads like a path (``./x``, ``../x``, ``a/b/c``, a folder
that exists with a name that does not, a near-miss of a sibling dir) is a missing dir, never
taken for a hub id, so a typo is named as a typo rather than as a download that fails later.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from tunearena.training.weights import ModelDirError, check_weights

__all__ = ["ModelDirError", "check_model_dir"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
CUSTOM_CODE_FILES = ("config.json", "tokenizer_config.json")
"""The files whose ``auto_map`` makes transformers import a model dir's own ``.py`` files."""


def close_dirs(name: str, folder: Path) -> list[str]:
    """Dirs in ``folder`` whose names are near-misses of ``name`` (a typo's likely intent)."""
    try:
        names = [p.name for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []
    return difflib.get_close_matches(name, names, n=1, cutoff=0.8)


def reads_as_path(value: str, base_dir: Path) -> bool:
    """Whether ``value`` (relative to ``base_dir``) is meant as a local path even though it
    does not exist: it starts with ``./``, ``../``, ``~`` or a separator, has more parts than a
    hub id's ``org/name``, or names a missing entry of a folder that exists."""
    if value.startswith(("./", "../", "~", "/", ".\\", "..\\")) or value in (".", ".."):
        return True
    parts = Path(value).parts
    if len(parts) > 2:
        return True
    return len(parts) == 2 and (base_dir / parts[0]).is_dir()


def means_local_dir(value: str, base_dir: Path) -> bool:
    """Whether a ``model.base`` that is not an existing path is a local dir gone wrong rather
    than a hub id: it reads as a path, or it is a near-miss of a dir beside it and no cached
    hub id has that name. A packaged GGUF's short name is neither."""
    from tunearena.training.gguf import PACKAGED

    if value in PACKAGED:
        return False
    if reads_as_path(value, base_dir):
        return True
    return bool(close_dirs(value, base_dir)) and cached_snapshot(value) is None


def cached_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot dir of hub model ``repo_id``; None when it is
    not cached (or is no valid hub id)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def _hub_dir(model: str) -> Path | None:
    """The dir a hub id is read from: its cached snapshot; None when it is not cached but
    may be downloaded. Offline and not cached is a ``ModelDirError`` saying how to get it."""
    from huggingface_hub import constants

    snapshot = cached_snapshot(model)
    if snapshot is not None or not constants.is_offline_mode():
        return snapshot
    raise ModelDirError(
        f"model.base {model} is not a local dir and not in the offline Hugging Face cache "
        f"({constants.HF_HUB_CACHE}); tunearena runs offline (HF_HUB_OFFLINE=1) unless told "
        f"otherwise. Download it where there is internet (`hf download {model}`) and copy "
        f"that cache here (or set HF_HOME to it), point model.base at a local model dir, or "
        f"run with HF_HUB_OFFLINE=0 to let it download")


def _missing_dir(model: str) -> ModelDirError:
    path = Path(model).expanduser().absolute()
    near = close_dirs(path.name, path.parent)
    hint = f"; did you mean {path.parent / near[0]}?" if near else ""
    return ModelDirError(
        f"model.base {path} does not exist: no such model dir (a relative model.base is taken "
        f"from the config file's directory, or from the working directory when given with "
        f"--set){hint}")


def check_custom_code(model_dir: Path, trusted: bool) -> None:
    """Refuse a model dir that ships its own code (an ``auto_map``) unless the config allows
    it: loading it would run that code."""
    if trusted:
        return
    for name in CUSTOM_CODE_FILES:
        raw = _read_json(model_dir / name) if (model_dir / name).is_file() else {}
        if raw.get("auto_map"):
            raise ModelDirError(
                f"model dir {model_dir} ships its own Python code ({name} has an auto_map), "
                f"which loading the model would run. Read that code; if you trust it, set "
                f"model.trust_remote_code: true (or --set model.trust_remote_code=true); "
                f"otherwise use a model that transformers supports without custom code")


def _read_json(path: Path) -> dict:
    """A model dir's JSON file as a dict; anything else is a ``ModelDirError`` naming it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path} cannot be read as JSON ({e}); it is damaged: download "
                            f"or export the model again") from None
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path} holds {type(raw).__name__}, not a JSON object; it is "
                            f"damaged: download or export the model again")
    return raw


def read_config(model_dir: Path) -> dict:
    """``config.json`` of a model dir, as a plain dict (read without transformers, so no
    code of the model's runs)."""
    return _read_json(model_dir / "config.json")


def check_model_dir(model: str, trust_remote_code: bool = False, weights: bool = True) -> None:
    """Fail before any worker starts when ``model.base`` cannot be loaded as it is.

    A local dir must hold a readable ``config.json`` and complete weights whose shapes fit
    it (``weights.check_weights``; not with ``weights=False``, for planning from the config
    alone), and ship no code unless ``trust_remote_code``. A hub id is
    checked the same way in its cached snapshot; offline and not cached, it is refused with
    how to get it. A hub id that is not cached while online is left to ``from_pretrained``.
    """

    path = Path(model).expanduser()
    if not path.exists():
        if means_local_dir(model, Path.cwd()):
            raise _missing_dir(model)
        snapshot = _hub_dir(model)
        if snapshot is None:
            return
        path = snapshot
    if path.is_file():
        raise ModelDirError(
            f"model.base {model} is a file; name the model dir that holds its config.json and "
            f"weights (or a .gguf file)")
    config = path / "config.json"
    if not config.exists():
        raise ModelDirError(f"model dir {path} has no config.json")
    if config.is_dir():
        raise ModelDirError(f"model dir {path}: config.json is a directory, not a file")
    if not weights:
        check_custom_code(path, trust_remote_code)
        return
    found = [f for f in WEIGHT_FILES if (path / f).exists()]
    if not found:
        raise ModelDirError(
            f"model dir {path} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    dirs = [f for f in found if (path / f).is_dir()]
    if dirs:
        raise ModelDirError(f"model dir {path}: {dirs[0]} is a directory, not a weights file; "
                            f"download or export the model again")
    check_custom_code(path, trust_remote_code)
    check_weights(path, read_config(path), found[0])

