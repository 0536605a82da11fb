"""What a LoRA stage's adapter records about its base: a path relative to the run directory
for a stage's merged model, ``model.base`` as the run read it otherwise, the base's weight
hash, a README; and the check that refuses to continue an adapter on another model.

The files are written by hand (an ``adapter_config.json`` as peft writes it, weight files of
known bytes): the record and the check read files, not tensors. Loading the adapters through
peft from a moved run directory is in tests/integration/test_pipeline_stages.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tunearena.training.adapters import (
    BASE_RECORD,
    AdapterBaseError,
    base_record,
    check_base,
    read_base,
    record_base,
    resolve_base,
    weights_sha256,
)
from tunearena.training.export import ADAPTER_DIR


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def _adapter(run_dir: Path, stage: str, peft_base: Path) -> Path:
    """An exported adapter whose config names its base as peft does: the absolute path the
    worker loaded."""
    adapter = run_dir / "models" / stage / ADAPTER_DIR
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(peft_base), "peft_type": "LORA", "r": 4}))
    (adapter / "README.md").write_text(f"---\nbase_model: {peft_base}\n---\n# Model Card\n")
    return adapter


@pytest.fixture
def run(tmp_path) -> tuple[Path, Path]:
    """(run dir, base model dir outside it): l1 a LoRA on the base, l2 its merged model, l3
    a LoRA trained on l2's merged model."""
    base = _model(tmp_path / "base", b"base weights")
    run_dir = tmp_path / "runs" / "demo"
    _model(run_dir / "models" / "l2", b"l2 merged weights")
    _adapter(run_dir, "l1", base)
    _adapter(run_dir, "l3", (run_dir / "models" / "l2").resolve())
    record_base(run_dir / "models" / "l1" / ADAPTER_DIR, "l1",
                base_record(run_dir, None, str(base)), merged=True)
    record_base(run_dir / "models" / "l3" / ADAPTER_DIR, "l3",
                base_record(run_dir, "l2", str(base)), merged=False)
    return run_dir, base


def test_an_adapter_on_a_stages_model_names_it_relative_to_the_run_directory(run):
    run_dir, _ = run
    adapter = run_dir / "models" / "l3" / ADAPTER_DIR
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "models/l2"
    assert not Path(config["base_model_name_or_path"]).is_absolute()
    assert config["r"] == 4  # the rest of peft's config is kept
    record = read_base(adapter)
    assert record is not None and record.stage == "l2" and record.path == "models/l2"
    expected = hashlib.sha256(
        f"model.safetensors {hashlib.sha256(b'l2 merged weights').hexdigest()}\n".encode())
    assert record.weights_sha256 == expected.hexdigest()
    readme = (adapter / "README.md").read_text()
    assert "Model Card" not in readme  # peft's card, with its absolute path, is replaced
    assert 'AutoModelForCausalLM.from_pretrained("models/l2")' in readme
    assert 'PeftModel.from_pretrained(base, "models/l3/adapter")' in readme
    assert "not the run's base model" in readme
    assert str(run_dir) not in (adapter / "README.md").read_text() + json.dumps(config)


def test_an_adapter_on_the_base_model_names_it_as_the_run_read_it(run):
    run_dir, base = run
    adapter = run_dir / "models" / "l1" / ADAPTER_DIR
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
    record = read_base(adapter)
    assert record is not None and record.stage is None and record.path == str(base)
    assert record.weights_sha256 == weights_sha256(base) is not None
    readme = (adapter / "README.md").read_text()
    assert f"the run's base model, `{base}`" in readme
    assert "adapter merged into its base" in readme  # l1 was merged, l3 not
    assert "adapter merged" not in (run_dir / "models" / "l3" / ADAPTER_DIR / "README.md").read_text()


def test_a_moved_run_directory_resolves_its_adapters_bases_where_it_now_is(run, tmp_path):
    run_dir, base = run
    moved = Path(shutil.move(run_dir, tmp_path / "elsewhere" / "demo"))
    assert not run_dir.exists()
    for stage, expected in (("l3", moved / "models" / "l2"), ("l1", base)):
        adapter = moved / "models" / stage / ADAPTER_DIR
        record = read_base(adapter)
        assert record is not None
        assert resolve_base(record, moved) == str(expected)
        check_base(adapter, moved, str(expected))  # no error: the recorded base, same weights


def test_an_adapter_is_refused_on_another_base_naming_both(run):
    run_dir, base = run
    adapter = run_dir / "models" / "l3" / ADAPTER_DIR
    with pytest.raises(AdapterBaseError) as err:
        check_base(adapter, run_dir, str(base))
    message = str(err.value)
    assert "the merged model of stage l2 (models/l2)" in message and str(base) in message


def test_an_adapter_is_refused_on_its_base_once_its_weights_changed(run):
    run_dir, _ = run
    (run_dir / "models" / "l2" / "model.safetensors").write_bytes(b"retrained l2 weights")
    with pytest.raises(AdapterBaseError, match="now holds other weights"):
        check_base(run_dir / "models" / "l3" / ADAPTER_DIR, run_dir, str(run_dir / "models" / "l2"))


def test_an_adapter_without_a_record_is_not_checked(run):
    run_dir, base = run
    adapter = run_dir / "models" / "l3" / ADAPTER_DIR
    (adapter / BASE_RECORD).unlink()
    assert read_base(adapter) is None
    check_base(adapter, run_dir, str(base))  # exported before bases were recorded


def test_a_base_with_no_readable_weights_has_no_hash(tmp_path):
    assert weights_sha256(tmp_path / "missing") is None
    assert weights_sha256(_model(tmp_path / "empty", b"")) is not None
    (tmp_path / "empty" / "model.safetensors").unlink()
    assert weights_sha256(tmp_path / "empty") is None
