"""Every prompt an arm will score, measured against the model's context before training.

lm-eval cuts an over-long prompt from the left without a word, so a RAG arm loses its
retrieved passages first (they open the prompt) and a few-shot arm its examples: the arm
would be scored on a different question than the others. So the exact token length of each
prompt, with what follows it (a choice scored after it, or the room left to generate), is
counted once the prompts are known and before any training starts. An overflow stops the run
naming the benchmark, the arms and the counts, or, with ``evaluation.long_prompts: drop``,
its questions leave every arm alike, so the arms stay paired, and the report counts them.

The counting takes rendered prompt strings and a tokenizer, so a prompt rendered through a
chat template is measured the same way; the rule is lm-eval's own (``HFLM``): the context
is ``resolve_max_length`` of the model's config and tokenizer, a scored continuation's last
token is only predicted, and a generated answer needs ``max_gen_toks`` of room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunearena.errors import UserError
from tunearena.evaluation.prompt import model_input
from tunearena.remote_code import trust_remote_code

if TYPE_CHECKING:
    from tunearena.evaluation.benchmarks import QAItem
    from tunearena.evaluation.config import EvaluationConfig


class PromptOverflowError(UserError, ValueError):
    """Prompts longer than the model's context, which lm-eval would cut from the left."""


@dataclass(frozen=True)
class Request:
    """One question as lm-eval feeds it: its rendered prompt, then the continuations scored
    after it (multiple choice), or ``gen_tokens`` of room to answer in (generation)."""

    id: str
    context: str
    continuations: tuple[str, ...] = ()
    gen_tokens: int = 0
    add_special_tokens: bool = True
    """False for a prompt rendered by a chat template, which writes its own special tokens
    (lm-eval adds none to it either)."""


def model_max_length(model_dir: str | Path) -> int:
    """The context lm-eval's ``HFLM`` gives the model in ``model_dir`` (its ``max_length``):
    the config's positions, else the tokenizer's ``model_max_length``, else 2048. For a stage
    exported as an adapter alone, its base's, less the positions its virtual tokens take."""
    from lm_eval.models.utils import resolve_max_length
    from transformers import AutoConfig, AutoTokenizer

    from tunearena.evaluation.adapted import adapter_base, unmerged_adapter, virtual_tokens

    trusted = trust_remote_code()
    adapter = unmerged_adapter(model_dir)
    config = AutoConfig.from_pretrained(adapter_base(adapter) if adapter else model_dir,
                                        trust_remote_code=trusted)
    return resolve_max_length(
        config, AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trusted),
    ) - (virtual_tokens(adapter) if adapter else 0)


