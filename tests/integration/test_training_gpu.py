"""The CUDA paths: NCCL + bf16 through Ray Train and DeepSpeed, full and LoRA fine-tuning,
CPU offload with pinned memory, and QLoRA (bitsandbytes). Skipped without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT

from tunearena.training.summary import TrainingSummary

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL, bf16)"),
]


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory) -> Path:
    """Where the workers' torch.compile writes its generated kernels (empty until one compiles)."""
    return tmp_path_factory.mktemp("inductor")


@pytest.fixture(scope="module")
def ray_gpu(inductor_cache):
    import ray

    from tunearena.cluster.quiet import WORKER_SETUP_HOOK

    ray.init(address="local", num_cpus=4, num_gpus=torch.cuda.device_count(),
             include_dashboard=False,
             runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK,
                          "env_vars": {"TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)}})
    yield
    ray.shutdown()


def train_on_gpu(tiny_model_dir, tmp_path, name: str, **overrides) -> TrainingSummary:
    from tunearena.cluster.config import ClusterConfig
    from tunearena.training.config import TrainingConfig
    from tunearena.training.trainer import run_stage

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_TEXT * 8))
    settings = {"datasets": [{"path": data}], "seq_len": 32, "micro_batch_size": 4,
                "max_steps": 12, "lr": 3e-3, "log_every_steps": 4, "eval_every_steps": 6,
                # The text repeats on purpose: cleaning must keep every record.
                "data_prep": {"deduplicate": False, "near_duplicate_threshold": None}}
    cfg = TrainingConfig.model_validate(settings | overrides)
    cluster = ClusterConfig(num_workers=torch.cuda.device_count(), use_gpu="auto")
    summary = run_stage(name, str(tiny_model_dir), cfg, cluster, tmp_path / "out",
                        tmp_path / "ray")
    assert summary.use_gpu and summary.bf16, "auto precision must pick bf16 on CUDA"
    losses = [h["train_loss"] for h in summary.history if "train_loss" in h]
    assert losses[-1] < losses[0]
    return summary


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_bf16_nccl_stage_trains_and_exports(ray_gpu, tiny_model_dir, tmp_path, zero_stage):
    from transformers import AutoModelForCausalLM

    summary = train_on_gpu(tiny_model_dir, tmp_path, f"gpu-z{zero_stage}", zero_stage=zero_stage)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert all(p.numel() > 0 for p in model.parameters())
    assert summary.mfu is None or 0 < summary.mfu < 1


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_bf16_lora_exports_a_verified_adapter(ray_gpu, tiny_model_dir, tmp_path, zero_stage):
    from tunearena.training.export import ADAPTER_DIR

    summary = train_on_gpu(tiny_model_dir, tmp_path, f"gpu-lora-z{zero_stage}", method="lora",
                           lr=3e-2, zero_stage=zero_stage, gradient_checkpointing=True)
    assert (tmp_path / "out" / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert {c.what for c in summary.export_check} == {"adapter", "model"}


def test_compiled_blocks_train_and_export(ray_gpu, inductor_cache, tiny_model_dir, tmp_path):
    before = set(inductor_cache.rglob("*.py"))
    summary = train_on_gpu(tiny_model_dir, tmp_path, "gpu-compile", zero_stage=2, compile=True)
    # torch.compile ran in the workers: inductor wrote the code it generated for this run.
    assert set(inductor_cache.rglob("*.py")) - before, "compile=True compiled nothing"
    # The compiled model exported what it trained.
    assert [c.what for c in summary.export_check] == ["model"]


def test_cpu_offload_with_pinned_memory(ray_gpu, tiny_model_dir, tmp_path):
    offloaded = train_on_gpu(tiny_model_dir, tmp_path / "offload", "gpu-offload", zero_stage=3,
                             offload_optimizer="cpu", offload_params="cpu")
    resident = train_on_gpu(tiny_model_dir, tmp_path / "resident", "gpu-resident", zero_stage=3)
    # Offload took effect: the fp32 master weights and Adam states (12 bytes a parameter)
    # live on the CPU, so the GPU's peak is below the same run's without offload.
    assert offloaded.peak_gpu_memory_mb < resident.peak_gpu_memory_mb, (
        offloaded.peak_gpu_memory_mb, resident.peak_gpu_memory_mb)


def test_qlora_trains_a_4bit_base(ray_gpu, tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    summary = train_on_gpu(tiny_model_dir, tmp_path, "gpu-qlora", method="qlora", lr=3e-2,
                           zero_stage=2)
    assert summary.method == "qlora"
    # Adapters only: the 4-bit base is frozen.
    assert 0 < summary.trainable_parameters < summary.parameters
