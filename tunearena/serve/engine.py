"""One arm's model answering questions as the run scored it: the same weights, the same
retrieved passages, the same prompt, the same tokens and, at temperature 0, the same
greedy answer cut where lm-eval cut it.

The prompt is ``format_prompt`` (earlier turns of a conversation become solved examples
before the question, retrieved passages its ``Context:`` lines), rendered through the chat
template when the run scored that way (``model_input``). It is tokenised as lm-eval's
``HFLM`` does (the tokenizer's special tokens, unless the text already opens with BOS),
batches are left-padded, and an answer ends at the first stop string, which is not part of
it. Plain Python and PyTorch: the Ray Serve replica (``app.py``) wraps it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunearena.evaluation.prompt import format_prompt, model_input
from tunearena.serve.arms import ServedArm


@dataclass(frozen=True)
class Sampling:
    """How to generate: greedy at temperature 0 (as the arms were scored), else sampled."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Prompt:
    """A question rendered for the model: the text it reads, its tokens, and the documents
    of the passages retrieved into it."""

    text: str
    ids: tuple[int, ...]
    documents: tuple[str, ...] = ()


@dataclass
class Answer:
    text: str
    finish_reason: str
    """``stop`` (a stop string or the end-of-sequence token) or ``length`` (max_tokens)."""
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Engine:
    """The model, tokenizer and (for a RAG arm) index of one served arm."""

    arm: ServedArm
    device: str = ""
    model: Any = field(init=False, repr=False)
    tokenizer: Any = field(init=False, repr=False)
    max_length: int = field(init=False)
    _index: Any = field(init=False, repr=False, default=None)
    _eos: set[int] = field(init=False, repr=False, default_factory=set)
    """The token ids that end a generation (the model's and the tokenizer's)."""
    _seeded: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import torch

        from tunearena.evaluation.context import model_max_length
        from tunearena.evaluation.harness import load_model

        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Loaded as scoring loaded it (fp32 on CPU, the checkpoint's dtype on a GPU).
        self.model, self.tokenizer = load_model(Path(self.arm.model_dir), self.device)
        if self.arm.adapter_dir:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, self.arm.adapter_dir).eval()
        self.max_length = model_max_length(self.arm.model_dir)
        if self.tokenizer.pad_token_id is None:  # as lm-eval's HFLM pads
            self.tokenizer.pad_token = self.tokenizer.eos_token
        ends = self.model.generation_config.eos_token_id
        ends = ends if isinstance(ends, list) else [ends]
        self._eos = {i for i in [*ends, self.tokenizer.eos_token_id] if i is not None}
        if self.arm.index_dir:
            from tunearena.rag.index import RagIndex

            self._index = RagIndex.load(self.arm.index_dir)

    def render(self, question: str, history: Sequence[tuple[str, str]] = ()) -> Prompt:
        """The prompt of ``question`` after the ``(question, answer)`` turns of ``history``,
        with the arm's retrieved passages."""
        passages: list[str] = []
        documents: tuple[str, ...] = ()
        if self._index is not None:
            from tunearena.rag.retrieve import recall_sweep

            hits = self._index.search([question], max(recall_sweep(self.arm.top_k)))[0]
            hits = hits[: self.arm.top_k]
            passages, documents = [h.text for h in hits], tuple(h.doc_id for h in hits)
        prompt = format_prompt(question, passages, history)
        text, _ = model_input(prompt, self.tokenizer, self.arm.chat_template)
        bos = self.tokenizer.bos_token
        special = not (bos and text.startswith(bos))  # lm-eval adds none before a BOS
        ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return Prompt(text, tuple(ids), documents)

    def room_error(self, prompt: Prompt, max_tokens: int) -> str | None:
        """Why ``prompt`` with ``max_tokens`` to answer in does not fit the model's context,
        or None when it fits."""
        needed = len(prompt.ids) + max_tokens
        if needed <= self.max_length:
            return None
        return (f"this model's context is {self.max_length} tokens; the prompt is "
                f"{len(prompt.ids)} tokens" + (" with its retrieved passages" if
                                              prompt.documents else "")
                + f" and max_tokens is {max_tokens}, {needed - self.max_length} tokens too "
                "many: shorten the messages or lower max_tokens")

    def generate(self, jobs: Sequence[tuple[Prompt, Sampling]]) -> list[Answer]:
        """Answer each job; jobs that sample alike are generated as one left-padded batch."""
        groups: dict[Sampling, list[int]] = {}
        for i, (_, sampling) in enumerate(jobs):
            groups.setdefault(sampling, []).append(i)
        answers: list[Answer | None] = [None] * len(jobs)
        for sampling, members in groups.items():
            out = self._generate([jobs[i][0] for i in members], sampling)
            for i, answer in zip(members, out, strict=True):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    def _generate(self, prompts: list[Prompt], sampling: Sampling) -> list[Answer]:
        import torch

        width = max(len(p.ids) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p.ids)) + list(p.ids) for p in prompts])
        mask = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts])
        with self._rng(sampling), torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                use_cache=True, **self._generation_kwargs(sampling))
        answers = []
        for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
            tokens = self._until_end(row)
            text, cut = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True),
                                    sampling.stop)
            if cut:
                tokens = self._until_stop(tokens, sampling.stop)
            ended = cut or self._ends(tokens)
            answers.append(Answer(text, "stop" if ended else "length", len(prompt.ids),
                                  len(tokens)))
        return answers

    def stream(self, prompt: Prompt, sampling: Sampling,
               cancelled: threading.Event) -> Iterator[str | Answer]:
        """The answer as it is generated: pieces of text (never one that may turn out to be
        the start of a stop string), then the whole ``Answer``. Setting ``cancelled``
        stops the generation at its next token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, timeout=600,
                                        skip_special_tokens=True)
        produced = [0]

        class _Watch(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                produced[0] = input_ids.shape[1] - len(prompt.ids)
                return torch.full((input_ids.shape[0],), cancelled.is_set(),
                                  dtype=torch.bool, device=input_ids.device)

        failed: list[BaseException] = []

        def run() -> None:
            try:
                with self._rng(sampling), torch.no_grad():
                    self.model.generate(
                        input_ids=torch.tensor([prompt.ids], device=self.device),
                        attention_mask=torch.ones(1, len(prompt.ids), dtype=torch.long,
                                                  device=self.device),
                        streamer=streamer, use_cache=True,
                        stopping_criteria=StoppingCriteriaList([_Watch()]),
                        **self._generation_kwargs(sampling))
            except BaseException as e:  # raised to the reader once it has stopped reading
                failed.append(e)
                streamer.end()  # the reader must not wait for text that never comes

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text, sent, cut = "", 0, False
        try:
            for piece in streamer:
                text += piece
                text, cut = cut_at_stop(text, sampling.stop)
                safe = len(text) if cut else len(text) - held_back(text, sampling.stop)
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
                if cut:
                    cancelled.set()
                    break
            if sent < len(text):
                yield text[sent:]
        finally:
            cancelled.set()
            worker.join()
        if failed:
            raise failed[0]
        n = produced[0]
        reason = "stop" if cut or n < sampling.max_tokens else "length"
        yield Answer(text, reason, len(prompt.ids), n)

    def _generation_kwargs(self, sampling: Sampling) -> dict:
        kwargs: dict = {"max_new_tokens": sampling.max_tokens,
                        "pad_token_id": self.tokenizer.pad_token_id}
        if sampling.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": sampling.temperature,
                       "top_p": sampling.top_p}
        else:  # greedy, whatever the model's generation_config says (lm-eval's do_sample)
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if sampling.stop:
            kwargs |= {"stop_strings": list(sampling.stop), "tokenizer": self.tokenizer}
        return kwargs

    @contextlib.contextmanager
    def _rng(self, sampling: Sampling) -> Iterator[None]:
        """Seeds torch for a seeded sampled request, one at a time (the generator is shared)."""
        if sampling.seed is None or sampling.temperature == 0:
            yield
            return
        import torch

        with self._seeded:
            torch.manual_seed(sampling.seed)
            yield

    def _until_end(self, row: list[int]) -> list[int]:
        """The generated tokens up to and with the first end-of-sequence token (the batch's
        padding after it dropped)."""
        for j, token in enumerate(row):
            if token in self._eos:
                return row[: j + 1]
        return row

    def _ends(self, tokens: list[int]) -> bool:
        return bool(tokens) and tokens[-1] in self._eos

    def _until_stop(self, tokens: list[int], stop: tuple[str, ...]) -> list[int]:
        """The fewest leading tokens whose text holds a stop string (the tokens generated
        before the answer ended)."""
        for n in range(1, len(tokens) + 1):
            if cut_at_stop(self.tokenizer.decode(tokens[:n], skip_special_tokens=True),
                           stop)[1]:
                return tokens[:n]
        return tokens


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before its first stop string, and whether one was there (lm-eval cuts a
    generated answer the same way)."""
    at = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string, and
    so must wait for the next piece before they are sent."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:n])), default=0)
