"""``tunearena serve`` on a shrunk demo run, used through the official ``openai`` client as a
team would: the models listed, chat and text completions whole and streamed, every arm's
answers equal to those its report scored, each error in OpenAI's format, a replica killed
mid-answer, the request log, and Ctrl-C leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import psutil
import pytest
import requests
import yaml

from tunearena.launch.cli import main

pytestmark = pytest.mark.slow

WORLD = Path(__file__).resolve().parents[2] / "examples" / "demo_world"
ARMS = ["base", "ft", "base+rag", "ft+rag"]
KEY_ENV, KEY = "TUNEARENA_SERVE_TEST_KEY", "sesame-open"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The demo shrunk to a minute: one short stage, the index, 24 questions answered in the
    models' own words (the generative track) by base, base+rag, ft and ft+rag."""
    runs = tmp_path_factory.mktemp("runs")
    config = {
        "name": "served", "runs_dir": str(runs),
        "model": {"base": str(WORLD / "base_model")},
        "cluster": {"address": "local", "num_workers": 1, "cpus_per_worker": 1},
        "training": {"seq_len": 256, "micro_batch_size": 8, "lr": 2e-3, "warmup_steps": 2,
                     "eval_every_steps": 100, "checkpoint_every_steps": 100},
        "stages": [{"name": "qa", "max_steps": 20, "datasets": [
            {"path": str(WORLD / "domain" / "qa_train.jsonl"), "format": "instruction"}]}],
        "rag": {"corpus": str(WORLD / "domain" / "documents.jsonl"), "top_k": 2},
        "evaluation": {"arms": ARMS, "limit": 24, "probe": False, "latency_questions": 2,
                       "bootstrap_samples": 200, "benchmarks": [
                           {"name": "answers", "path": str(WORLD / "domain" / "qa_test.jsonl"),
                            "kind": "domain", "track": "generative"}]},
    }
    path = runs / "served.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["run", str(path)]) == 0
    return runs / "served"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run_dir: Path, tmp: Path):
        self.port, self.log = free_port(), tmp / "requests.jsonl"
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = tmp / "serve.out"
        env = {**os.environ, KEY_ENV: KEY}
        arms = [a for arm in ARMS for a in ("--arm", arm)]
        with self.output.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunearena.launch.cli", "serve", str(run_dir), *arms,
                 "--port", str(self.port), "--api-key-env", KEY_ENV,
                 "--log-requests", str(self.log)], stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited:\n{self.output.read_text()}"
            if "serving at" in self.output.read_text():
                return
            time.sleep(1)
        raise AssertionError(f"serve not ready in {timeout_s} s:\n{self.output.read_text()}")

    def client(self, key: str = KEY, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kwargs)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    srv = Server(run_dir, tmp_path_factory.mktemp("serve"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGINT)
            srv.proc.wait(120)


@pytest.fixture(scope="module")
def scored(run_dir) -> dict:
    """Per arm, each question's text and the answer the run scored for it."""
    questions = {}
    for line in (WORLD / "domain" / "qa_test.jsonl").read_text().splitlines():
        row = json.loads(line)
        questions[row["id"]] = row["question"]
    samples = json.loads((run_dir / "results.json").read_text())["samples"]
    return {arm: [(questions[s["id"]], s["prediction"]) for s in samples[arm]["answers"]]
            for arm in ARMS}


def ask(client: openai.OpenAI, model: str, question: str, **kwargs):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], **kwargs)


