"""A small OpenAI-compatible chat-completions server around a local model, for tests that
point synthesis at an endpoint: ``GET /v1/models`` and ``POST /v1/chat/completions``, in a
thread of the test process. Every request's messages are recorded, and a test can hold
requests (``gate``) or make the model talk nonsense (``garbage``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    url: str
    requests: list[list[dict]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    """Requests wait until it is set; it starts set."""
    hold_if: Callable[[list[dict]], bool] = lambda messages: False
    """Which requests wait for ``gate``."""
    garbage: bool = False


@contextmanager
def openai_server(reply: Callable[[list[dict], float, int], str],
                  model: str = "test-model") -> Iterator[Served]:
    """Serve ``reply(messages, temperature, max_tokens)`` at ``Served.url`` (``.../v1``)
    while the block runs; one request is answered at a time, as one model does."""
    lock = threading.Lock()
    served = Served(url="")
    served.gate.set()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": model, "object": "model", "owned_by": "test"}]})
            else:
                self._send(404, {"error": {"message": "not found", "type": "not_found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found", "type": "not_found"}})
                return
            if body.get("model") != model:
                self._send(404, {"error": {"message": f"model {body.get('model')} not found",
                                           "type": "not_found_error"}})
                return
            messages = body["messages"]
            if served.hold_if(messages):
                served.gate.wait()
            served.requests.append(messages)
            if served.garbage:
                text = "zq# !! ~~ lorem ~~ ipsum 0x00"
            else:
                with lock:
                    text = reply(messages, float(body.get("temperature") or 0.0),
                                 int(body.get("max_tokens") or 64))
            self._send(200, {
                "id": "cmpl-test", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield served
    finally:
        served.gate.set()
        server.shutdown()
        server.server_close()


def local_reply(model_dir: str) -> Callable[[list[dict], float, int], str]:
    """``reply`` for ``openai_server``: the model at ``model_dir``, through tunearena's own
    local generator (so the endpoint answers as in-process synthesis would)."""
    from tunearena.documents.config import GeneratorConfig
    from tunearena.documents.generator import LocalGenerator

    gen = LocalGenerator(model_dir, GeneratorConfig(model=model_dir, batch_size=1))

    def reply(messages: list[dict], temperature: float, max_tokens: int) -> str:
        return gen.chat([messages], temperature=temperature, max_tokens=max_tokens)[0]

    return reply
