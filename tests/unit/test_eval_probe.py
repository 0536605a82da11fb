"""The probe: a stage whose model answers exactly like the base stops the run before scoring."""

from __future__ import annotations

import shutil

import pytest
import torch

from tunearena.evaluation.probe import (
    FALLBACK_PROMPTS,
    ProbeError,
    check_probe,
    probe_prompts,
    probe_stages,
)
from tunearena.evaluation.report.view import probe_sentence
from tunearena.evaluation.results import parse_results

PROMPTS = ["Question: What is the capital of Norland?\nAnswer:", "The Zephyr lamp costs"]


def _perturbed(src, dst, scale: float):
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(dst)
    with torch.no_grad():
        model.lm_head.weight.add_(scale * torch.randn_like(model.lm_head.weight))
    model.save_pretrained(dst)
    return dst


def _untrained_adapter(base, dst):
    """A LoRA adapter as peft initialises it (B = 0): saved, but it changes nothing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(base).save_pretrained(dst)
    return dst


def test_a_copy_of_the_base_and_an_untrained_adapter_are_refused(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    adapter = _untrained_adapter(tiny_model_dir, tmp_path / "adapter")
    trained = _perturbed(tiny_model_dir, tmp_path / "trained", 0.05)
    dirs = {"copy": str(copy), "adapter": str(adapter), "trained": str(trained)}
    changes = probe_stages(str(tiny_model_dir), dirs, PROMPTS)
    assert changes["copy"] == 0.0
    assert changes["adapter"] <= 1e-6
    assert changes["trained"] > 1e-2
    with pytest.raises(ProbeError) as err:
        check_probe(changes, dirs)
    message = str(err.value)
    assert "2 fine-tuned stage(s)" in message
    assert str(copy) in message and str(adapter) in message and str(trained) not in message
    check_probe({"trained": changes["trained"]}, dirs)  # a stage that moved passes


def test_probe_prompts_come_from_the_tasks_then_the_fallback():
    rows = [[{"prompt": "a"}, {"prompt": "b"}], [{"prompt": "c"}]]
    assert probe_prompts(rows, n=2) == ["a", "b"]
    assert probe_prompts(rows, n=4) == ["a", "b", "c", FALLBACK_PROMPTS[0]]
    assert probe_prompts([], n=1) == [FALLBACK_PROMPTS[0]]


def test_results_keep_the_probe_and_the_report_says_it():
    results = parse_results({"schema_version": 2, "settings": {
        "confidence": 0.95, "bootstrap_samples": 10, "forgetting_tolerance": 0.05},
        "arms": [], "benchmarks": {},
        "probe": {"prompts": 8, "tolerance": 1e-4, "changes": {"docs": 2.5, "qa": 0.75}}})
    assert results.probe is not None and results.probe.changes == {"docs": 2.5, "qa": 0.75}
    assert probe_sentence(results.probe) == (
        "every fine-tuned stage answers differently from the base on 8 probe prompts "
        "(largest next-token log-probability change: docs 2.5, qa 0.75)")
