"""Training data formats: one table row per format, saying which fields a record needs, which
texts it trains on, and how it becomes token ids and a loss mask.

Reading, cleaning and tokenising look a record's format up here instead of branching on its
name, so a new format is one more ``DataFormat`` in ``FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunearena.errors import UserError

IGNORE_INDEX = -100
"""Label value that the causal-LM loss skips (prompt tokens, padding)."""

CHAT_ROLES = ("system", "user", "assistant")

Tokens = tuple[list[int], list[int]]
"""(input ids, labels) of one record; labels are ``IGNORE_INDEX`` where no loss falls."""


class DataError(UserError, ValueError):
    """A training file that cannot be used; the message names the file and line."""


class ChatTemplateError(UserError, ValueError):
    """``model.chat_template: true`` for a tokenizer that has no chat template."""


@dataclass(frozen=True)
class DataFormat:
    """What one format of training record looks like and how it is trained on."""

    name: str
    problem: Callable[[dict, bool], str | None]
    """What is wrong with a record's fields, or None; the flag lets empty strings pass."""
    texts: Callable[[dict], list[str]]
    """The strings a record trains on, in order (what cleaning and the leak check read)."""
    tokenize: Callable[[dict, Any], Tokens]
    """(input ids, labels) of a record with a tokenizer."""
    needs_chat_template: bool = False
    as_chat: Callable[[dict], list[dict]] | None = None
    """The record as a conversation, for a run whose prompts go through the chat template
    (``model.chat_template``); None: the record stays as it is."""


def _string_fields(fmt: str, *keys: str) -> Callable[[dict, bool], str | None]:
    def problem(record: dict, allow_empty: bool) -> str | None:
        for key in keys:
            if not isinstance(record.get(key), str) or not (record[key] or allow_empty):
                return f"format {fmt!r} needs a non-empty string {key!r}"
        return None

    return problem


def _tokenize_text(record: dict, tokenizer) -> Tokens:
    ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids, list(ids)


def _tokenize_instruction(record: dict, tokenizer) -> Tokens:
    prompt = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
    response = (tokenizer(record["response"], add_special_tokens=False)["input_ids"]
                + [tokenizer.eos_token_id])
    # Loss on the response only: the model is not taught to write the questions.
    return prompt + response, [IGNORE_INDEX] * len(prompt) + response


def _instruction_as_chat(record: dict) -> list[dict]:
    # A plain record's response opens with the delimiter that followed the prompt
    # (" Velmo" after "Answer:"); as its own turn it starts right after the assistant's
    # header, where lm-eval's chat mode scores a choice with no delimiter either.
    return [{"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response"].lstrip()}]


def _chat_problem(record: dict, allow_empty: bool = False) -> str | None:
    """What is wrong with a ``chat`` record's messages (numbered from 1), or None."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "format 'chat' needs a non-empty list 'messages'"
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            return f"message {n} is not an object with 'role' and 'content'"
        if message.get("role") not in CHAT_ROLES:
            return (
                f"message {n} has role {message.get('role')!r}; "
                f"expected one of {', '.join(CHAT_ROLES)}"
            )
        if not isinstance(message.get("content"), str) or not (message["content"] or allow_empty):
            return f"message {n} needs a non-empty string 'content'"
    # An opening reply has no prompt to render before it, so its tokens cannot be located.
    if messages[0]["role"] == "assistant":
        return "message 1 has role 'assistant'; a conversation opens with a system or user message"
    if not any(m["role"] == "assistant" for m in messages):
        return "no message has role 'assistant', so the record teaches nothing"
    return None


def require_chat_template(tokenizer, where: str = "format 'chat'") -> None:
    """Raise ``DataError`` if the tokenizer cannot render conversations."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            f"{where}: the model's tokenizer has no chat template to render conversations with; "
            "use format 'instruction', or add a 'chat_template' to the model directory's "
            "tokenizer_config.json (or a chat_template.jinja file beside it)"
        )


