"""The two kinds of generator: a local causal LM (Hugging Face dir), and an OpenAI-compatible
endpoint. Both take a list of chats and return one reply per chat, in order."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from tunearena.documents.config import GeneratorConfig
from tunearena.documents.prompts import Message
from tunearena.documents.records import DocumentsError


class Generator(Protocol):
    def chat(self, chats: list[list[Message]], temperature: float = 0.0, seed: int = 0,
             max_tokens: int | None = None) -> list[str]:
        """One reply per chat, of at most ``max_tokens`` (default: the config's
        ``max_new_tokens``); greedy at temperature 0, else sampled with ``seed``."""
        ...


class LocalGenerator:
    """A causal LM from a Hugging Face dir, generating ``batch_size`` chats at a time
    (left-padded). A tokenizer without a chat template gets the turns as ``User:`` and
    ``Assistant:`` lines."""

    def __init__(self, model_dir: str, cfg: GeneratorConfig, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg, self.device = cfg, device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        # Left padding, so every reply starts where its prompt ends; left truncation keeps the
        # request (the question) when a long document overflows the context.
        self.tokenizer.padding_side = self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                     trust_remote_code=False)
        self.model = model.to(device).eval()  # type: ignore[arg-type]

    def _render(self, chat: list[Message]) -> str:
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True,
                                                      tokenize=False)
            return str(text)
        turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                 for m in chat]
        return "\n\n".join(turns) + "\n\nAssistant:"

    def chat(self, chats: list[list[Message]], temperature: float = 0.0, seed: int = 0,
             max_tokens: int | None = None) -> list[str]:
        import torch

        max_tokens = max_tokens or self.cfg.max_new_tokens
        replies: list[str] = []
        context = getattr(self.model.config, "max_position_embeddings", None) or 2048
        for start in range(0, len(chats), self.cfg.batch_size):
            texts = [self._render(c) for c in chats[start:start + self.cfg.batch_size]]
            # The chat template already holds the special tokens it wants.
            batch = self.tokenizer(texts, return_tensors="pt", padding=True,
                                   add_special_tokens=not self.tokenizer.chat_template,
                                   truncation=True,
                                   max_length=max(8, context - max_tokens))
            batch = batch.to(self.device)
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 \
                else {"do_sample": False}
            torch.manual_seed(seed + start)
            with torch.no_grad():
                out = self.model.generate(**batch, max_new_tokens=max_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id, **sampling)
            new = out[:, batch["input_ids"].shape[1]:]
            replies += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return replies


def endpoint_error(base_url: str, error: Exception) -> DocumentsError:
    """What to tell the user when the endpoint cannot be used."""
    import openai

    if isinstance(error, openai.AuthenticationError):
        what = "refused the API key (401): check synthesis.generator.api_key_env's variable"
    elif isinstance(error, openai.NotFoundError):
        what = (f"does not serve that model ({error}); set synthesis.generator.model to one "
                f"its /v1/models lists")
    elif isinstance(error, openai.APIConnectionError | openai.APITimeoutError):
        what = ("is not reachable (is the server up, and the URL right, /v1 included?); "
                "synthesis.generator.base_url names it")
    else:
        what = f"answered with an error: {error}"
    return DocumentsError(f"the generator endpoint {base_url} {what}")


class EndpointGenerator:
    """An OpenAI-compatible chat-completions endpoint, asked ``batch_size`` chats at once."""

    def __init__(self, cfg: GeneratorConfig):
        import openai

        assert cfg.base_url, "an endpoint generator needs base_url"
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        if cfg.api_key_env and not key:
            raise DocumentsError(f"synthesis.generator.api_key_env names {cfg.api_key_env}, "
                                 f"which is not set in this environment; export it")
        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key or "none",
                                    timeout=cfg.timeout_s, max_retries=2)

    def check(self) -> None:
        """Ask the endpoint once, so a server that is down or a wrong model name is named
        before any work starts."""
        try:
            self.client.chat.completions.create(
                model=self.cfg.model, max_tokens=1, temperature=0.0,
                messages=[{"role": "user", "content": "Say yes."}])
        except Exception as e:  # the openai client's errors, told apart in endpoint_error
            raise endpoint_error(str(self.cfg.base_url), e) from None

    def _one(self, chat: list[Message], temperature: float, seed: int, max_tokens: int) -> str:
        try:
            reply = self.client.chat.completions.create(
                model=self.cfg.model, messages=chat,  # type: ignore[arg-type]
                max_tokens=max_tokens, temperature=temperature, seed=seed)
        except Exception as e:
            raise endpoint_error(str(self.cfg.base_url), e) from None
        return reply.choices[0].message.content or "" if reply.choices else ""

    def chat(self, chats: list[list[Message]], temperature: float = 0.0, seed: int = 0,
             max_tokens: int | None = None) -> list[str]:
        limit = max_tokens or self.cfg.max_new_tokens
        with ThreadPoolExecutor(max_workers=self.cfg.batch_size) as pool:
            return list(pool.map(lambda c: self._one(c, temperature, seed, limit), chats))
