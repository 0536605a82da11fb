"""The Ray Serve application: one deployment per served arm, its replicas batching requests
through ``Engine``, and in front of them the router, an OpenAI-compatible FastAPI app that
checks each request (key, size, fields, model, limits), sends it to its arm and answers in
OpenAI's format, streamed or whole.

The router also keeps the monitoring: per arm, Ray Serve metrics (requests by status,
latency, tokens; exported with Ray's other metrics), running figures at ``GET /stats``, and
with ``serve.log_requests`` a JSONL line per answered question.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations
# (``request: Request``) at run time, through Ray Serve's wrapping of the class.
import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from ray import serve
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from tunearena.serve.arms import ServedArm
from tunearena.serve.engine import Answer, Engine, Sampling
from tunearena.serve.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_response,
    chunk,
    completion_response,
    model_not_found,
    new_id,
    parse_request,
    usage_chunk,
)

LATENCY_BUCKETS_MS = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                      10000.0, 30000.0, 120000.0]
_END = object()


class ArmReplica:
    """One replica of one arm: its ``Engine``, with requests batched by Ray Serve."""

    def __init__(self, arm: ServedArm, max_batch_size: int, batch_wait_s: float,
                 threads: int):
        import torch

        torch.set_num_threads(threads)  # the CPUs the replica reserved, not the machine's
        self.engine = Engine(arm)
        self._generate.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._generate.set_batch_wait_timeout_s(batch_wait_s)  # type: ignore[attr-defined]

    async def complete(self, question: str, history: list[tuple[str, str]],
                       sampling: Sampling) -> dict[str, Any]:
        """``{"answer", "documents"}``, or ``{"error"}`` when the prompt does not fit."""
        prompt = await asyncio.to_thread(self.engine.render, question, history)
        if error := self.engine.room_error(prompt, sampling.max_tokens):
            return {"error": error}
        answer = await self._generate((prompt, sampling))
        return {"answer": answer, "documents": list(prompt.documents)}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)  # set per deployment above
    async def _generate(self, jobs: list) -> list[Answer]:
        return await asyncio.to_thread(self.engine.generate, jobs)

    async def stream(self, question: str, history: list[tuple[str, str]],
                     sampling: Sampling) -> AsyncIterator[dict[str, Any]]:
        """``{"error"}``; or ``{"documents"}``, then ``{"delta"}`` pieces, then ``{"answer"}``.
        A caller that goes away stops the generation."""
        prompt = await asyncio.to_thread(self.engine.render, question, history)
        if error := self.engine.room_error(prompt, sampling.max_tokens):
            yield {"error": error}
            return
        yield {"documents": list(prompt.documents)}
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()  # type: ignore[var-annotated]
        cancelled = threading.Event()

        def produce() -> None:
            try:
                for item in self.engine.stream(prompt, sampling, cancelled):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as e:  # handed to the reader, which raises it
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        producer = loop.run_in_executor(None, produce)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield {"delta": item} if isinstance(item, str) else {"answer": item}
        finally:
            cancelled.set()
            await producer


@dataclass(frozen=True)
class RouterSettings:
    """What the router enforces; ``arms`` maps each model name to the ``(max_tokens,
    stop)`` a request gets when it names none."""

    arms: dict[str, tuple[int, tuple[str, ...]]]
    max_tokens: int
    max_request_bytes: int
    request_timeout_s: float
    key_sha256: str | None = None
    """The API key's SHA-256 (the key itself never leaves the driver)."""
    log_path: str | None = None