def resolve_chat_template(setting: bool | str, tokenizer, model: str) -> bool:
    """Whether the run renders prompts through ``tokenizer``'s chat template: ``setting`` is
    ``model.chat_template`` (``auto``: when the tokenizer has one). ``ChatTemplateError`` for
    ``true`` and a tokenizer without one, naming ``model``."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if setting == "auto":
        return has_template
    if setting and not has_template:
        raise ChatTemplateError(
            f"model.chat_template is true but the tokenizer of {model} has no chat template; "
            "set model.chat_template to auto or false (plain prompts), or add a "
            "'chat_template' to the model directory's tokenizer_config.json (or a "
            "chat_template.jinja file beside it)"
        )
    return bool(setting)


def tokenize_chat(messages: list[dict], tokenizer) -> Tokens:
    """(input ids, labels) for a conversation rendered by the tokenizer's chat template.

    Loss falls on each assistant turn: its content and the template's tokens that close it,
    so the model learns to stop; never on system or user turns or on the generation prompt
    that opens a reply (``<|im_start|>assistant`` and its newline, say). A turn's tokens are
    the difference between the conversation before it, rendered with the generation prompt,
    and the conversation through it; both must be token prefixes of the whole conversation,
    or ``DataError`` is raised rather than a turn mislabelled.
    """
    require_chat_template(tokenizer)

    def render(conversation: list[dict], add_generation_prompt: bool = False) -> list[int]:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        # The template writes its own BOS, if it has one; special tokens added here would
        # put a second in front.
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # No EOS is appended, unlike text and instruction records: the template closes each turn
    # with its own end-of-turn token, the one generation stops on, and an extra EOS would
    # teach a sequence the model never sees when it is served through the same template.
    ids = render(messages)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:i], add_generation_prompt=True)
        through = render(messages[: i + 1])
        if through[: len(prompt)] != prompt or ids[: len(through)] != through:
            raise DataError(
                f"the chat template is not prefix-consistent at message {i + 1}: the tokens of "
                "the conversation before an assistant turn (with the generation prompt) are not "
                "a prefix of the tokens through it and of the whole, so the turn cannot be "
                "labelled; use a template that renders earlier turns unchanged, or format "
                "'instruction'"
            )
        labels[len(prompt) : len(through)] = through[len(prompt) :]
    return ids, labels


# Preference records: a prompt (or the conversation up to the user's turn), chosen, rejected.

PREFERENCE_FIELDS = "a preference record needs prompt (or messages), chosen and rejected"


class PreferenceDataError(UserError, ValueError):
    """A preference file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class PreferencePair:
    """One record: the prompt (plain text, or the conversation up to the user's turn)."""

    where: str
    """``path:LINE`` of the record, for errors."""
    prompt: str | list[dict]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class TokenizedPair:
    """Both replies as (input ids, labels), labels ``IGNORE_INDEX`` on everything but the reply."""

    chosen: Tokens
    rejected: Tokens

    @property
    def longer(self) -> Tokens:
        """The longer of the two sequences (prompt and reply): what must fit ``seq_len``."""
        return max(self.chosen, self.rejected, key=lambda tokens: len(tokens[0]))


def reply_text(record: dict, key: str) -> str | None:
    """A reply given as a string or as an assistant message; None for anything else."""
    value = record[key]
    if isinstance(value, dict) and value.get("role") == "assistant":
        value = value.get("content")
    return value if isinstance(value, str) else None


def preference_problem(record: dict, allow_empty: bool = False) -> str | None:
    """What is wrong with a preference record, or None (empty replies are never allowed)."""
    if ("prompt" in record) == ("messages" in record):
        return ("has both 'prompt' and 'messages'; give one" if "prompt" in record
                else f"no 'prompt' or 'messages' field; {PREFERENCE_FIELDS}")
    for key in ("chosen", "rejected"):
        if key not in record:
            return f"no {key!r} field; {PREFERENCE_FIELDS}"
        reply = reply_text(record, key)
        if reply is None:
            return f"{key!r} must be a string or an assistant message (role and content)"
        if not reply.strip():
            return f"{key!r} is empty; give the reply's text"
    if "prompt" in record and not (isinstance(record["prompt"], str) and record["prompt"].strip()):
        return "'prompt' must be a non-empty string"
    messages = record.get("messages")
    if "messages" in record:
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list of {role, content} turns"
        # The conversation with its chosen reply must be a valid ``chat`` record.
        turn = {"role": "assistant", "content": reply_text(record, "chosen")}
        if wrong := _chat_problem({"messages": [*messages, turn]}):
            return wrong
        if messages[-1]["role"] != "user":
            return "'messages' must end with the user turn that chosen and rejected answer"
    if reply_text(record, "chosen") == reply_text(record, "rejected"):
        return "'chosen' and 'rejected' are the same reply, so the pair teaches nothing; fix or drop it"
    return None


def preference_pair(record: dict, where: str) -> PreferencePair:
    """A checked preference record as a pair."""
    prompt = record["prompt"] if "prompt" in record else record["messages"]
    return PreferencePair(where, prompt, str(reply_text(record, "chosen")),
                          str(reply_text(record, "rejected")))


