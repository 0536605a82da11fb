"""Training time and cost before launch: the arithmetic, where its MFU comes from, and a 70B
run on 64 GPUs planned from its config alone, with no cluster and no weights."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import ray

from tunearena.launch.cli import main
from tunearena.training.estimate import DEFAULT_MFU, assumed_mfu, estimate_line, estimate_training

REPO = Path(__file__).resolve().parents[2]
DEMO_BASE = REPO / "examples" / "demo_world" / "base_model"
H100 = "NVIDIA H100 80GB HBM3"


def test_full_fine_tuning_takes_six_flops_per_parameter_and_token_at_the_measured_mfu():
    e = estimate_training(H100, 8, steps=100, global_batch=64, width=2048, n_params=8 * 10**9,
                          n_trainable=8 * 10**9, method="full", usd_per_gpu_hour=2.5)
    assert e is not None
    tokens = 100 * 64 * 2048
    mfu, source = assumed_mfu(H100, "full")
    assert source.startswith("measured on H100") and e.mfu == mfu
    assert e.tokens == tokens and e.flops == tokens * 6 * 8e9
    assert e.hours == pytest.approx(tokens * 6 * 8e9 / (8 * 989e12 * mfu) / 3600)
    assert e.device_hours == pytest.approx(8 * e.hours)
    assert e.usd == pytest.approx(e.device_hours * 2.5)


def test_lora_counts_four_flops_per_parameter_and_its_own_measured_mfu():
    e = estimate_training(H100, 1, 10, 8, 1024, n_params=10**9, n_trainable=10**7,
                          method="lora", usd_per_gpu_hour=1.0)
    assert e is not None and e.flops == 10 * 8 * 1024 * (4 * 10**9 + 2 * 10**7)
    assert e.mfu == assumed_mfu(H100, "lora")[0] != assumed_mfu(H100, "full")[0]


def test_an_unmeasured_gpu_gets_the_stated_default_and_a_cpu_no_estimate():
    # An H200 computes at an H100's peak: the H100's measured figure stands for it.
    assert assumed_mfu("NVIDIA H200", "full") == assumed_mfu(H100, "full")
    assert assumed_mfu("NVIDIA A100-SXM4-80GB", "full") == (DEFAULT_MFU, "default")
    assert estimate_training("cpu", 2, 10, 8, 256, 10**6, 10**6, "full", 2.5) is None
    assert "no time or cost estimate on CPU workers" in estimate_line("qa", None, "CPU workers")


@pytest.fixture
def plan_70b(tmp_path) -> Path:
    """An experiment training a Llama-3-70B-shaped model on 64 GPUs: the model dir holds its
    config and a tokenizer, no weights."""
    model = tmp_path / "llama70b"
    model.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_BASE / f, model / f)
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False}))
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"text": " ".join(rng.choice(words) for _ in range(60)) + f" {i}"}) + "\n"
        for i in range(300)))
    config = tmp_path / "plan.yaml"
    config.write_text(f"""name: plan70b
runs_dir: {tmp_path / "runs"}
model: {{base: {model}}}
cluster: {{num_workers: 64, use_gpu: true}}
training:
  datasets: [{{path: {tmp_path / "train.jsonl"}, format: text}}]
  seq_len: 256
  micro_batch_size: 1
  zero_stage: 3
  precision: bf16
evaluation: {{enabled: false, arms: [base, ft]}}
""")
    return config


def test_a_70b_run_on_64_gpus_is_planned_without_a_cluster_or_weights(plan_70b, capsys):
    assert main(["preflight", str(plan_70b), "--plan", "H100"]) == 0
    out = capsys.readouterr().out
    assert not ray.is_initialized()
    row = next(line for line in out.splitlines() if line.startswith("│ ft"))
    zero = [cell.strip() for cell in row.strip("│ ").split("│")][1:]
    # 70B x 16 bytes of weights, gradients and Adam states fit 64 GPUs only when partitioned.
    assert zero[0].endswith("no") and zero[3].endswith("fits*"), zero
    assert float(zero[0].split()[0].replace(",", "")) > 1000  # GiB, unpartitioned
    assert "on 64 x H100" in out and "GPU-hours, about $" in out
    assert "global batch 64" in out


def test_planning_for_an_unknown_gpu_names_the_known_ones(plan_70b, capsys):
    assert main(["preflight", str(plan_70b), "--plan", "TPU"]) != 0
    err = capsys.readouterr()
    assert "--plan TPU" in err.out + err.err and "H100" in err.out + err.err


def test_the_report_sets_the_estimate_beside_what_training_spent():
    from tunearena.evaluation.report.sentences import cost_sentence
    from tunearena.evaluation.results import Cost

    spent = {"device": "GPU", "device_hours": 3.0, "usd": 7.5, "usd_per_device_hour": 2.5}
    assert cost_sentence(Cost.model_validate(spent)) == (
        "Fine-tuning used 3 GPU-hours, about $7.50 at $2.5 per hour.")
    sentence = cost_sentence(Cost.model_validate(
        spent | {"estimate": {"device_hours": 2.0, "usd": 5.0}}))
    assert sentence is not None
    assert "estimated at 2 GPU-hours ($5.00) before launch" in sentence
    assert "took 1.50 times the estimate" in sentence
