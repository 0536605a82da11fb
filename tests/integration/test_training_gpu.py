"""The CUDA path: NCCL + bf16 through Ray Train and DeepSpeed. Skipped without a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TEXT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL, bf16)"),
]


@pytest.fixture(scope="module")
def ray_gpu():
    import ray

    ray.init(address="local", num_cpus=4, num_gpus=torch.cuda.device_count(), include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_bf16_nccl_stage_trains_and_exports(ray_gpu, tiny_model_dir, tmp_path, zero_stage):
    from transformers import AutoModelForCausalLM

    from tunearena.cluster.config import ClusterConfig
    from tunearena.training.config import TrainingConfig
    from tunearena.training.trainer import run_stage

    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_TEXT * 8))
    cfg = TrainingConfig(datasets=[{"path": data}], seq_len=32, micro_batch_size=4, max_steps=12,
                         lr=3e-3, zero_stage=zero_stage, log_every_steps=4, eval_every_steps=6)
    cluster = ClusterConfig(num_workers=torch.cuda.device_count(), use_gpu="auto")
    summary = run_stage(f"gpu-z{zero_stage}", str(tiny_model_dir), cfg, cluster,
                        tmp_path / "out", tmp_path / "ray")
    assert summary["use_gpu"] and summary["bf16"], "auto precision must pick bf16 on CUDA"
    losses = [h["train_loss"] for h in summary["history"] if "train_loss" in h]
    assert losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert all(p.numel() > 0 for p in model.parameters())
