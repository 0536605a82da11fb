"""Preference tuning on (prompt, chosen, rejected) pairs: DPO, and the reference-free SimPO.

Pure torch: files of records (checked and tokenised as the ``preference`` data format says)
are read here, and each pair becomes two rows of a batch
(chosen first, then rejected) whose response tokens are scored by ``sequence_logps``. DPO
compares the policy with a frozen reference; its log-probs are computed once, before the
first step (``reference_logps``), so the training loop never holds a second model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from tunearena.files import iter_jsonl
from tunearena.training.formats import (
    IGNORE_INDEX,
    PREFERENCE_FIELDS,
    PreferenceDataError,
    PreferencePair,
    TokenizedPair,
    preference_pair,
    preference_problem,
    tokenize_pair,
)
from tunearena.training.lengths import LongRecordsError

if TYPE_CHECKING:
    from tunearena.training.config import PreferenceConfig

MAX_REPORTED = 5
"""Bad records named in one error; the rest are counted."""
PAD_ID = 0
"""Padding id: padding sits right of each row, masked from attention and labels, so a causal
model never reads it and its value does not matter."""


PreferenceKind = Literal["dpo", "simpo"]
"""``dpo``: the policy's log-prob gain over the frozen reference model, chosen against
rejected; ``simpo``: no reference, the length-normalised log-probs must differ by ``gamma``."""


class PairLogps(NamedTuple):
    """Summed response log-probs and response token counts of N pairs, each a [N] tensor."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


class PreferenceLoss(NamedTuple):
    """A batch's loss (with grad) and its detached reward statistics."""

    loss: torch.Tensor
    """Mean over the batch's pairs."""
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    accuracy: torch.Tensor
    """Share of pairs whose chosen reward beats the rejected one."""
    margin: torch.Tensor
    """Mean of chosen minus rejected reward."""


def read_pairs(path: Path | str) -> list[PreferencePair]:
    """The pairs of a JSONL preference file; ``PreferenceDataError`` naming the file and line
    of up to ``MAX_REPORTED`` bad records (reading stops at a line that is not JSON)."""
    pairs, problems = [], []
    try:
        for where, record in iter_jsonl(path, PreferenceDataError, "preference file"):
            if wrong := preference_problem(record):
                problems.append(f"{where}: {wrong}")
                continue
            pairs.append(preference_pair(record, where))
    except PreferenceDataError as e:
        problems.append(str(e))
    if len(problems) > MAX_REPORTED:
        problems[MAX_REPORTED:] = [f"... and {len(problems) - MAX_REPORTED} more bad records"]
    if problems:
        raise PreferenceDataError("\n".join(problems))
    if not pairs:
        raise PreferenceDataError(f"{path}: no records; {PREFERENCE_FIELDS}")
    return pairs


def split_pair_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows of ``[chosen | rejected]`` (each half ``seq_len``, as ``data.pad_pairs`` lays
    them) as a ``collate_pairs`` batch: the chosen halves, then the rejected ones, cut to the
    longest row's tokens."""
    half = batch["input_ids"].shape[1] // 2
    out = {k: torch.cat([v[:, :half], v[:, half:]]) for k, v in batch.items()}
    used = int(out["attention_mask"].sum(0).nonzero().max()) + 1
    return {k: v[:, :used] for k, v in out.items()}


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer, seq_len: int,
                   chat_template: bool = False, long_records: Literal["error", "drop"] = "error",
                   ) -> tuple[list[TokenizedPair], int]:
    """Each pair's replies after its prompt (through the chat template when ``chat_template``
    or when the record has messages), ended as SFT ends them; returns (pairs, dropped).

    A pair with a reply longer than ``seq_len`` is never cut: ``long_records: error`` raises
    ``LongRecordsError`` naming its lines, ``drop`` leaves it out and counts it.
    """
    kept, long = [], []
    for pair in pairs:
        tokens = tokenize_pair(pair, tokenizer, chat_template)
        length = len(tokens.longer[0])
        if length > seq_len:
            long.append(f"{pair.where} ({length} tokens)")
        else:
            kept.append(tokens)
    if long and long_records == "error":
        raise LongRecordsError(
            f"{len(long)} preference pair(s) longer than seq_len {seq_len}: "
            f"{', '.join(long[:MAX_REPORTED])}{' ...' if len(long) > MAX_REPORTED else ''}; "
            "raise training.seq_len, shorten them, or set training.long_records: drop")
    return kept, len(long)


T = TypeVar("T")


