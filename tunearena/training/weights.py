"""A model dir's weights read before any worker loads them: complete files, readable
headers, and the embedding's shape against ``config.json``.

A truncated ``model.safetensors`` (an interrupted download or copy) otherwise passes every
check and fails minutes later inside the Ray workers with ``invalid header length``, naming
no file. Only headers are read here (a safetensors header is a few KB of JSON before the
data; a ``.bin`` is opened memory-mapped onto the meta device, no tensor data read), so the
check costs milliseconds whatever the model's size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tunearena.errors import UserError


class ModelDirError(UserError, ValueError):
    """A base model that cannot be loaded; the message says what is missing. Defined with the
    weights, the lowest of the model-dir checks, and raised by all of them."""

# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# Names the token embedding has in common architectures (Llama, GPT-2, BLOOM, GPT-NeoX).
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight",
                      "embed_in.weight")
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")

Shapes = dict[str, tuple[list[int], Path]]
"""Tensor name -> (shape, the file holding it)."""


def damaged(path: Path, why: str) -> ModelDirError:
    return ModelDirError(f"{path} is damaged ({why}): download it again, or export the model "
                         f"again if tunearena or your own code wrote it")


def safetensors_shapes(path: Path) -> Shapes:
    """Every tensor's shape from a safetensors header, after checking that the header parses
    and that the file is long enough to hold every tensor's data."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise damaged(path, f"{size} bytes, shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise damaged(path, f"truncated: its header claims {length} bytes but the file "
                                f"has {size}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(path, f"its header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise damaged(path, "its header is not a JSON object")
    shapes: Shapes = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape, span = _tensor_entry(path, name, info)
        shapes[name] = (shape, path)
        end = max(end, span)
    if 8 + length + end > size:
        raise damaged(path, f"truncated: its tensors end at byte {8 + length + end} but the "
                            f"file has {size}")
    return shapes


def _tensor_entry(path: Path, name: str, info: object) -> tuple[list[int], int]:
    """``(shape, end of data)`` of one header entry, checked for consistency."""
    try:
        assert isinstance(info, dict)
        shape, (begin, end), dtype = info["shape"], info["data_offsets"], info["dtype"]
        assert all(isinstance(n, int) and n >= 0 for n in [*shape, begin, end]) and begin <= end
    except (AssertionError, KeyError, TypeError, ValueError):
        raise damaged(path, f"the header entry of tensor {name!r} is malformed") from None
    width = DTYPE_BYTES.get(dtype)
    if width is not None and (end - begin) != math.prod(shape) * width:
        raise damaged(path, f"tensor {name!r} is {dtype} {shape} but spans {end - begin} bytes")
    return shape, end


def bin_shapes(path: Path) -> Shapes:
    """Every tensor's shape in a ``pytorch_model.bin``, loaded with ``weights_only`` (plain
    tensors only; a pickle that would run code is refused) onto the meta device."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).split(". ")[0].splitlines()[0]
        raise ModelDirError(
            f"{path} holds more than plain tensors ({first}): loading it could run code. "
            f"Use the model's safetensors weights, or convert a copy you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).split(". ")[0].splitlines()[0] if str(e) else type(e).__name__
        raise damaged(path, f"torch cannot read it as plain tensors: {first}") from None
    if not isinstance(state, dict):
        raise damaged(path, "it holds no state dict of tensors")
    return {k: (list(v.shape), path) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _shapes_of(path: Path) -> Shapes:
    if not path.is_file():
        raise ModelDirError(f"{path}: weights file not found (a shard named by its index "
                            f"is missing: download or export the model again)"
                            if not path.exists() else f"{path} is a directory, not a weights "
                            f"file")
    return safetensors_shapes(path) if path.suffix == ".safetensors" else bin_shapes(path)


def sharded_shapes(index: Path) -> Shapes:
    """The shapes of every shard an index names, each tensor found in the shard the index
    says holds it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        assert isinstance(weight_map, dict) and weight_map
        files = {str(f) for f in weight_map.values()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AssertionError):
        raise damaged(index, "not a JSON object with a weight_map of tensor names to "
                             "shard files") from None
    shapes: Shapes = {}
    for name in sorted(files):
        shapes |= _shapes_of(index.parent / name)
    lost = [t for t, f in weight_map.items() if shapes.get(t, ([], None))[1] != index.parent / f]
    if lost:
        raise damaged(index.parent / weight_map[lost[0]],
                      f"tensor {lost[0]!r} is not in it, though {index.name} says it is")
    return shapes


def check_weights(model_dir: Path, config: dict, weights: str) -> None:
    """Read the headers of ``model_dir``'s weights (``weights``: the file or index found,
    one of ``WEIGHT_FILES``) and check the embedding's shape against ``config``."""
    path = model_dir / weights
    shapes = sharded_shapes(path) if weights.endswith(".index.json") else _shapes_of(path)
    if not shapes:
        raise damaged(path, "it holds no tensors")
    check_shapes(model_dir, config, shapes)


def check_shapes(model_dir: Path, config: dict, shapes: Shapes) -> None:
    """Refuse an embedding whose rows or width disagree with ``config.json``'s
    ``vocab_size`` or hidden size: weights and config from different models."""
    text = config if "vocab_size" in config else config.get("text_config") or {}
    hidden = next((text[k] for k in HIDDEN_KEYS if isinstance(text.get(k), int)), None)
    expected = {0: ("vocab_size", text.get("vocab_size")), 1: ("hidden size", hidden)}
    for name, (shape, file) in shapes.items():
        if not name.endswith(EMBEDDING_SUFFIXES) or len(shape) != 2:
            continue
        for axis, (what, want) in expected.items():
            if isinstance(want, int) and shape[axis] != want:
                raise ModelDirError(
                    f"model dir {model_dir}: tensor {name} in {file.name} has shape {shape}, "
                    f"but config.json gives {what} {want}: the weights and config.json come "
                    f"from different models; download or export the model again, config and "
                    f"weights together")
