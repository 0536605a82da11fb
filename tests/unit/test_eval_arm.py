"""The Arm value: parsed once from its string, printed back the same, resolved to a model."""

from pathlib import Path

import pytest

from tunearena.evaluation.arm import Arm


@pytest.mark.parametrize("text", ["base", "base+rag", "base+fewshot", "ft", "ft+rag",
                                  "ft@qa", "ft@qa_replay+rag", "ft@docs+fewshot"])
def test_parse_then_print_gives_the_same_string(text):
    assert str(Arm.parse(text)) == text


def test_parts_are_named():
    arm = Arm.parse("ft@qa+rag")
    assert (arm.model, arm.stage, arm.context) == ("ft", "qa", "rag")
    assert arm.model_name == "ft@qa" and arm.is_finetuned
    assert Arm.parse("base+rag").model_name == "base" and not Arm.parse("base").is_finetuned


@pytest.mark.parametrize("text", ["", "tuned", "base@qa", "ft@", "ft+retrieval", "base+rag+rag"])
def test_malformed_arms_are_refused_naming_them(text):
    with pytest.raises(ValueError, match="arm"):
        Arm.parse(text)


def test_at_stage_keeps_the_context_and_leaves_base_alone():
    assert Arm.parse("ft+rag").at_stage("qa") == Arm.parse("ft@qa+rag")
    assert Arm.parse("base+rag").at_stage("qa") == Arm.parse("base+rag")


def test_model_dir_is_the_base_or_the_stage_export(tmp_path):
    models = tmp_path / "models"
    assert Arm.parse("base+rag").model_dir("org/base", models, None) == Path("org/base")
    assert Arm.parse("ft@docs").model_dir("b", models, "qa") == models / "docs"
    assert Arm.parse("ft+rag").model_dir("b", models, "qa") == models / "qa"
    with pytest.raises(ValueError, match="no stage is selected"):
        Arm.parse("ft").model_dir("b", models, None)