def split_pairs(pairs: Sequence[T], heldout_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, held out) after a seeded shuffle; at least one held out when asked for and
    there are two or more pairs."""
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n = int(len(shuffled) * heldout_fraction)
    n = 1 if heldout_fraction > 0 and n == 0 and len(shuffled) > 1 else n
    return shuffled[n:], shuffled[:n]


def collate_pairs(batch: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
    """B pairs as one batch of 2B right-padded rows, the chosen replies first, then the
    rejected ones in the same order: ``input_ids``, ``attention_mask`` and ``labels``."""
    rows = [p.chosen for p in batch] + [p.rejected for p in batch]
    input_ids = torch.full((len(rows), max(len(ids) for ids, _ in rows)), PAD_ID)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    for i, (ids, row_labels) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(row_labels)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, token count) of each row's labelled tokens, each a [rows] tensor.

    The model (a peft model too) is called with ids and mask only, so it computes no loss of
    its own; logits at position t predict the token at t + 1, and the log-softmax runs in
    fp32 at least, since bf16 sums over the vocabulary lose the small differences DPO learns
    from.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Prompt tuning puts its virtual tokens' positions before the input's.
    logits = logits[:, -batch["input_ids"].shape[1]:]
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE_INDEX
    logits = logits[:, :-1]
    logps = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    token_logps = logps.gather(2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(scored, token_logps, 0.0).sum(-1), scored.sum(-1)


def _preference_result(logits: torch.Tensor, chosen_rewards: torch.Tensor,
                       rejected_rewards: torch.Tensor) -> PreferenceLoss:
    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    return PreferenceLoss(-F.logsigmoid(logits).mean(), chosen, rejected,
                          (chosen > rejected).float().mean(), (chosen - rejected).mean())


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float) -> PreferenceLoss:
    """DPO from summed log-probs: rewards ``beta * (policy - ref)``, loss
    ``-logsigmoid(chosen reward - rejected reward)``, log 2 while policy equals reference."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return _preference_result(chosen_rewards - rejected_rewards, chosen_rewards, rejected_rewards)


def simpo_loss(avg_chosen: torch.Tensor, avg_rejected: torch.Tensor, beta: float,
               gamma: float) -> PreferenceLoss:
    """SimPO from per-token average log-probs: rewards ``beta * avg``, loss
    ``-logsigmoid(chosen reward - rejected reward - gamma)``; the average keeps a long reply
    from winning by length alone, and no reference model is needed."""
    chosen_rewards, rejected_rewards = beta * avg_chosen, beta * avg_rejected
    return _preference_result(chosen_rewards - rejected_rewards - gamma, chosen_rewards,
                              rejected_rewards)


def preference_loss(kind: PreferenceKind, cfg: PreferenceConfig, sum_logps: torch.Tensor,
                    n_tokens: torch.Tensor,
                    ref_chosen: torch.Tensor | None = None,
                    ref_rejected: torch.Tensor | None = None) -> PreferenceLoss:
    """``kind``'s loss on ``sequence_logps`` of a ``collate_pairs`` batch (chosen rows first);
    DPO needs the batch's reference log-probs, SimPO ignores them."""
    b = len(sum_logps) // 2
    if kind == "simpo":
        avg = sum_logps / n_tokens
        return simpo_loss(avg[:b], avg[b:], cfg.beta, cfg.gamma)
    if ref_chosen is None or ref_rejected is None:
        raise ValueError("DPO needs the reference log-probs of the batch's pairs")
    device = sum_logps.device
    return dpo_loss(sum_logps[:b], sum_logps[b:], ref_chosen.to(device), ref_rejected.to(device),
                    cfg.beta)


@torch.no_grad()
def pair_logps(model, pairs: Sequence[TokenizedPair], batch_size: int) -> PairLogps:
    """``sequence_logps`` of every pair, in eval mode (no dropout), as CPU tensors (fp32, or
    fp64 for a double model) aligned with ``pairs``; the model's mode is restored afterwards."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    parts = []
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs(chunk).items()}
            sums, counts = (t.cpu() for t in sequence_logps(model, batch))
            b = len(chunk)
            parts.append((sums[:b], sums[b:], counts[:b], counts[b:]))
    finally:
        model.train(was_training)
    return PairLogps(*(torch.cat(column) for column in zip(*parts, strict=True)))


def reference_logps(model, pairs: Sequence[TokenizedPair], batch_size: int,
                    without_adapter: bool = False) -> PairLogps:
    """The reference model's log-probs of every pair, computed once before training.

    Before the first step the policy is the reference, so this runs on the policy itself.
    Under LoRA-family adapters the reference is the base the adapters sit on, so the same
    numbers come from a peft policy at any step with ``without_adapter`` (its
    ``disable_adapter()``), e.g. when resuming without saved references.
    """
    with model.disable_adapter() if without_adapter else nullcontext():
        return pair_logps(model, pairs, batch_size)


def evaluate_pairs(model, pairs: Sequence[TokenizedPair], ref: PairLogps | None,
                   kind: PreferenceKind, cfg: PreferenceConfig, batch_size: int = 8,
                   ) -> dict[str, float]:
    """Held-out metrics for logging and the report: ``loss``, ``reward_accuracy``,
    ``margin``, ``chosen_reward`` and ``rejected_reward`` (means over ``pairs``); ``ref``
    holds the pairs' reference log-probs (DPO only)."""
    policy = pair_logps(model, pairs, batch_size)
    result = preference_loss(kind, cfg, torch.cat([policy.chosen, policy.rejected]),
                             torch.cat([policy.chosen_tokens, policy.rejected_tokens]),
                             ref.chosen if ref else None, ref.rejected if ref else None)
    return {"loss": result.loss.item(), "reward_accuracy": result.accuracy.item(),
            "margin": result.margin.item(), "chosen_reward": result.chosen_rewards.mean().item(),
            "rejected_reward": result.rejected_rewards.mean().item()}
