"""The base model's files are read before anything loads them, and a model dir's own code runs
only when the config says so: never through a prompt, whatever stdin holds.

The refusals themselves (truncated weights, a hub id offline, custom code, ...) are cases of
``test_bad_inputs.py``; here are the ones that need a subprocess, the layouts that must pass,
and the rule that every load in tunearena states ``trust_remote_code``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_model_dir
from test_bad_inputs import _shard, add_custom_code, pickle_that_runs_code

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.ray_cluster import worker_env
from tunearena.remote_code import ENV, set_trust_remote_code, trust_remote_code
from tunearena.training.model_dir import ModelDirError, check_model_dir

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"


def _check(model: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``tunearena check`` on the demo config in a fresh interpreter, ``y`` on its stdin."""
    sets = [a for o in (f"model.base={model}", *overrides) for a in ("--set", o)]
    return subprocess.run(
        [sys.executable, "-m", "tunearena.launch.cli", "check", str(DEMO), *sets],
        input="y\n", capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_custom_code_never_runs_even_with_yes_on_stdin(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    marker = tmp_path / "ran"
    add_custom_code(model, marker)
    refused = _check(model)
    assert refused.returncode == 2, refused.stderr
    said = " ".join(refused.stderr.split())
    assert "model.trust_remote_code" in said and str(model) in said
    assert "Traceback" not in said and "[y/N]" not in refused.stdout + said
    assert not marker.exists()
    # The control: the same dir with the config's consent does run its code, so the marker
    # above would have appeared had the code been imported.
    allowed = _check(model, "model.trust_remote_code=true",
                     env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert allowed.returncode == 0, allowed.stderr
    assert marker.read_text() == "ran"


def test_sharded_and_bin_weights_pass(tmp_path):
    import torch
    from safetensors.torch import load_file

    sharded = make_tiny_model_dir(tmp_path / "sharded")
    _shard(sharded, drop_second=False)
    check_model_dir(str(sharded))
    as_bin = make_tiny_model_dir(tmp_path / "bin")
    torch.save(load_file(as_bin / "model.safetensors"), as_bin / "pytorch_model.bin")
    (as_bin / "model.safetensors").unlink()
    check_model_dir(str(as_bin))


def test_a_bin_pickle_that_runs_code_is_refused_unrun(tmp_path):
    d = make_tiny_model_dir(tmp_path / "model")
    pickle_that_runs_code(d, tmp_path / "ran")
    with pytest.raises(ModelDirError, match="holds more than plain tensors"):
        check_model_dir(str(d))
    assert not (tmp_path / "ran").exists()


def test_shard_missing_a_tensor_the_index_names(tmp_path):
    import json

    d = make_tiny_model_dir(tmp_path / "model")
    _shard(d, drop_second=False)
    index = d / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    weight_map["model.extra.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelDirError, match="'model.extra.weight' is not in it"):
        check_model_dir(str(d))


def _fake_hub_cache(cache: Path, repo_id: str, model: Path) -> Path:
    """Lay ``model``'s files out as the Hugging Face cache holds a downloaded repo."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(model, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return snapshot


def test_hub_id_is_read_from_the_offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = _fake_hub_cache(tmp_path / "hub", "tunearena-tests/tiny",
                               make_tiny_model_dir(tmp_path / "model"))
    check_model_dir("tunearena-tests/tiny")
    # The cached snapshot is read like a local dir: a damaged file there is named.
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelDirError, match=f"{weights}.*truncated"):
        check_model_dir("tunearena-tests/tiny")
    with pytest.raises(ModelDirError, match="not in the offline Hugging Face cache"):
        check_model_dir("tunearena-tests/other")


def test_trust_remote_code_reaches_the_workers(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert trust_remote_code() is False
    set_trust_remote_code(True)
    assert trust_remote_code() is True
    assert worker_env(ClusterConfig())[ENV] == "1"
    set_trust_remote_code(False)
    assert worker_env(ClusterConfig())[ENV] == "0"


# Loads that can run a model dir's code; peft's adapter loading wraps a model already built,
# and PeftConfig reads adapter_config.json alone.
LOADERS = {"from_pretrained", "from_config", "HFLM"}


def test_every_load_states_trust_remote_code():
    unstated = []
    for path in sorted((REPO / "tunearena").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func, "value", None)
            if name not in LOADERS or getattr(owner, "id", "") in ("PeftModel", "PeftConfig"):
                continue
            if not any(k.arg == "trust_remote_code" for k in node.keywords):
                unstated.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not unstated, f"loads leaving trust_remote_code to transformers: {unstated}"
