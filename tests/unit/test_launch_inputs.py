"""Bad input is refused before any cluster resource is claimed, naming file, line or field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray

from tunearena.configbase import ConfigError
from tunearena.evaluation.benchmarks import BenchmarkError
from tunearena.launch.cli import main
from tunearena.launch.config import load_config
from tunearena.launch.inputs import check_inputs
from tunearena.rag.corpus import CorpusError
from tunearena.training.data import DataError
from tunearena.training.trainer import ModelDirError

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A model dir that passes the model checks (a config, a complete safetensors file) and
    nothing after them, so each test reaches the input it breaks."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, d / "model.safetensors")
    return d


def cfg_with(model_dir: Path, *overrides: str):
    return load_config(DEMO, [f"model.base={model_dir}", *overrides])


def test_model_dir_without_weights(tmp_path, model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match="has no weights"):
        check_inputs(cfg_with(model_dir))
    with pytest.raises(ModelDirError, match="does not exist"):
        check_inputs(cfg_with(tmp_path / "missing"))


def test_empty_corpus(tmp_path, model_dir):
    empty = tmp_path / "docs.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(CorpusError, match="empty"):
        check_inputs(cfg_with(model_dir, f"rag.corpus={empty}"))


def test_missing_training_file(tmp_path, model_dir):
    with pytest.raises(DataError, match=r"nope\.jsonl: training file not found"):
        check_inputs(cfg_with(model_dir, f"stages.0.datasets.0.path={tmp_path / 'nope.jsonl'}"))
    # Replayed data is read up front too, and a stage's own validation file.
    with pytest.raises(DataError, match=r"gone\.jsonl: training file not found"):
        check_inputs(cfg_with(model_dir,
                              f"stages.2.replay.datasets.0.path={tmp_path / 'gone.jsonl'}"))
    with pytest.raises(DataError, match=r"val\.jsonl: training file not found"):
        check_inputs(cfg_with(model_dir,
                              f"stages.1.datasets.0.validation_path={tmp_path / 'val.jsonl'}"))


def test_training_record_missing_its_field(tmp_path, model_dir):
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "response": "A"}) + "\n" + json.dumps({"prompt": "Q"}) + "\n")
    with pytest.raises(DataError, match=r"qa\.jsonl:2: format 'instruction' needs .*'response'"):
        check_inputs(cfg_with(model_dir, f"stages.1.datasets.0.path={bad}"))


def test_benchmark_answer_out_of_range(tmp_path, model_dir):
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "?", "choices": ["x", "y"], "answer": 2}) + "\n")
    with pytest.raises(BenchmarkError, match=r"test\.jsonl:1: answer 2 out of range"):
        check_inputs(cfg_with(model_dir, f"evaluation.benchmarks.0.path={bad}"))


def test_cli_reports_one_clear_line_and_claims_nothing(tmp_path, capsys):
    code = main(["demo", "--set", f"runs_dir={tmp_path}", "--set", "rag.top_k=zero"])
    err = capsys.readouterr().err
    assert code == 2
    assert "rag.top_k" in err and "zero" in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert not any(tmp_path.iterdir())


def test_runs_dir_is_written_to_and_left_as_it_was(tmp_path):
    from tunearena.launch.inputs import check_runs_dir

    check_runs_dir(tmp_path / "runs" / "deeper", "exp")  # the nearest parent that exists
    check_runs_dir(tmp_path, "exp")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "exp").write_text("a file where the run directory would go\n")
    with pytest.raises(ConfigError, match=r"runs_dir .*: .*exp is a file, not a directory"):
        check_runs_dir(tmp_path, "exp")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_runs_dir_is_named(tmp_path):
    from tunearena.launch.inputs import check_runs_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=r"runs_dir .*locked.*: cannot write in .*locked"):
            check_runs_dir(locked / "runs", "exp")
    finally:
        locked.chmod(0o755)


def test_a_refused_write_in_runs_dir_becomes_a_config_error(tmp_path, monkeypatch):
    """As root (this sandbox) no directory is read-only, so the filesystem's refusal is
    raised where the check writes its probe file."""
    import tempfile

    from tunearena.launch.inputs import check_runs_dir

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(ConfigError, match=r"cannot write in .* \(Permission denied\); set "
                                          r"runs_dir to a directory you can write to"):
        check_runs_dir(tmp_path, "exp")
