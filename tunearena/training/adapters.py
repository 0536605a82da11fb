"""Which model a stage's LoRA adapter applies to, recorded so that a moved run directory still
loads it and a wrong base is refused.

A LoRA stage that starts from the base model trains its adapter on ``model.base``; one that
starts from an earlier stage (``lora_init: merge``) trains it on that stage's merged model,
``models/<stage>``; one that continues its predecessor's adapter keeps that adapter's base.
peft records the base as the absolute path it was loaded from, which breaks when the run
directory moves, and ``PeftModel.from_pretrained`` takes any base of the right shape, so an
adapter put on the original base instead of its predecessor's merged model silently gives
another model. So after a LoRA stage's export the driver rewrites its
``adapter_config.json`` to name a base inside the run directory relative to it, writes
``tunearena_base.json`` (``AdapterBase``) and a README beside the adapter, and a stage that
continues an adapter checks, before training, that the base it is about to load is the
recorded one (``check_base``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tunearena.errors import UserError
from tunearena.files import write_atomic

BASE_RECORD = "tunearena_base.json"
"""The record of an adapter's base, inside the adapter dir."""

MODELS_DIR = "models"
"""Where a run directory keeps each stage's exported model, ``models/<stage>``."""


class AdapterBaseError(UserError, RuntimeError):
    """An adapter about to be loaded onto a model other than the one it was trained on."""


class AdapterBase(BaseModel):
    """The model a LoRA adapter applies to, as ``adapter/tunearena_base.json`` records it."""

    model_config = ConfigDict(extra="forbid")

    stage: str | None
    """The stage whose merged model the adapter sits on; None: the run's base model."""
    path: str
    """That model: ``models/<stage>`` relative to the run directory, or ``model.base`` as the
    run read it (a local dir, or a hub id)."""
    weights_sha256: str | None
    """SHA-256 over the model's weight files (each file's name and SHA-256, in name order);
    None when they cannot be read here (a hub id that is not in the local cache)."""
    converted_from: str | None = None
    """The GGUF file a converted base was made from (its SHA-256 names the converted dir)."""


def _model_folder(model: str | Path) -> Path | None:
    """The local dir ``model`` is read from: itself, or a hub id's cached snapshot."""
    from tunearena.training.model_dir import cached_snapshot

    if Path(model).is_dir():
        return Path(model)
    return cached_snapshot(str(model))


def weights_sha256(model: str | Path) -> str | None:
    """The SHA-256 over ``model``'s weight files (``*.safetensors``, ``pytorch_model*.bin``
    at its top level), or None when there are none to read."""
    from tunearena.training.gguf import file_sha256

    folder = _model_folder(model)
    if folder is None:
        return None
    files = sorted({f for pattern in ("*.safetensors", "pytorch_model*.bin")
                    for f in folder.glob(pattern) if f.is_file()})
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name} {file_sha256(f)}\n".encode())
    return digest.hexdigest()


def stage_path(stage: str) -> str:
    """Where stage ``stage``'s exported model lives, relative to the run directory."""
    return f"{MODELS_DIR}/{stage}"


def base_record(run_dir: Path, base_stage: str | None, base: str) -> AdapterBase:
    """The record of an adapter trained on ``base_stage``'s merged model in ``run_dir``, or
    on ``base`` (``model.base`` as the run read it) when ``base_stage`` is None."""
    from tunearena.training.gguf import conversion_record

    if base_stage is not None:
        path = stage_path(base_stage)
        return AdapterBase(stage=base_stage, path=path,
                           weights_sha256=weights_sha256(run_dir / path))
    conversion = conversion_record(base)
    return AdapterBase(stage=None, path=base, weights_sha256=weights_sha256(base),
                       converted_from=conversion.source if conversion else None)


