"""model.chat_template: one switch for training and evaluation, resolved at the input check;
instruction records rendered as evaluation renders the same question; the report's line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from test_eval_report import BENCHMARKS, SAMPLES
from transformers import AutoTokenizer

from tunearena.configbase import ConfigError
from tunearena.evaluation.config import EvaluationConfig, ReportConfig
from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt, model_input
from tunearena.evaluation.report import html_report, markdown_report, summarise
from tunearena.evaluation.results import parse_results
from tunearena.launch.cli import main
from tunearena.launch.config import load_config
from tunearena.launch.inputs import check_inputs
from tunearena.training.data import (
    IGNORE_INDEX,
    DataError,
    TaskRecords,
    check_tokenizer,
    tokenize_record,
    tokenize_tasks,
)
from tunearena.training.formats import ChatTemplateError, resolve_chat_template, tokenize_chat

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
RECORD = {"prompt": format_prompt("What is the capital of Norland?"), "response": " Velmo"}
"""An instruction record as the demo world writes them: the prompt, then " " and the answer."""


@pytest.fixture(scope="module")
def plain_tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def chat_tok(tiny_chat_model_dir):
    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


# --- the switch ----------------------------------------------------------------------------


def test_auto_follows_the_tokenizer_and_on_or_off_are_kept(plain_tok, chat_tok):
    assert resolve_chat_template("auto", chat_tok, "m") is True
    assert resolve_chat_template("auto", plain_tok, "m") is False
    assert resolve_chat_template(True, chat_tok, "m") is True
    assert resolve_chat_template(False, chat_tok, "m") is False
    assert resolve_chat_template(False, plain_tok, "m") is False
    with pytest.raises(ChatTemplateError) as e:
        resolve_chat_template(True, plain_tok, "/models/base")
    message = str(e.value)
    assert "model.chat_template is true" in message and "/models/base" in message
    assert "auto or false" in message and "tokenizer_config.json" in message


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("on", True), ("true", True),
                                               ("off", False), ("false", False),
                                               ('"off"', False), ('"on"', True)])
def test_the_switch_reads_yaml_booleans(value, parsed):
    assert load_config(DEMO, [f"model.chat_template={value}"]).model.chat_template == parsed


def test_a_wrong_switch_value_names_the_field():
    with pytest.raises(ConfigError, match=r"model\.chat_template"):
        load_config(DEMO, ["model.chat_template=sometimes"])


def test_the_input_check_resolves_the_switch_once_for_the_run(tiny_model_dir, tiny_chat_model_dir):
    # The demo's own base has no template: auto keeps today's plain prompts.
    demo = load_config(DEMO)
    check_inputs(demo)
    assert demo.model.chat_template is False
    chat = load_config(DEMO, [f"model.base={tiny_chat_model_dir}"])
    check_inputs(chat)
    assert chat.model.chat_template is True
    off = load_config(DEMO, [f"model.base={tiny_chat_model_dir}", "model.chat_template=off"])
    check_inputs(off)
    assert off.model.chat_template is False


def test_on_without_a_template_stops_the_run_before_any_cluster_resource(
        tmp_path, tiny_model_dir, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    code = main(["demo", "--set", f"runs_dir={runs}", "--set", f"model.base={tiny_model_dir}",
                 "--set", "model.chat_template=on"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.chat_template is true" in err and str(tiny_model_dir) in err
    assert "Traceback" not in err
    assert not ray.is_initialized()
    assert not any(runs.iterdir())


# --- what the model reads ------------------------------------------------------------------


def test_model_input_is_the_prompt_or_one_user_message_with_the_reply_opened(chat_tok):
    prompt = format_prompt("Q?", ["p"])
    assert model_input(prompt, chat_tok, chat_template=False) == (prompt, ANSWER_DELIMITER)
    assert model_input(prompt, chat_tok, chat_template=True) == (
        f"<s>user\n{prompt}</s>\n<s>assistant\n", "")


# --- training records ----------------------------------------------------------------------


def test_instruction_record_through_the_template_trains_on_the_reply_only(chat_tok):
    ids, labels = tokenize_record(RECORD, "instruction", chat_tok, chat_template=True)
    conversation = [{"role": "user", "content": RECORD["prompt"]},
                    {"role": "assistant", "content": "Velmo"}]
    assert (ids, labels) == tokenize_chat(conversation, chat_tok)
    assert chat_tok.decode(ids) == f"<s>user\n{RECORD['prompt']}</s>\n<s>assistant\nVelmo</s>\n"
    # Loss on the reply and the template's end of turn; nothing before it carries any.
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label != IGNORE_INDEX for label in labels[first:])
    assert chat_tok.decode(ids[first:]) == "Velmo</s>\n"
    assert labels[first:] == ids[first:]
    # What comes before the reply is what evaluation feeds the model for this question,
    # token for token, and the reply is the choice scored right after it.
    context, delimiter = model_input(RECORD["prompt"], chat_tok, chat_template=True)
    assert ids[:first] == chat_tok(context, add_special_tokens=False)["input_ids"]
    assert chat_tok.decode(ids[first:]).startswith(delimiter + "Velmo")


def test_without_the_template_records_stay_plain(chat_tok):
    plain = tokenize_record(RECORD, "instruction", chat_tok)
    assert chat_tok.decode(plain[0]) == RECORD["prompt"] + " Velmo</s>"
    text = {"text": "The capital of Norland is Velmo."}
    # Text records never go through the template, whatever the switch says.
    assert (tokenize_record(text, "text", chat_tok, chat_template=True)
            == tokenize_record(text, "text", chat_tok))


def test_stage_tokenisation_renders_instruction_tasks_through_the_template(chat_tok, plain_tok):
    task = TaskRecords("qa", "instruction", [RECORD] * 4, [])
    train, _ = tokenize_tasks([task], chat_tok, 128, packing=False, chat_template=True)
    row = train.input_ids[0][train.attention_mask[0] == 1].tolist()
    assert row == tokenize_record(RECORD, "instruction", chat_tok, chat_template=True)[0]
    with pytest.raises(DataError, match="task qa: format 'instruction'.*no chat template"):
        tokenize_tasks([task], plain_tok, 64, packing=False, chat_template=True)


def test_a_stage_of_a_chat_run_loads_its_instruction_records_through_the_template(
        tmp_path, tiny_chat_model_dir, chat_tok):
    from tunearena.training.config import DatasetConfig, TrainingConfig, resolve_stages
    from tunearena.training.stages import load_stage, prepare_stage

    records = [{"prompt": format_prompt(f"What is the capital of land {i}?"),
                "response": f" City {i}"} for i in range(6)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    training = TrainingConfig(datasets=[DatasetConfig(path=path, format="instruction")],
                              seq_len=128, packing=False, validation_fraction=0.0)
    (stage,) = stages = resolve_stages(training, [])
    prepare_stage(stage, {}, tmp_path / "data", chat_tok, chat_template=True)
    loaded = load_stage(stage, stages, str(tiny_chat_model_dir), tmp_path, chat_template=True)
    assert loaded.chat_template
    train = loaded.data[0]
    rows = sorted(chat_tok.decode(ids[mask == 1].tolist())
                  for ids, mask in zip(train.input_ids, train.attention_mask, strict=True))
    assert rows == sorted(f"<s>user\n{r['prompt']}</s>\n<s>assistant\n{r['response'][1:]}</s>\n"
                          for r in records)


def test_tokenizer_check_covers_instruction_records_through_the_template(chat_tok, plain_tok):
    assert check_tokenizer(chat_tok, {"instruction"}, set(), chat_template=True).ok
    assert "chat reply ends on a stop token" in check_tokenizer(
        chat_tok, {"instruction"}, set(), chat_template=True).detail
    assert "chat reply" not in check_tokenizer(chat_tok, {"instruction"}, set()).detail
    missing = check_tokenizer(plain_tok, {"instruction"}, set(), chat_template=True)
    assert not missing.ok and "the tokenizer has no chat template" in missing.detail


# --- results and report --------------------------------------------------------------------


def _results(run: dict) -> dict:
    evaluation = EvaluationConfig(benchmarks=BENCHMARKS, bootstrap_samples=200)
    return summarise(SAMPLES, BENCHMARKS, evaluation, ReportConfig(), {"run": run}).to_json()


def test_the_report_says_in_one_line_how_arms_were_prompted():
    chat = _results({"name": "r", "base_model": "/models/SmolLM2-135M-Instruct",
                     "prompt_format": "chat_template"})
    assert chat["run"]["prompt_format"] == "chat_template"
    line = ("Prompts: the chat template of /models/SmolLM2-135M-Instruct, the same for every "
            "arm: each question, with its examples or retrieved passages, is one user message, "
            "and the answer follows the assistant's header.")
    md = markdown_report(parse_results(chat))
    assert f"## Scores\n\n{line}\n" in md
    assert line.replace("'", "&#39;") in html_report(parse_results(chat))
    plain = _results({"name": "r", "prompt_format": "plain"})
    assert "no chat template" in markdown_report(parse_results(plain))


def test_a_gguf_base_is_named_by_its_file():
    source = {"source": "/pkgs/SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": "0" * 64,
              "size_bytes": 1, "architecture": "llama", "quantization": "Q4_1",
              "tensor_types": {}, "transformers_version": "5", "converted_at": "now"}
    results = _results({"base_model": "/cache/gguf/0000", "base_model_source": source,
                        "prompt_format": "chat_template"})
    assert "the chat template of SmolLM2-135M-Instruct.Q4_1.gguf," in markdown_report(
        parse_results(results))


def test_results_written_before_the_field_load_as_plain_prompts():
    old = _results({"name": "r", "code_version": "0.1"})
    old["schema_version"] = 2
    assert "prompt_format" not in old["run"]
    parsed = parse_results(json.loads(json.dumps(old)))
    assert parsed.run is not None and parsed.run.prompt_format == "plain"
    assert "no chat template" in markdown_report(parsed)
    assert parsed.to_json()["run"] == old["run"]  # loading adds nothing to the file


# --- the real instruct tokenizer -----------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tok():
    """SmolLM2-135M-Instruct's tokenizer, read from the packaged GGUF (no weights converted)."""
    from tunearena.training.gguf import GGUFError, gguf_path

    try:
        path = gguf_path("smollm2-135m-instruct")
    except GGUFError as e:
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.slow
def test_smollm2_tokenizer_passes_the_round_trip_and_renders_what_evaluation_reads(smollm2_tok):
    tok = smollm2_tok
    assert resolve_chat_template("auto", tok, "smollm2") is True
    check = check_tokenizer(tok, {"text", "instruction", "chat"}, set(), chat_template=True)
    assert check.ok, check
    assert check.detail == ("EOS '<|im_end|>' (id 2) round-trips; a chat reply ends on a stop "
                            "token")
    ids, labels = tokenize_record(RECORD, "instruction", tok, chat_template=True)
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    context, delimiter = model_input(RECORD["prompt"], tok, chat_template=True)
    assert delimiter == "" and context.endswith(
        f"<|im_start|>user\n{RECORD['prompt']}<|im_end|>\n<|im_start|>assistant\n")
    assert ids[:first] == tok(context, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[first:]) == "Velmo<|im_end|>\n"