def tokens_needed(request: Request, tokenizer) -> int:
    """The tokens the model must see at once for ``request``; more than the context and
    lm-eval cuts the prompt from the left.

    A scored continuation is fed whole except its last token, which is only predicted (so
    lm-eval keeps the last ``max_length + 1`` tokens); a generation needs its room after the
    prompt (lm-eval keeps the last ``max_length - max_gen_toks`` prompt tokens)."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=request.add_special_tokens)["input_ids"])

    if request.continuations:
        return max(count(request.context + c) for c in request.continuations) - 1
    return count(request.context) + request.gen_tokens


def lengths(requests: Iterable[Request], tokenizer) -> dict[str, int]:
    """``tokens_needed`` of each request, by id."""
    return {r.id: tokens_needed(r, tokenizer) for r in requests}


def task_requests(rows: Iterable[dict], gen_tokens: int, tokenizer=None,
                  chat_template: bool = False) -> list[Request]:
    """The requests of a task written by ``tasks.py``: a row with ``choices`` is scored by
    each choice after the delimiter, any other is answered in ``gen_tokens``. With
    ``chat_template`` each prompt is what the model reads through ``tokenizer``'s chat
    template (``prompt.model_input``, as lm-eval renders it)."""
    requests = []
    for row in rows:
        text, delimiter = model_input(row["prompt"], tokenizer, chat_template)
        choices = tuple(delimiter + c for c in row.get("choices") or ())
        requests.append(Request(str(row["id"]), text, choices, 0 if choices else gen_tokens,
                                add_special_tokens=not chat_template))
    return requests


@dataclass
class Overflow:
    """One benchmark's prompts that do not fit: per arm context (``""`` plain, ``rag``,
    ``fewshot``) the overflowing question ids, and the longest prompt of any context."""

    benchmark: str
    by_context: dict[str, list[str]] = field(default_factory=dict)
    longest: int = 0

    @property
    def questions(self) -> list[str]:
        """Every question whose prompt overflows in some context, in first-seen order."""
        return list(dict.fromkeys(q for ids in self.by_context.values() for q in ids))


def find_overflow(requests: Mapping[str, Mapping[str, Sequence[Request]]], tokenizer,
                  max_length: int) -> list[Overflow]:
    """The benchmarks (``requests[benchmark][context]``) with a prompt longer than
    ``max_length``; none when every prompt fits."""
    found = []
    for name, contexts in requests.items():
        overflow = Overflow(name)
        for context, reqs in contexts.items():
            needed = lengths(reqs, tokenizer)
            over = [q for q, n in needed.items() if n > max_length]
            if over:
                overflow.by_context[context] = over
                overflow.longest = max(overflow.longest, max(needed[q] for q in over))
        if overflow.by_context:
            found.append(overflow)
    return found


def arms_of(context: str, arms: Iterable[str]) -> list[str]:
    """The arms scored with prompts of ``context``."""
    from tunearena.evaluation.arm import Arm

    return [a for a in arms if Arm.parse(a).context == context]


def overflow_message(found: Sequence[Overflow], arms: Sequence[str], max_length: int,
                     n_questions: Mapping[str, int]) -> str:
    """What overflowed, where, and what to do, for ``PromptOverflowError``."""
    lines = []
    for o in found:
        per_arm = ", ".join(f"{len(ids)} with {'/'.join(arms_of(c, arms)) or c or 'no context'}"
                            for c, ids in o.by_context.items())
        lines.append(f"benchmark {o.benchmark}: {len(o.questions)} of {n_questions[o.benchmark]} "
                     f"questions have a prompt longer than the model's {max_length}-token "
                     f"context ({per_arm}; the longest {o.longest} tokens)")
    fixes = []
    contexts = {c for o in found for c in o.by_context}
    if "rag" in contexts:
        fixes.append("lower rag.top_k or rag.chunk_tokens")
    if "fewshot" in contexts:
        fixes.append("lower evaluation.fewshot.k")
    if "" in contexts:
        fixes.append("shorten those questions")
    fixes.append("or set evaluation.long_prompts: drop to leave those questions out of every "
                 "arm alike (counted in the report)")
    return ("; ".join(lines) + ". lm-eval would cut them from the left, dropping retrieved "
            "passages or examples first. To fix: " + ", ".join(fixes))


def check_harness_samples(name: str, samples: Sequence[dict], tokenizer, max_length: int,
                          max_gen_toks: int) -> None:
    """After lm-eval scored task ``name``: refuse its logged ``samples`` if any prompt was
    cut (our tasks were measured before training, so this catches an lm-eval registry task
    and any prompt rendered otherwise than measured)."""
    def request(i: int, s: dict) -> Request:
        args = s["arguments"]
        if isinstance(args[0][1], dict):  # generate_until: (context, generation kwargs)
            return Request(str(i), args[0][0],
                           gen_tokens=args[0][1].get("max_gen_toks", max_gen_toks))
        return Request(str(i), args[0][0], tuple(a[1] for a in args))

    needed = lengths((request(i, s) for i, s in enumerate(samples)), tokenizer)
    over = [n for n in needed.values() if n > max_length]
    if over:
        raise PromptOverflowError(
            f"task {name}: {len(over)} of {len(samples)} prompts are longer than the model's "
            f"{max_length}-token context (the longest {max(over)} tokens) and were cut from "
            "the left; leave the benchmark out, or lower its few-shot examples (lm-eval's "
            "num_fewshot), or use a model with a longer context")


def measure_prompts(model_dir: str, evaluation: EvaluationConfig,
                    questions: Mapping[str, list[QAItem]], arms: Sequence[str], task_dir: Path,
                    tasks: Mapping[str, Mapping[str, str]], chat_template: bool = False,
                    ) -> tuple[dict[str, list[QAItem]], dict[str, Any]]:
    """Measure the prompts of our QA benchmarks' ``tasks`` (per benchmark, the task of each
    context, as ``arms.write_arm_tasks`` wrote them into ``task_dir``) against the context of
    ``model_dir``, which every arm's model shares, as the model reads them (through its chat
    template with ``chat_template``).

    Returns the questions to score (all of them, or with ``long_prompts: drop`` those whose
    every prompt fits) and the record ``results.json`` keeps as ``prompt_lengths``. Raises
    ``PromptOverflowError`` on an overflow with ``long_prompts: error``, and when dropping
    would leave a benchmark empty."""
    from transformers import AutoTokenizer

    from tunearena.evaluation.tasks import MAX_ANSWER_TOKENS, task_rows

    max_length = model_max_length(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code())
    requests = {b.name: {context: task_requests(task_rows(task_dir, task), MAX_ANSWER_TOKENS,
                                                tokenizer, chat_template)
                         for context, task in tasks[b.name].items()}
                for b in evaluation.benchmarks if b.path is not None}
    found = find_overflow(requests, tokenizer, max_length)
    record: dict[str, Any] = {"max_length": max_length, "policy": evaluation.long_prompts,
                              "dropped": {}}
    n_questions = {name: len(items) for name, items in questions.items()}
    emptied = [o for o in found if len(o.questions) == n_questions[o.benchmark]]
    if found and (evaluation.long_prompts == "error" or emptied):
        raise PromptOverflowError(overflow_message(found, arms, max_length, n_questions)
                                  + ("" if not emptied else f" (dropping would leave "
                                     f"{emptied[0].benchmark} with no question)"))
    kept = dict(questions)
    for o in found:
        gone = set(o.questions)
        kept[o.benchmark] = [q for q in questions[o.benchmark] if q.id not in gone]
        record["dropped"][o.benchmark] = {
            "questions": len(gone), "longest_tokens": o.longest,
            "arms": [a for c in o.by_context for a in arms_of(c, arms)]}
    return kept, record
