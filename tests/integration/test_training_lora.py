"""LoRA under every ZeRO stage, and the memory levers that must not change the numbers.

Real local Ray, two Ray Train workers, real DeepSpeed on gloo (fp32), real peft. Each
configuration trains once per module (a cached fixture); the tests read those runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT
from safetensors.torch import load_file

from tunearena.cluster.config import ClusterConfig
from tunearena.training.config import TrainingConfig
from tunearena.training.export import ADAPTER_DIR
from tunearena.training.summary import TrainingSummary
from tunearena.training.trainer import run_stage

pytestmark = pytest.mark.slow


def make_cfg(data_path: Path, zero_stage: int, **overrides) -> TrainingConfig:
    settings = {
        "datasets": [{"path": data_path, "format": "text"}],
        "validation_fraction": 0.1,
        "seq_len": 32,
        "micro_batch_size": 2,
        "grad_accum_steps": 2,
        "max_steps": 8,
        "lr": 1e-2,
        "zero_stage": zero_stage,
        "precision": "fp32",
        "log_every_steps": 1,
        "eval_every_steps": 100,
        "seed": 0,
        # TINY_TEXT repeats each text four times on purpose: the repeats are kept.
        "data_prep": {"deduplicate": False, "near_duplicate_threshold": None},
        "method": "lora",
        # Dropout 0 so that runs differing only in partitioning give the same numbers.
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
    }
    return TrainingConfig.model_validate(settings | overrides)


@pytest.fixture(scope="module")
def trained(ray_local, tiny_model_dir, tiny_text_file, tmp_path_factory):
    """``trained(key, stage, **overrides)`` -> (summary, export dir), each key trained once."""
    runs: dict[str, tuple[TrainingSummary, Path]] = {}
    root = tmp_path_factory.mktemp("runs")

    def get(key: str, stage: int, **overrides) -> tuple[TrainingSummary, Path]:
        if key not in runs:
            out_dir = root / key
            summary = run_stage(
                key, str(tiny_model_dir), make_cfg(tiny_text_file, stage, **overrides),
                ClusterConfig(num_workers=2, cpus_per_worker=1, use_gpu=False),
                out_dir, root / "ray",
            )
            runs[key] = (summary, out_dir)
        return runs[key]

    return get


def fixed_batch(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(TINY_TEXT[0], return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("stage", [pytest.param(0, marks=pytest.mark.heavy),
                                   pytest.param(1, marks=pytest.mark.heavy), 2, 3])
def test_lora_trains_and_exports_a_loadable_adapter_and_merged_model(stage, trained,
                                                                     tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    summary, out_dir = trained(f"lora{stage}", stage)
    assert summary.method == "lora"
    assert 0 < summary.trainable_parameters < summary.parameters / 5
    losses = [h["train_loss"] for h in summary.history if "train_loss" in h]
    # Rank-4 adapters on a random model learn slowly: a fall, not a plunge.
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1, losses

    # The adapter: non-empty tensors (a ZeRO-3 export of partitions would be empty), and
    # lora_B, which peft initialises to zero, has learnt something.
    adapter = load_file(out_dir / ADAPTER_DIR / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
    # Every linear layer but the head is adapted ("all-linear").
    adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"}

    # It loads the way users load adapters, and the merged dir is the same model.
    batch = fixed_batch(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_loss = float(base(**batch).loss)
        adapter_out = PeftModel.from_pretrained(base, out_dir / ADAPTER_DIR).eval()(**batch)
        merged_out = AutoModelForCausalLM.from_pretrained(out_dir).eval()(**batch)
    torch.testing.assert_close(merged_out.logits, adapter_out.logits, rtol=1e-4, atol=1e-4)
    assert float(merged_out.loss) < base_loss  # it learnt the training text

    # The export was verified against the trained engine before the stage completed.
    checks = {c.what: c for c in summary.export_check}
    assert set(checks) == {"adapter", "model"}
    assert all(c.abs_diff <= 1e-3 * max(1.0, c.trained_loss) for c in checks.values())


def test_lora_is_the_same_under_zero2_and_zero3(trained):
    (_, dir2), (_, dir3) = trained("lora2", 2), trained("lora3", 3)
    a2 = load_file(dir2 / ADAPTER_DIR / "adapter_model.safetensors")
    a3 = load_file(dir3 / ADAPTER_DIR / "adapter_model.safetensors")
    assert a2.keys() == a3.keys()
    for name in a2:
        torch.testing.assert_close(a3[name], a2[name], rtol=0, atol=1e-4, msg=name)


def test_gradient_checkpointing_changes_memory_not_the_numbers(trained, tmp_path_factory,
                                                               monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain, _ = trained("lora3", 3)
    # This run also sends its metrics to both trackers, which must not change them either.
    tracked = tmp_path_factory.mktemp("tracking")
    tracking = {"tensorboard_dir": tracked / "tb", "mlflow_tracking_uri": f"file:{tracked}/ml",
                "mlflow_experiment": "lora"}
    recomputed, _ = trained("lora3-gc", 3, gradient_checkpointing=True, tracking=tracking)
    assert recomputed.final_train_loss == pytest.approx(plain.final_train_loss, abs=1e-5)

    # Rank 0 alone logged every step: one event file, one MLflow run.
    train_losses = [h["train_loss"] for h in recomputed.history if "train_loss" in h]
    events = EventAccumulator(str(tracked / "tb" / "lora3-gc"))
    events.Reload()
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx(train_losses)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as the tracker sets it for itself
    client = MlflowClient(tracking_uri=f"file:{tracked}/ml")
    (run,) = client.search_runs([client.get_experiment_by_name("lora").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["method"] == "lora"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 9))
    assert [m.value for m in history] == pytest.approx(train_losses)


@pytest.mark.heavy
@pytest.mark.parametrize(("stage", "offload"), [(2, {"offload_optimizer": "cpu"}),
                                                (3, {"offload_optimizer": "cpu",
                                                     "offload_params": "cpu"})])
def test_cpu_offload_gives_the_same_full_fine_tune(stage, offload, trained):
    plain, _ = trained(f"full{stage}", stage, method="full")
    offloaded, out_dir = trained(f"full{stage}-offload", stage, method="full", **offload)
    assert offloaded.final_train_loss == pytest.approx(plain.final_train_loss, abs=1e-5)
    assert (out_dir / "model.safetensors").is_file()
