"""QLoRA is refused, with the reason and the fix, before any worker starts."""

import importlib.machinery
import sys
import types

import pytest
from pydantic import ValidationError

from tunearena.errors import UserError
from tunearena.training.config import TrainingConfig
from tunearena.training.trainer import MethodUnavailable, check_method


def config(**overrides) -> TrainingConfig:
    return TrainingConfig(datasets=[{"path": "train.jsonl"}], **overrides)


@pytest.fixture
def bitsandbytes_missing(monkeypatch):
    # A None entry in sys.modules makes find_spec report the package as absent.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)


@pytest.fixture
def bitsandbytes_present(monkeypatch):
    # Stands in for an installed package: check_method only asks whether it can be imported.
    module = types.ModuleType("bitsandbytes")
    module.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes", module)


def test_other_methods_pass_on_cpu(bitsandbytes_missing):
    for method in ("full", "lora"):
        check_method(config(method=method), use_gpu=False)


def test_qlora_on_cpu_workers_is_refused_with_lora_as_the_fix(bitsandbytes_present):
    with pytest.raises(MethodUnavailable, match=r"qlora needs GPU workers.*use method lora"):
        check_method(config(method="qlora"), use_gpu=False)


def test_qlora_without_bitsandbytes_says_what_to_install(bitsandbytes_missing):
    with pytest.raises(MethodUnavailable, match=r"needs bitsandbytes: pip install bitsandbytes"):
        check_method(config(method="qlora"), use_gpu=True)


def test_qlora_under_zero3_is_refused_by_the_config(bitsandbytes_present):
    # The config itself refuses it, so `tunearena check` says so before anything starts.
    with pytest.raises(ValidationError, match=r"method qlora runs with zero_stage 0-2: ZeRO-3 "
                                              "cannot partition 4-bit weights"):
        config(method="qlora", zero_stage=3)
    check_method(config(method="qlora", zero_stage=2), use_gpu=True)


def test_a_refusal_is_a_user_error():
    # The CLI prints a UserError's message and exits 2, without a traceback.
    assert issubclass(MethodUnavailable, UserError)
