"""What ``tunearena serve`` checks before Ray starts, and the OpenAI requests it accepts: the
arms a run can serve, the serve settings, the request fields, and stop strings."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import yaml
from serve_runs import make_run

from tunearena.configbase import ConfigError
from tunearena.errors import UserError
from tunearena.launch.serving import serve_config
from tunearena.serve.arms import ServeError, served_arms
from tunearena.serve.config import ServeConfig
from tunearena.serve.deploy import (
    api_key_digest,
    check_port,
    deployment_name,
    replica_resources,
)
from tunearena.serve.engine import cut_at_stop, held_back
from tunearena.serve.protocol import ApiError, ChatRequest, CompletionRequest, parse_request


def test_the_default_arm_is_the_verdicts_and_rag_arms_read_the_runs_index(
        tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir)
    (arm,) = served_arms(run)
    assert arm.name == "base+rag"  # retrieval won: 30 of 40 against 2 of 40
    assert arm.index_dir == str(run / "index") and arm.top_k == 3
    assert arm.model_dir == str(tiny_model_dir)
    assert arm.max_tokens == 32 and arm.stop == ("\n",)  # as the generative track scored
    ft = served_arms(run, ["ft@qa", "base"])
    assert [a.name for a in ft] == ["ft@qa", "base"]
    assert ft[0].model_dir == str(run / "models" / "qa") and not ft[0].rag


def test_a_rag_arm_needs_the_k_it_was_scored_with(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir)
    results = json.loads((run / "results.json").read_text())
    del results["retrieval"]
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(ServeError, match="no single retrieval k"):
        served_arms(run, ["base+rag"])
    assert served_arms(run, ["base"])[0].top_k == 0  # no passages, no k needed


def test_neither_serves_the_base_model(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir, base_right=20, rag_right=20)
    (arm,) = served_arms(run)
    assert arm.name == "base" and not arm.rag


@pytest.mark.parametrize("arms, says", [
    (["ft+rag"], "was not scored by this run"),
    (["base+fewshot"], "is not served"),
    (["gpt"], "the model part must be base, ft or ft@<stage>"),
])
def test_arms_that_cannot_be_served_are_refused_naming_why(tmp_path, tiny_model_dir, arms,
                                                          says):
    with pytest.raises(ServeError, match=says.replace("+", r"\+")):
        served_arms(make_run(tmp_path, tiny_model_dir), arms)


def test_missing_weights_index_or_results_are_named(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir, with_index=False)
    with pytest.raises(ServeError, match="index .* is not there"):
        served_arms(run, ["base+rag"])
    with pytest.raises(ServeError, match="holds no adapter"):
        served_arms(run, ["ft@qa"], lora="adapter")
    (run / "models" / "qa" / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(UserError, match="model.safetensors"):  # before any replica loads it
        served_arms(run, ["ft@qa"])
    shutil.rmtree(run / "models" / "qa")
    with pytest.raises(ServeError, match=r"models/qa is not there"):
        served_arms(run, ["ft@qa"])
    with pytest.raises(ServeError, match="no such run directory"):
        served_arms(tmp_path / "nowhere")
    (run / "results.json").unlink()
    with pytest.raises(UserError, match="results not found"):
        served_arms(run)


def test_serve_settings_come_from_the_run_config_and_set(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir)
    assert serve_config(run) == ServeConfig()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["serve"] = {"port": 9000, "replicas": 2}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = serve_config(run, ["serve.max_tokens=64", 'serve.arms=["ft@qa", "base"]'])
    assert (cfg.port, cfg.replicas, cfg.max_tokens, cfg.arms) == (9000, 2, 64, ["ft@qa", "base"])
    with pytest.raises(ConfigError, match="--set serve.port=0: serve: port"):
        serve_config(run, ["serve.port=0"])
    with pytest.raises(ConfigError, match="serve.KEY=VALUE only"):
        serve_config(run, ["training.lr=1"])
    with pytest.raises(ConfigError, match="unknown key 'replica'; did you mean 'replicas'"):
        serve_config(run, ["serve.replica=2"])


def test_resources_key_and_port_are_checked_before_anything_starts(monkeypatch):
    cfg = ServeConfig()
    # On the embedded Ray, the machine's CPUs are shared among the replicas.
    assert replica_resources(cfg, 4, {"CPU": 2.0}, local=True) == (0.5, 0.0)
    assert replica_resources(cfg, 1, {"CPU": 8.0, "GPU": 2.0}, local=False) == (1.0, 1.0)
    with pytest.raises(ServeError, match="need 6 CPUs; the cluster has 2"):
        replica_resources(ServeConfig(replicas=3), 2, {"CPU": 2.0}, local=False)
    with pytest.raises(ServeError, match="serve.gpus_per_replica"):
        replica_resources(ServeConfig(gpus_per_replica=1), 1, {"CPU": 2.0}, local=True)
    monkeypatch.delenv("TUNEARENA_TEST_KEY", raising=False)
    with pytest.raises(ServeError, match="export TUNEARENA_TEST_KEY="):
        api_key_digest(ServeConfig(api_key_env="TUNEARENA_TEST_KEY"))
    monkeypatch.setenv("TUNEARENA_TEST_KEY", "sesame")
    assert len(api_key_digest(ServeConfig(api_key_env="TUNEARENA_TEST_KEY")) or "") == 64
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(ServeError, match="cannot listen on 127.0.0.1"):
            check_port("127.0.0.1", held.getsockname()[1])
    assert deployment_name("ft@qa+rag") == "arm-ft-at-qa-rag"


def chat(**fields) -> ChatRequest:
    return parse_request(ChatRequest, {"model": "ft", **fields})


def test_a_conversation_becomes_solved_examples_before_the_question():
    req = chat(messages=[{"role": "user", "content": "Q1"}, {"role": "assistant",
                                                             "content": "A1"},
                         {"role": "user", "content": [{"type": "text", "text": "Q2"}]}])
    assert req.turns() == ("Q2", [("Q1", "A1")])
    for messages, says in (
            ([{"role": "system", "content": "be nice"}, {"role": "user", "content": "Q"}],
             "refused rather than ignored"),
            ([{"role": "user", "content": "Q"}, {"role": "user", "content": "Q"}],
             "must alternate"),
            ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
             "ending with user")):
        with pytest.raises(ApiError, match=says) as e:
            chat(messages=messages).turns()
        assert e.value.status == 400 and e.value.param == "messages"


def test_unset_length_and_stop_are_the_scored_ones_and_limits_hold():
    messages = [{"role": "user", "content": "Q"}]
    sampling = chat(messages=messages).sampling(32, ("\n",), 512)
    assert (sampling.max_tokens, sampling.stop, sampling.temperature) == (32, ("\n",), 0.0)
    sampling = chat(messages=messages, max_completion_tokens=7, stop="END").sampling(
        32, ("\n",), 512)
    assert (sampling.max_tokens, sampling.stop) == (7, ("END",))
    with pytest.raises(ApiError, match="at most 512 .serve.max_tokens.") as e:
        chat(messages=messages, max_tokens=513).sampling(32, ("\n",), 512)
    assert e.value.param == "max_tokens"
    assert parse_request(CompletionRequest, {"model": "ft", "prompt": ["a", "b"]}).prompts == [
        "a", "b"]


@pytest.mark.parametrize("body, param, says", [
    ({"messages": [{"role": "user", "content": "Q"}], "logit_bias": {}}, "logit_bias",
     "is not a field this server accepts"),
    ({"messages": [{"role": "user", "content": "Q"}], "n": 2}, "n", "input should be 1"),
    ({}, "messages", "field required"),
    ({"messages": [{"role": "user", "content": "Q"}], "stop": ["a"] * 5}, "stop", "at most 4"),
    ({"messages": [{"role": "tool", "content": "Q"}]}, "messages.0.role", "input should be"),
])
def test_wrong_fields_are_400_naming_the_field(body, param, says):
    with pytest.raises(ApiError, match=says) as e:
        chat(**body)
    assert (e.value.status, e.value.param) == (400, param)
    assert e.value.body()["error"]["type"] == "invalid_request_error"


def test_an_answer_ends_before_its_first_stop_string_and_streams_hold_back_its_start():
    assert cut_at_stop(" Paris\nQuestion:", ["\n"]) == (" Paris", True)
    assert cut_at_stop(" Paris END x\n", ["\n", "END"]) == (" Paris ", True)
    assert cut_at_stop(" Paris", ["\n"]) == (" Paris", False)
    assert held_back(" Paris EN", ["END"]) == 2  # may become END: wait for the next piece
    assert held_back(" Paris E", ["END", "\n"]) == 1
    assert held_back(" Paris", ["END"]) == 0