def test_models_chat_and_a_streamed_chat(server, scored):
    client = server.client()
    assert [m.id for m in client.models.list()] == ARMS
    question, _ = scored["ft+rag"][0]
    reply = ask(client, "ft+rag", question)
    assert reply.model == "ft+rag" and reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.prompt_tokens > 50 and usage.completion_tokens > 0  # passages in the prompt
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(reply.model_extra["documents"]) == 2  # the run's top_k
    stream = ask(client, "ft+rag", question, stream=True,
                 stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens


def test_every_arm_answers_as_its_report_scored_it(server, scored):
    """At temperature 0 the served answer to each benchmark question is the prediction
    ``results.json`` holds for that arm: the same weights, passages, prompt and decoding."""
    client = server.client()
    for arm in ARMS:
        questions = [q for q, _ in scored[arm]]
        reply = client.completions.create(model=arm, prompt=questions, temperature=0)
        served = [c.text for c in sorted(reply.choices, key=lambda c: c.index)]
        assert served == [p for _, p in scored[arm]], arm
        question, prediction = scored[arm][0]
        assert ask(client, arm, question).choices[0].message.content == prediction.strip()


def error_of(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as e:
        call()
    return e.value


def test_errors_in_openais_format(server):
    client = server.client()
    e = error_of(lambda: ask(client, "gpt-4", "hello"))
    assert e.status_code == 404 and e.body["code"] == "model_not_found"
    assert "ft+rag" in e.body["message"]
    e = error_of(lambda: ask(client, "ft", "word " * 600))
    assert e.status_code == 400 and e.body["code"] == "context_length_exceeded"
    assert "512 tokens" in e.body["message"] and "tokens too many" in e.body["message"]
    e = error_of(lambda: ask(server.client("wrong-key"), "ft", "hello"))
    assert e.status_code == 401 and e.body["code"] == "invalid_api_key"
    auth = {"Authorization": f"Bearer {KEY}"}
    for body, status, says in ((b"{not json", 400, "not valid JSON"),
                               (b'{"model": "ft"}', 400, "messages: field required"),
                               (b" " * 1_100_000, 413, "serve.max_request_bytes")):
        r = requests.post(f"{server.url}/v1/chat/completions", data=body, headers=auth,
                          timeout=30)
        assert r.status_code == status and says in r.json()["error"]["message"], r.text
    r = requests.get(f"{server.url}/v1/models", timeout=30)
    assert r.status_code == 401 and "no API key given" in r.json()["error"]["message"]


def test_figures_and_the_request_log(server, scored):
    figures = requests.get(f"{server.url}/stats", timeout=30).json()
    assert set(figures) == set(ARMS)
    assert figures["ft"]["requests"] >= 3 and figures["ft"]["errors"] >= 1
    assert figures["ft+rag"]["latency_p50_ms"] > 0 and figures["ft+rag"]["completion_tokens"] > 0
    logged = [json.loads(line) for line in server.log.read_text().splitlines()]
    rag = [row for row in logged if row["model"] == "ft+rag"]
    assert rag and rag[0]["question"] == scored["ft+rag"][0][0]
    assert len(rag[0]["documents"]) == 2 and rag[0]["answer"]
    assert sum(row["model"] == "base" for row in logged) >= len(scored["base"])
    # The same counts reach Ray's Prometheus endpoint, every few seconds.
    metrics = re.search(r"metrics \(Prometheus, with Ray's\): (\S+)", server.output.read_text())
    assert metrics, server.output.read_text()
    deadline = time.monotonic() + 60
    while True:
        text = requests.get(metrics.group(1), timeout=30).text
        served = [line for line in text.splitlines() if line.startswith(
            "ray_tunearena_requests_total{") and 'model="ft+rag"' in line]
        if served or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert served and float(served[0].rsplit(" ", 1)[1]) >= 1
    assert "ray_tunearena_request_latency_ms_bucket{" in text


@pytest.mark.heavy
def test_a_replica_killed_mid_answer_fails_fast_and_comes_back(server, scored):
    client = server.client()
    question, _ = scored["ft"][0]
    replica = next(p for p in psutil.Process(server.proc.pid).children(recursive=True)
                   if "ServeReplica:tunearena:arm-ft" in " ".join(p.cmdline())
                   and "rag" not in " ".join(p.cmdline()))
    # Hundreds of long prompts in one request keep the replica busy for seconds.
    prompts = [f"{'lamp ' * 120}{q}" for q in [q for q, _ in scored["ft"]] * 20]
    outcome: dict = {}

    def many_answers() -> None:
        try:
            client.completions.create(model="ft", prompt=prompts)
            outcome["ended"] = "answered"
        except openai.APIStatusError as e:
            outcome["ended"] = e

    asking = threading.Thread(target=many_answers)
    asking.start()
    time.sleep(1.0)
    assert "ended" not in outcome, "answered too fast to kill the replica mid-answer"
    replica.kill()
    killed = time.monotonic()
    asking.join(60)
    assert not asking.is_alive(), "the request hung after its replica died"
    error = outcome["ended"]
    assert isinstance(error, openai.APIStatusError), error
    assert error.status_code == 503 and error.body["code"] == "replica_failed"
    assert time.monotonic() - killed < 30
    deadline = time.monotonic() + 180
    while True:  # Ray Serve starts a new replica; requests succeed again
        try:
            assert ask(client, "ft", question).choices[0].finish_reason == "stop"
            break
        except openai.APIStatusError:
            assert time.monotonic() < deadline, "the replica did not come back"
            time.sleep(2)


def test_ctrl_c_stops_cleanly_leaving_no_process(server):
    """Last in the module: the server is stopped."""
    ours = psutil.Process(server.proc.pid).children(recursive=True)
    assert any("raylet" in p.name() for p in ours)  # an embedded Ray of its own
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(120) == 0, server.output.read_text()
    _, alive = psutil.wait_procs(ours, timeout=30)
    assert not alive, [p.pid for p in alive]
    said = server.output.read_text()
    assert "stopping" in said and "ft+rag:" in said  # the per-arm figures at the end
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=5)
