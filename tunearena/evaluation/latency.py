"""How long one question takes to answer, one at a time, as a deployed model would see it.

lm-eval batches requests across questions, so its wall time says how fast a benchmark is
scored, not how long a user waits. Here each question is answered alone: for multiple
choice, one forward pass over the prompt followed by each choice (the choices batched, as a
scorer would); for the generative track, greedy generation until a newline. A retrieval arm
adds the time its question's search took (measured when retrieving).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from tunearena.evaluation.prompt import model_input


def time_answers(model, tokenizer, questions: Sequence[dict], device: str,
                 max_new_tokens: int = 32, chat_template: bool = False) -> list[float]:
    """Milliseconds to answer each of ``questions`` (``{"prompt", "choices"?}``), in order,
    each prompt rendered as scoring renders it (through the chat template when
    ``chat_template``).

    The first question is answered once untimed first, so one-off start-up costs (kernel
    selection, allocator growth) are not charged to it.
    """
    import torch

    if not questions:
        return []
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # A rendered chat prompt carries the template's own BOS, if it has one.
    special = {"add_special_tokens": not chat_template}

    def answer(q: dict) -> None:
        prompt, delimiter = model_input(q["prompt"], tokenizer, chat_template)
        if q.get("choices"):
            texts = [prompt + delimiter + c for c in q["choices"]]
            ids = [tokenizer(t, **special)["input_ids"] for t in texts]
            width = max(len(i) for i in ids)
            batch = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=device)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids],
                                device=device)
            model(input_ids=batch, attention_mask=mask)
        else:
            enc = tokenizer(prompt, return_tensors="pt", **special).to(device)
            model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                           eos_token_id=newline + [tokenizer.eos_token_id], pad_token_id=pad)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        answer(questions[0])
        for q in questions:
            t0 = time.perf_counter()
            answer(q)
            times.append(1000 * (time.perf_counter() - t0))
    return times


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """``{"p50", "p95"}`` of ``values`` (inclusive method: defined for one value too)."""
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0]}
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50": statistics.median(values), "p95": cuts[18]}
