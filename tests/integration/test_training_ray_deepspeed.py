"""run_stage end to end: real local Ray, two Ray Train workers, real DeepSpeed on gloo (fp32).

Each ZeRO stage is trained once per module (a cached fixture) and several tests read that run,
so the file costs one Ray start and four short trainings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunearena.cluster.config import ClusterConfig
from tunearena.training.config import TrainingConfig
from tunearena.training.loop import EXPORT_MARKER
from tunearena.training.summary import TrainingSummary
from tunearena.training.trainer import run_stage

pytestmark = pytest.mark.slow

# Recorded from a ZeRO-2 run of `make_cfg` on the conftest tiny model (torch 2.13 CPU,
# deepspeed 0.19.8, transformers 5.23). A refactor that should not change numerics (data
# order, loss normalisation, batching, the DeepSpeed config) must keep this value.
RECORDED_ZERO2_FINAL_TRAIN_LOSS = 3.3494830


def make_cfg(data_path: Path, zero_stage: int) -> TrainingConfig:
    # Repeated short text and a high learning rate, so the loss falls fast and far enough
    # that "last < first" holds by a wide margin in a few steps.
    return TrainingConfig(
        datasets=[{"path": data_path, "format": "text"}],
        validation_fraction=0.1,
        seq_len=32,
        packing=True,
        micro_batch_size=2,
        grad_accum_steps=2,
        max_steps=8,
        lr=1e-2,
        warmup_steps=0,
        zero_stage=zero_stage,
        precision="fp32",
        log_every_steps=1,
        eval_every_steps=100,  # validation once, at the end
        seed=0,
        # TINY_TEXT repeats each text four times on purpose: the repeats are kept.
        data_prep={"deduplicate": False, "near_duplicate_threshold": None},
    )


@pytest.fixture(scope="module")
def trained(ray_local, tiny_model_dir, tiny_text_file, tmp_path_factory):
    """``trained(stage)`` -> (summary, export dir), training each ZeRO stage at most once."""
    runs: dict[int, tuple[TrainingSummary, Path]] = {}
    root = tmp_path_factory.mktemp("runs")

    def get(stage: int) -> tuple[TrainingSummary, Path]:
        if stage not in runs:
            out_dir = root / f"zero{stage}"
            summary = run_stage(
                f"zero{stage}",
                str(tiny_model_dir),
                make_cfg(tiny_text_file, stage),
                ClusterConfig(num_workers=2, cpus_per_worker=1, use_gpu=False),
                out_dir,
                root / "ray",
            )
            runs[stage] = (summary, out_dir)
        return runs[stage]

    return get


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


@pytest.mark.parametrize("stage", [0, pytest.param(1, marks=pytest.mark.heavy), 2, 3])
def test_run_stage_exports_a_trained_model(stage, trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    summary, out_dir = trained(stage)
    assert summary.steps == 8 and summary.world_size == 2
    assert summary.global_batch_size == 8
    assert summary.bf16 is False and summary.use_gpu is False
    assert (out_dir / EXPORT_MARKER).is_file()

    # Loads as a plain Hugging Face model, with the tokenizer beside it.
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert (out_dir / "tokenizer.json").is_file()
    exported, initial = weights(out_dir), weights(tiny_model_dir)
    assert exported.keys() == initial.keys()
    for name, tensor in exported.items():
        # An empty tensor is what a ZeRO-3 export of partitions (not gathered weights) writes.
        assert tensor.numel() > 0, name
        assert tensor.shape == initial[name].shape, name
        assert torch.isfinite(tensor).all(), name
        assert not torch.equal(tensor, initial[name]), f"{name} did not change"
    assert model.model.embed_tokens.weight.shape == initial["model.embed_tokens.weight"].shape

    train_losses = [h["train_loss"] for h in summary.history if "train_loss" in h]
    assert len(train_losses) == 8  # log_every_steps=1
    assert summary.final_train_loss == train_losses[-1]
    assert train_losses[-1] < train_losses[0] - 1.0, train_losses
    assert summary.final_val_loss is not None and summary.final_val_loss > 0
    assert summary.tokens_per_s > 0 and summary.mfu is None  # MFU is a GPU figure
    assert len(summary.step_time_s) == 8 and len(summary.placement) == 2
    # Every rank's peak resident memory: at least the libraries a worker imports.
    assert len(summary.peak_rss_mb) == 2 and min(summary.peak_rss_mb) > 200
    assert summary.export_check[0].abs_diff <= 1e-3
    # The logged epoch counts passes completed after the step.
    steps_per_epoch = summary.train_sequences // summary.global_batch_size
    assert summary.history[-1]["epoch"] == pytest.approx(8 / steps_per_epoch)


@pytest.mark.parametrize("stage", [0, pytest.param(1, marks=pytest.mark.heavy), 3])
def test_every_zero_stage_gives_the_weights_of_zero2(stage, trained):
    # The same fp32 math partitioned differently: only the order of float reductions differs.
    (s2, dir2), (s, other) = trained(2), trained(stage)
    w2, w = weights(dir2), weights(other)
    for name in w2:
        torch.testing.assert_close(w[name], w2[name], rtol=0, atol=1e-4, msg=name)
    assert s.final_train_loss == pytest.approx(s2.final_train_loss, abs=1e-4)


def test_zero2_final_loss_matches_the_recorded_value(trained):
    """Proof of value: a numerics-preserving refactor must reproduce this loss."""
    summary, _ = trained(2)
    print("zero2 final_train_loss", repr(summary.final_train_loss))
    assert summary.final_train_loss == pytest.approx(RECORDED_ZERO2_FINAL_TRAIN_LOSS, abs=1e-4)
