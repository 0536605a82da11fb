"""The training methods' table, their peft configs, and the refusals a config meets before any
worker starts."""

from __future__ import annotations

import pytest

from tunearena.training.config import StageConfig, TrainingConfig, resolve_stages
from tunearena.training.methods import METHODS, same_adapter
from tunearena.training.model import peft_config
from tunearena.training.trainer import MethodUnavailable, check_method

DATA = [{"path": "t.jsonl", "format": "instruction"}]
PAIRS = [{"path": "p.jsonl", "format": "preference"}]


def cfg(**settings) -> TrainingConfig:
    return TrainingConfig.model_validate({"datasets": DATA} | settings)


@pytest.mark.parametrize(("method", "peft_type", "merged"), [
    ("lora", "LORA", True), ("dora", "LORA", True), ("ia3", "IA3", True),
    ("prompt_tuning", "PROMPT_TUNING", False), ("prefix_tuning", "PREFIX_TUNING", False),
])
def test_each_adapter_method_has_its_peft_config(tiny_model_dir, method, peft_type, merged):
    training = cfg(method=method, virtual_tokens={"count": 7})
    config = peft_config(training, str(tiny_model_dir))
    assert config.peft_type.value == peft_type
    assert getattr(config, "use_dora", False) == (method == "dora")
    assert getattr(config, "num_virtual_tokens", 7) == 7
    assert training.exports_merged == merged == METHODS[method].merges


def test_prompt_tuning_can_start_from_text(tiny_model_dir):
    config = peft_config(cfg(method="prompt_tuning", virtual_tokens={"init_text": "Answer:"}),
                         str(tiny_model_dir))
    assert config.prompt_tuning_init.value == "TEXT"
    assert config.tokenizer_name_or_path == str(tiny_model_dir)


def test_lora_merge_false_exports_the_adapter_alone():
    assert not cfg(method="lora", lora={"merge": False}).exports_merged
    assert cfg(method="full").exports_merged and cfg(method="ia3").exports_merged


def test_qlora_under_zero3_is_refused_by_the_config_with_the_reason():
    with pytest.raises(ValueError, match="ZeRO-3 cannot partition 4-bit weights; set zero_stage 2"):
        cfg(method="qlora", zero_stage=3)
    check_method(cfg(method="prefix_tuning", zero_stage=3), use_gpu=False)  # runs
    with pytest.raises(MethodUnavailable, match="needs GPU workers"):
        check_method(cfg(method="qlora", zero_stage=2), use_gpu=False)


def test_continuing_an_adapter_needs_the_same_kind_of_adapter():
    assert same_adapter("lora", "qlora") and same_adapter("ia3", "ia3")
    assert not same_adapter("dora", "lora") and not same_adapter("prompt_tuning", "lora")


def test_ia3_targets_are_set_together():
    with pytest.raises(ValueError, match="set ia3.target_modules and ia3.feedforward_modules"):
        cfg(method="ia3", ia3={"target_modules": ["k_proj"]})
    with pytest.raises(ValueError, match=r"\['up_proj'\] are not in ia3.target_modules"):
        cfg(method="ia3", ia3={"target_modules": ["k_proj"], "feedforward_modules": ["up_proj"]})


def test_preference_kinds_take_preference_pairs_only():
    with pytest.raises(ValueError, match="a kind sft stage cannot learn from; set kind: dpo"):
        TrainingConfig.model_validate({"datasets": PAIRS})
    with pytest.raises(ValueError, match="datasets \\['t'\\] are not format preference"):
        cfg(kind="dpo")
    assert TrainingConfig.model_validate({"datasets": PAIRS, "kind": "simpo"}).kind == "simpo"


def test_preference_stages_and_replay_do_not_mix():
    training = TrainingConfig.model_validate({"datasets": DATA})
    dpo = StageConfig.model_validate({"name": "dpo", "kind": "dpo", "datasets": PAIRS})
    replaying = StageConfig.model_validate({"name": "after", "replay": {"fraction": 0.3}})
    with pytest.raises(ValueError, match=r"replay would mix in the preference pairs of stage\(s\) "
                                         r"\['dpo'\]"):
        resolve_stages(training, [dpo, replaying])
    dpo_replaying = StageConfig.model_validate(
        {"name": "dpo", "kind": "dpo", "datasets": PAIRS, "replay": {"fraction": 0.3}})
    with pytest.raises(ValueError, match="a kind dpo stage learns from preference pairs and "
                                         "cannot replay"):
        resolve_stages(training, [dpo_replaying])