def preference_texts(record: dict) -> list[str]:
    """The strings a preference record holds: its prompt (or turns), chosen and rejected."""
    prompt = ([record["prompt"]] if "prompt" in record
              else [m["content"] for m in record["messages"]])
    return [*prompt, str(reply_text(record, "chosen")), str(reply_text(record, "rejected"))]


def tokenize_reply(pair: PreferencePair, reply: str, tokenizer, chat_template: bool) -> Tokens:
    """One reply after the pair's prompt, rendered as an SFT record with the same prompt is;
    labels only on that reply."""
    try:
        if isinstance(pair.prompt, str):  # as an SFT instruction record renders it
            ids, labels = tokenize_record({"prompt": pair.prompt, "response": reply},
                                          "instruction", tokenizer, chat_template)
        else:
            require_chat_template(tokenizer, "a 'messages' record")
            ids, labels = tokenize_chat([*pair.prompt, {"role": "assistant", "content": reply}],
                                        tokenizer)
    except DataError as e:
        raise PreferenceDataError(f"{pair.where}: {e}") from None
    # Only the final reply is scored: earlier assistant turns are prompt here, and would
    # dilute SimPO's per-token average and the rewards reported.
    start = max(i for i, label in enumerate(labels) if label == IGNORE_INDEX) + 1
    return ids, [IGNORE_INDEX] * start + labels[start:]


def tokenize_pair(pair: PreferencePair, tokenizer, chat_template: bool = False) -> TokenizedPair:
    """The pair's chosen and rejected replies after its prompt."""
    return TokenizedPair(*(tokenize_reply(pair, reply, tokenizer, chat_template)
                           for reply in (pair.chosen, pair.rejected)))


def preference_tokens(record: dict, tokenizer, chat_template: bool = False,
                      where: str = "a preference record") -> TokenizedPair:
    """A checked preference record's chosen and rejected replies after its prompt, as
    ``preference.tokenize_pairs`` renders them."""
    return tokenize_pair(preference_pair(record, where), tokenizer, chat_template)


def _longer_reply(record: dict, tokenizer, chat_template: bool) -> Tokens:
    """The longer of a preference record's two sequences (prompt and chosen or rejected)."""
    return preference_tokens(record, tokenizer, chat_template).longer


FORMATS: dict[str, DataFormat] = {
    f.name: f
    for f in (
        # Loss on every token; the record ends with EOS.
        DataFormat("text", _string_fields("text", "text"), lambda r: [r["text"]], _tokenize_text),
        # Loss on the response only; the record ends with EOS.
        # Through the chat template: one user turn and the reply, loss on the reply.
        DataFormat("instruction", _string_fields("instruction", "prompt", "response"),
                   lambda r: [r["prompt"], r["response"]], _tokenize_instruction,
                   as_chat=_instruction_as_chat),
        # Loss on the assistant turns, ended as the chat template ends them.
        DataFormat("chat", _chat_problem, lambda r: [m["content"] for m in r["messages"]],
                   lambda r, tokenizer: tokenize_chat(r["messages"], tokenizer),
                   needs_chat_template=True),
        # Two replies to one prompt, for a preference stage: the longer is what must fit.
        DataFormat("preference", preference_problem, preference_texts,
                   lambda r, tokenizer: _longer_reply(r, tokenizer, False)),
    )
}
"""Every format a dataset's ``format`` may name."""


def uses_chat_template(name: str, chat_template: bool) -> bool:
    """Whether records of format ``name`` are rendered through the chat template, in a run
    whose prompts go through it when ``chat_template``."""
    fmt = get_format(name)
    return fmt.needs_chat_template or (chat_template and fmt.as_chat is not None)


def get_format(name: str) -> DataFormat:
    """The format called ``name``; ``DataError`` naming the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise DataError(f"unknown data format {name!r}; known: {', '.join(FORMATS)}") from None


def tokenize_record(record: dict, fmt: str, tokenizer, chat_template: bool = False) -> Tokens:
    """(input ids, labels) for one record; ``text`` and ``instruction`` records end with EOS,
    ``chat`` records as the chat template ends them (see ``tokenize_chat``). With
    ``chat_template`` (the run's prompts go through it), ``instruction`` records are rendered
    as a user turn and the assistant's reply, as evaluation renders the same question."""
    data_format = get_format(fmt)
    if fmt == "preference":  # renders its own prompt, through the template when asked
        return _longer_reply(record, tokenizer, chat_template)
    if chat_template and data_format.as_chat is not None:
        return tokenize_chat(data_format.as_chat(record), tokenizer)
    return data_format.tokenize(record, tokenizer)
