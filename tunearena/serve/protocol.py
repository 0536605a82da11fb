"""The OpenAI API as ``tunearena serve`` speaks it: the requests it accepts, the responses
and stream chunks it writes, and its errors, in OpenAI's ``{"error": {...}}`` shape.

A request names an arm as its ``model``. Its last user message (chat) or its ``prompt``
(completions) is the question; earlier user and assistant turns become solved examples before
it. Fields OpenAI defines that would change what the arm was measured doing are accepted
only at their neutral value, and unknown fields are refused, so nothing asked for is
silently ignored. ``temperature`` defaults to 0, the greedy decoding every arm was scored
with.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunearena.serve.engine import Answer, Sampling

MAX_STOP = 4
"""Stop strings a request may give (OpenAI's limit)."""


class ApiError(Exception):
    """An error to answer with: its HTTP status and OpenAI's ``error`` object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def model_not_found(model: str, served: list[str]) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist; this server serves "
                    f"{', '.join(served)}", param="model", code="model_not_found")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    n: Literal[1] = 1
    user: str | None = None
    frequency_penalty: Literal[0] = 0
    presence_penalty: Literal[0] = 0
    logprobs: Literal[False] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > MAX_STOP or not all(stops)):
            raise ValueError(f"at most {MAX_STOP} stop strings, none empty")
        return value

    def sampling(self, default_max: int, default_stop: tuple[str, ...],
                 limit: int) -> Sampling:
        """The request's generation settings; ``ApiError`` when ``max_tokens`` is over
        ``limit``. Unset ``max_tokens`` and ``stop`` are the arm's scored ones."""
        max_tokens = self.max_tokens if self.max_tokens is not None else default_max
        if max_tokens > limit:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most "
                           f"{limit} (serve.max_tokens)", param="max_tokens")
        stop = default_stop if self.stop is None else (
            (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        return Sampling(max_tokens, self.temperature, self.top_p, stop, self.seed)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def turns(self) -> tuple[str, list[tuple[str, str]]]:
        """The question (the last user message) and the earlier ``(user, assistant)`` turns;
        ``ApiError`` for a conversation the arm's prompt cannot hold."""
        roles = [m.role for m in self.messages]
        if any(r in ("system", "developer") for r in roles):
            raise ApiError(400, "system and developer messages are not part of the prompt "
                           "this arm was measured with, so they are refused rather than "
                           "ignored; send user and assistant messages only",
                           param="messages")
        if roles[-1] != "user" or roles[::2] != ["user"] * len(roles[::2]) \
                or roles[1::2] != ["assistant"] * len(roles[1::2]):
            raise ApiError(400, "messages must alternate user and assistant, starting and "
                           "ending with user (the last is the question)", param="messages")
        texts = [m.text for m in self.messages]
        return texts[-1], list(zip(texts[:-1:2], texts[1:-1:2], strict=True))

    def sampling(self, default_max: int, default_stop: tuple[str, ...],
                 limit: int) -> Sampling:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            return self.model_copy(update={"max_tokens": self.max_completion_tokens}).sampling(
                default_max, default_stop, limit)
        return super().sampling(default_max, default_stop, limit)


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: Literal[False] = False
    suffix: None = None
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _some(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("give at least one prompt")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def parse_request(kind: type[_Request], data: Any) -> Any:
    """``data`` as a ``kind`` request; ``ApiError`` (400) naming the first wrong field."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        what = ("is not a field this server accepts" if first["type"] == "extra_forbidden"
                else first["msg"].lower())
        raise ApiError(400, f"{where}: {what}", param=where) from None


def _usage(answers: list[Answer]) -> dict[str, int]:
    prompt = sum(a.prompt_tokens for a in answers)
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_response(model: str, answer: Answer, documents: list[str]) -> dict[str, Any]:
    """A ``chat.completion``; ``documents`` names the documents retrieved into the prompt.
    The content is the answer without the space the plain prompt's ``Answer:`` leaves."""
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": model, "documents": documents,
            "choices": [{"index": 0, "finish_reason": answer.finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": answer.text.lstrip()}}],
            "usage": _usage([answer])}


def completion_response(model: str, answers: list[Answer],
                        documents: list[list[str]]) -> dict[str, Any]:
    """A ``text_completion``: each prompt's answer as the model wrote it."""
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": model, "documents": documents,
            "choices": [{"index": i, "text": a.text, "finish_reason": a.finish_reason,
                         "logprobs": None} for i, a in enumerate(answers)],
            "usage": _usage(answers)}


def chunk(kind: str, ident: str, model: str, delta: str | None = None,
          finish_reason: str | None = None, first: bool = False) -> dict[str, Any]:
    """One streamed chunk: a ``chat.completion.chunk`` (``kind`` chat) or a
    ``text_completion`` piece."""
    base = {"id": ident, "created": int(time.time()), "model": model}
    if kind == "chat":
        message: dict[str, str] = {"role": "assistant"} if first else {}
        if delta is not None:
            message["content"] = delta
        return base | {"object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": message, "finish_reason": finish_reason, "logprobs": None}]}
    return base | {"object": "text_completion", "choices": [
        {"index": 0, "text": delta or "", "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk(kind: str, ident: str, model: str, answer: Answer) -> dict[str, Any]:
    """The last chunk of a stream whose request asked ``include_usage``."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": ident, "created": int(time.time()), "model": model, "object": obj,
            "choices": [], "usage": _usage([answer])}