def record_base(adapter_dir: Path, stage: str, record: AdapterBase, merged: bool) -> None:
    """Write ``record`` beside stage ``stage``'s adapter, point its ``adapter_config.json``
    at the same base (relative to the run directory when it is a stage's model), and replace
    peft's model card with a README saying which base it applies to and how to load it
    (``merged``: the stage also exported the adapter merged into its base)."""
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = record.path
    write_atomic(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_atomic(adapter_dir / BASE_RECORD, record.model_dump_json(indent=1) + "\n")
    write_atomic(adapter_dir / "README.md", adapter_readme(stage, record, merged))


def read_base(adapter_dir: Path) -> AdapterBase | None:
    """The recorded base of the adapter in ``adapter_dir``; None for an adapter exported
    before bases were recorded."""
    path = adapter_dir / BASE_RECORD
    if not path.is_file():
        return None
    return AdapterBase.model_validate_json(path.read_text(encoding="utf-8"))


def resolve_base(record: AdapterBase, run_dir: Path) -> str:
    """The recorded base as a loadable path or hub id: a stage's model resolved against
    ``run_dir`` (wherever the run directory is now), the base model as recorded."""
    return str(run_dir / record.path) if record.stage is not None else record.path


def describe(record: AdapterBase) -> str:
    """The recorded base in words, for messages."""
    if record.stage is not None:
        return f"the merged model of stage {record.stage} ({record.path})"
    return f"the base model {record.path}"


def check_base(adapter_dir: Path, run_dir: Path, model: str) -> None:
    """Raise ``AdapterBaseError`` unless ``model`` is the model the adapter in
    ``adapter_dir`` records as its base (the same place, relative to ``run_dir`` for a
    stage's model, and the same weights). An adapter with no record is not checked."""
    record = read_base(adapter_dir)
    if record is None:
        return
    expected = resolve_base(record, run_dir)
    if not _same_model(expected, model):
        raise AdapterBaseError(
            f"{adapter_dir} applies to {describe(record)}, not to {model}: on another base "
            f"it gives a different model. Load it on {expected}")
    if record.weights_sha256 is None:
        return
    found = weights_sha256(model)
    if found is not None and found != record.weights_sha256:
        raise AdapterBaseError(
            f"{adapter_dir} applies to {describe(record)} with weights of SHA-256 "
            f"{record.weights_sha256[:16]}..., and {model} now holds other weights "
            f"({found[:16]}...): it changed since the adapter was trained. Restore it, or "
            f"train this stage's chain again under a new run name")


def _same_model(a: str, b: str) -> bool:
    """Whether two model paths or hub ids name the same model."""
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def adapter_readme(stage: str, record: AdapterBase, merged: bool) -> str:
    """The README beside stage ``stage``'s adapter: which base it applies to, how to load it."""
    adapter = f"{stage_path(stage)}/adapter"
    merged_line = (f"`{stage_path(stage)}/` holds the same model with the adapter merged into "
                   f"its base.\n" if merged else "")
    digest = (f" Its weights' SHA-256 (over each weight file's name and SHA-256) was "
              f"`{record.weights_sha256}` when the adapter was trained."
              if record.weights_sha256 else "")
    if record.stage is not None:
        applies = (f"the merged model of stage `{record.stage}`, `{record.path}` in this run "
                   f"directory, not the run's base model: on any other base it gives a "
                   f"different model.{digest}")
        where = "Paths are relative to the run directory; run this from there:"
    else:
        source = (f" (converted from `{record.converted_from}`)" if record.converted_from
                  else "")
        applies = f"the run's base model, `{record.path}`{source}.{digest}"
        where = "The adapter's path is relative to the run directory; run this from there:"
    return f"""# LoRA adapter of stage `{stage}`

Applies to {applies}

{where}

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{record.path}")
model = PeftModel.from_pretrained(base, "{adapter}")
```

`adapter_config.json` names the same base, so
`AutoPeftModelForCausalLM.from_pretrained("{adapter}")` loads both from the run directory too.
{merged_line}`{BASE_RECORD}` records the base for tunearena, which refuses to continue this
adapter on another model.
"""
