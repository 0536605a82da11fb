"""A stage whose workers fail ends with one message, not Ray's frames: real local Ray, two Ray
Train workers, a model dir whose weights were truncated after any input check ran."""

from __future__ import annotations

import re
import shutil

import pytest

from tunearena.cluster.config import ClusterConfig
from tunearena.errors import UserError
from tunearena.training.config import TrainingConfig
from tunearena.training.failures import StageFailed
from tunearena.training.trainer import run_stage

pytestmark = pytest.mark.slow


def test_truncated_weights_fail_the_stage_with_the_ranks_the_cause_and_the_fix(
        ray_local, tiny_model_dir, tiny_text_file, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4])  # the header's length, cut short
    cfg = TrainingConfig(datasets=[{"path": tiny_text_file, "format": "text"}], seq_len=32,
                         micro_batch_size=2, max_steps=2, zero_stage=2, precision="fp32",
                         data_prep={"deduplicate": False, "near_duplicate_threshold": None})
    cluster = ClusterConfig(num_workers=2, cpus_per_worker=1, use_gpu=False)
    with pytest.raises(StageFailed) as e:
        run_stage("broken", str(model), cfg, cluster, tmp_path / "out", tmp_path / "ray")
    message = str(e.value)
    assert isinstance(e.value, UserError)  # the CLI prints it without a traceback, exit 2
    # Every rank fails alike; the ones named are those that had failed when Ray Train stopped
    # the group, which depends on the machine's timing: one rank or both, never a repeat.
    assert re.match(r"stage broken failed on the cluster; worker (rank [01]|ranks 0, 1): "
                    "SafetensorError: Error while deserializing header", message), message
    assert f"A weights file of {model} is truncated or corrupt" in message
    assert "/logs/worker-*.err" in message
    assert "Traceback" not in message and "\n" not in message
    assert e.value.__cause__ is None and e.value.__suppress_context__