@dataclass
class _Figures:
    """One arm's running figures, for ``GET /stats`` and the summary at shutdown."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))

    def view(self) -> dict[str, Any]:
        ordered = sorted(self.latency_ms)

        def pct(p: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else None

        return {"requests": self.requests, "errors": self.errors,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "latency_p50_ms": pct(0.50), "latency_p95_ms": pct(0.95),
                "latency_p99_ms": pct(0.99)}


api = FastAPI(title="tunearena", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths and methods answer in OpenAI's format too."""
    return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: "
                           f"{exc.detail}", code="not_found" if exc.status_code == 404 else None))


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A fault of ours still answers in OpenAI's format (the traceback is in the replica's
    log)."""
    return _error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}",
                           "server_error"))


def _error(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"the request body is {size} bytes; this server accepts at most "
                    f"{limit} (serve.max_request_bytes)", code="request_too_large")


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@serve.ingress(api)
class Router:
    """The OpenAI-compatible front: checks, routes to the arm's deployment, answers."""

    def __init__(self, handles: dict[str, Any], settings: RouterSettings):
        from ray.serve import metrics

        self.handles, self.settings = handles, settings
        self.started = int(time.time())
        self.figures = {name: _Figures() for name in handles}
        self._log_lock = threading.Lock()
        self.m_requests = metrics.Counter(
            "tunearena_requests", description="Requests answered, by arm and HTTP status.",
            tag_keys=("model", "status"))  # type: ignore[arg-type]
        self.m_latency = metrics.Histogram(
            "tunearena_request_latency_ms", description="Time to the whole answer, by arm.",
            boundaries=LATENCY_BUCKETS_MS, tag_keys=("model",))
        self.m_tokens = metrics.Counter(
            "tunearena_tokens", description="Prompt and completion tokens, by arm.",
            tag_keys=("model", "kind"))  # type: ignore[arg-type]

    @api.get("/health")
    async def health(self) -> Response:
        return Response("ok\n", media_type="text/plain")

    @api.get("/stats")
    async def stats(self) -> dict[str, Any]:
        """Each arm's running figures: requests, errors, tokens, latency percentiles."""
        return {name: f.view() for name, f in self.figures.items()}

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        try:
            self._authorise(request)
        except ApiError as e:
            return _error(e)
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": self.started, "owned_by": "tunearena"}
            for name in self.handles]})

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._answer(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._answer(request, "text")

    async def _answer(self, request: Request, kind: str) -> Response:
        t0, model = time.perf_counter(), None
        try:
            self._authorise(request)
            body = await self._body(request)
            req = parse_request(ChatRequest if kind == "chat" else CompletionRequest, body)
            if req.model not in self.handles:
                raise model_not_found(req.model, list(self.handles))
            model = req.model
            default_max, default_stop = self.settings.arms[model]
            sampling = req.sampling(default_max, default_stop, self.settings.max_tokens)
            if kind == "chat":
                question, history = req.turns()
                if req.stream:
                    return await self._stream(kind, req, model, question, history, sampling, t0)
                result = await self._call(model, question, history, sampling, "messages")
                answers, documents = [result["answer"]], [result["documents"]]
                response = chat_response(model, answers[0], documents[0])
                self._log(model, kind, [(question, history)], answers, documents, t0)
            else:
                if req.stream:
                    if len(req.prompts) > 1:
                        raise ApiError(400, "stream one prompt at a time", param="prompt")
                    return await self._stream(kind, req, model, req.prompts[0], [],
                                              sampling, t0)
                results = await asyncio.gather(
                    *(self._call(model, p, [], sampling, "prompt") for p in req.prompts))
                answers = [r["answer"] for r in results]
                documents = [r["documents"] for r in results]
                response = completion_response(model, answers, documents)
                self._log(model, kind, [(p, []) for p in req.prompts], answers, documents, t0)
            self._count(model, 200, t0, answers)
            return JSONResponse(response)
        except ApiError as e:
            if model is not None:
                self._count(model, e.status, t0, [])
            return _error(e)

    def _authorise(self, request: Request) -> None:
        if self.settings.key_sha256 is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "no API key given: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        given = hashlib.sha256(key.strip().encode()).hexdigest()
        if not hmac.compare_digest(given, self.settings.key_sha256):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    async def _body(self, request: Request) -> Any:
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        raw = await request.body()
        if len(raw) > limit:
            raise _too_large(len(raw), limit)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    async def _call(self, model: str, question: str, history: list, sampling: Sampling,
                    field: str) -> dict[str, Any]:
        """The arm's answer; a prompt too long for the model is a 400 on ``field``."""
        result = await self._bounded(self.handles[model].complete.remote(
            question, history, sampling), model)
        if "error" in result:
            raise ApiError(400, result["error"], param=field, code="context_length_exceeded")
        return result

    async def _bounded(self, pending: Any, model: str) -> Any:
        """Await a replica's answer within ``request_timeout_s``; a replica that died or
        timed out fails the request at once, as a server error."""
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(pending, timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"{model} gave no answer within {timeout:g} s "
                           "(serve.request_timeout_s)", "server_error", code="timeout") from None
        except (ApiError, StopAsyncIteration):
            raise
        except Exception as e:  # the replica died, or raised: Ray Serve restarts it
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ApiError(503, f"{model} failed to answer ({type(e).__name__}: "
                           f"{first[:300]}); Ray Serve restarts a failed replica, retry",
                           "server_error", code="replica_failed") from None

    async def _stream(self, kind: str, req: Any, model: str, question: str, history: list,
                      sampling: Sampling, t0: float) -> Response:
        ident = new_id("chatcmpl" if kind == "chat" else "cmpl")
        pieces = self.handles[model].options(stream=True).stream.remote(
            question, history, sampling)
        first = await self._bounded(pieces.__anext__(), model)
        if "error" in first:
            raise ApiError(400, first["error"], param="messages" if kind == "chat" else "prompt",
                           code="context_length_exceeded")
        documents = first["documents"]

        async def events() -> AsyncIterator[str]:
            answer, status, lead = None, 200, kind == "chat"
            if kind == "chat":
                yield _sse(chunk(kind, ident, model, "", first=True) | {"documents": documents})
            try:
                while True:
                    try:
                        item = await self._bounded(pieces.__anext__(), model)
                    except StopAsyncIteration:
                        break
                    if "answer" in item:
                        answer = item["answer"]
                        continue
                    text = item["delta"].lstrip() if lead else item["delta"]
                    if text:
                        lead = False
                        yield _sse(chunk(kind, ident, model, text))
                if answer is not None:
                    yield _sse(chunk(kind, ident, model, finish_reason=answer.finish_reason))
                    if req.include_usage:
                        yield _sse(usage_chunk(kind, ident, model, answer))
            except ApiError as e:
                status = e.status
                yield _sse(e.body())
            finally:  # a client that went away stops the generation too
                pieces.cancel()
            yield "data: [DONE]\n\n"
            answers = [answer] if answer is not None and status == 200 else []
            self._count(model, status, t0, answers)
            if answers:
                self._log(model, kind, [(question, history)], answers, [documents], t0)

        return StreamingResponse(events(), media_type="text/event-stream")

    def _count(self, model: str, status: int, t0: float, answers: list[Answer]) -> None:
        ms = 1000 * (time.perf_counter() - t0)
        figures = self.figures[model]
        figures.requests += 1
        self.m_requests.inc(tags={"model": model, "status": str(status)})
        if status != 200:
            figures.errors += 1
            return
        figures.latency_ms.append(ms)
        self.m_latency.observe(ms, tags={"model": model})
        for kind in ("prompt", "completion"):
            n = sum(getattr(a, f"{kind}_tokens") for a in answers)
            setattr(figures, f"{kind}_tokens", getattr(figures, f"{kind}_tokens") + n)
            if n:
                self.m_tokens.inc(n, tags={"model": model, "kind": kind})

    def _log(self, model: str, kind: str, asked: list[tuple[str, list]],
             answers: list[Answer], documents: list[list[str]], t0: float) -> None:
        """One JSONL line per question answered, when ``serve.log_requests`` is set."""
        if self.settings.log_path is None:
            return
        ms = round(1000 * (time.perf_counter() - t0), 1)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = "".join(json.dumps({
            "time": stamp, "model": model, "endpoint": kind, "question": question,
            "history": history, "documents": docs, "answer": answer.text.strip(),
            "finish_reason": answer.finish_reason, "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens, "latency_ms": ms},
            ensure_ascii=False) + "\n"
            for (question, history), answer, docs in zip(asked, answers, documents, strict=True))
        with self._log_lock, Path(self.settings.log_path).open("a", encoding="utf-8") as f:
            f.write(lines)
