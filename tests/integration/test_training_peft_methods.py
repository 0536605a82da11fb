"""DoRA, IA3, prompt tuning and prefix tuning under ZeRO-2 and ZeRO-3, and scoring the ones
that cannot merge as base + adapter.

Real local Ray, two Ray Train workers, real DeepSpeed on gloo (fp32), real peft. Each
configuration trains once per module (a cached fixture); the tests read those runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT

from tunearena.cluster.config import ClusterConfig
from tunearena.training.config import TrainingConfig
from tunearena.training.export import ADAPTER_DIR
from tunearena.training.summary import TrainingSummary
from tunearena.training.trainer import run_stage

pytestmark = pytest.mark.slow

METHODS = ["dora", "ia3", "prompt_tuning", "prefix_tuning"]
MERGES = {"dora": True, "ia3": True, "prompt_tuning": False, "prefix_tuning": False}
# A handful of trained weights moves slowly at LoRA's rate; prompt tuning's usual is 0.3.
LR = {"dora": 3e-2, "ia3": 3e-1, "prompt_tuning": 3e-1, "prefix_tuning": 3e-1}


def make_cfg(data_path: Path, method: str, zero_stage: int) -> TrainingConfig:
    return TrainingConfig.model_validate({
        "datasets": [{"path": data_path, "format": "text"}],
        "validation_fraction": 0.1, "seq_len": 32, "micro_batch_size": 2,
        "grad_accum_steps": 2, "max_steps": 8, "lr": LR[method], "zero_stage": zero_stage,
        "precision": "fp32", "log_every_steps": 1, "eval_every_steps": 100, "seed": 0,
        "data_prep": {"deduplicate": False, "near_duplicate_threshold": None},
        "method": method,
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "virtual_tokens": {"count": 4},
    })


@pytest.fixture(scope="module")
def trained(ray_local, tiny_model_dir, tiny_text_file, tmp_path_factory):
    """``trained(method, stage)`` -> (summary, export dir), each trained once."""
    runs: dict[str, tuple[TrainingSummary, Path]] = {}
    root = tmp_path_factory.mktemp("runs")

    def get(method: str, stage: int) -> tuple[TrainingSummary, Path]:
        key = f"{method}-z{stage}"
        if key not in runs:
            out_dir = root / "models" / key
            summary = run_stage(key, str(tiny_model_dir), make_cfg(tiny_text_file, method, stage),
                                ClusterConfig(num_workers=2, cpus_per_worker=1, use_gpu=False),
                                out_dir, root / "ray")
            runs[key] = (summary, out_dir)
        return runs[key]

    return get


def text_loss(model, model_dir: Path) -> float:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(TINY_TEXT[:5], return_tensors="pt",
                                                    padding=True)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    with torch.no_grad():
        return float(model.eval()(**ids, labels=labels).loss)


# Under ZeRO-3, where the adapters' weights are partitioned, every method; under ZeRO-2 the
# two the tests below read too (DoRA and IA3 under ZeRO-2 are heavy).
@pytest.mark.parametrize(("method", "stage"), [
    *((m, 3) for m in METHODS),
    *((m, 2) if m in ("prompt_tuning", "prefix_tuning")
      else pytest.param(m, 2, marks=pytest.mark.heavy) for m in METHODS)])
def test_method_trains_exports_and_reloads_with_peft(method, stage, trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    summary, out = trained(method, stage)
    assert summary.method == method
    assert 0 < summary.trainable_parameters < summary.parameters / 10
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_loss = text_loss(base, tiny_model_dir)
    adapted = PeftModel.from_pretrained(base, out / ADAPTER_DIR)
    assert text_loss(adapted, tiny_model_dir) < base_loss - 0.02
    checks = {c.what for c in summary.export_check}
    assert checks == ({"adapter", "model"} if MERGES[method] else {"adapter"})
    assert (out / "config.json").is_file() == MERGES[method]
    if MERGES[method]:
        merged = AutoModelForCausalLM.from_pretrained(out)
        assert text_loss(merged, tiny_model_dir) == pytest.approx(
            text_loss(PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / ADAPTER_DIR),
                tiny_model_dir), abs=1e-4)


def test_zero2_and_zero3_train_the_same_prompt(trained):
    z2, z3 = trained("prompt_tuning", 2)[0], trained("prompt_tuning", 3)[0]
    assert z3.final_train_loss == pytest.approx(z2.final_train_loss, rel=1e-3)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_an_unmerged_adapter_is_scored_as_base_plus_adapter(method, trained, tiny_model_dir):
    """lm-eval's log-likelihood of a continuation through ``load_model`` equals the sum
    computed by hand from the adapted model's own forward."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunearena.evaluation.context import model_max_length
    from tunearena.evaluation.harness import load_model
    from tunearena.training.adapters import AdapterBase, record_base

    _, out = trained(method, 2)
    record_base(out / ADAPTER_DIR, out.name,
                AdapterBase(stage=None, path=str(tiny_model_dir), weights_sha256=None),
                merged=False)
    model, tokenizer = load_model(out)
    assert model_max_length(out) == model_max_length(tiny_model_dir) - 4
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    context, continuation = "The capital of Norland is", " Velmo."
    [(scored, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation),
                                               0)])

    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / ADAPTER_DIR).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([whole])).logits[0, -len(whole):]
    logp = torch.log_softmax(logits.float(), -1)
    by_hand = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
    assert scored == pytest.approx(by_hand, abs=1e-4)
    # Greedy generation through lm-eval's path equals step-by-step decoding of the forward.
    prompt = torch.tensor([tok("Question: What is the capital of Norland?\nAnswer:")["input_ids"]])
    generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                               max_new_tokens=4, do_sample=False, use_cache=True,
                               eos_token_id=None, pad_token_id=0)[0, prompt.shape[1]:]
    ids = prompt
    for _ in range(4):
        with torch.no_grad():
            step = reference(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, step], dim=1)
    assert generated.tolist() == ids[0, prompt.shape[1]:].tolist()
    assert json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())["peft_type"] \
        == method.upper()
