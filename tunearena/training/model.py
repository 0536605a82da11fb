"""The model a worker trains: the base weights, plus a peft adapter and gradient checkpointing
when the config asks for them, and a causal-LM loss that never holds the full logits."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from tunearena.remote_code import trust_remote_code
from tunearena.training.config import TrainingConfig
from tunearena.training.data import IGNORE_INDEX

if TYPE_CHECKING:
    from peft import PeftConfig

CHUNKED_LOSS_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Architectures whose logits are exactly ``lm_head(final hidden state)`` (no soft-capping or
scaling), so ``use_chunked_loss`` computes the same loss as their own forward."""

CHUNK_LOGITS = 2**27
"""Logits per chunk of the loss (512 MiB in fp32): a 32k vocabulary gives 4096-token chunks,
large enough for full-speed matmuls."""


def peft_config(cfg: TrainingConfig, model_dir: str) -> PeftConfig:
    """The peft config of an adapter method (causal LM), from the stage's settings;
    ``model_dir`` is the model it trains on (whose tokenizer reads ``init_text``)."""
    import peft

    task = peft.TaskType.CAUSAL_LM
    if cfg.method in ("lora", "qlora", "dora"):
        return peft.LoraConfig(
            task_type=task, r=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules,
            bias="none", use_dora=cfg.method == "dora")
    if cfg.method == "ia3":
        return peft.IA3Config(task_type=task, target_modules=cfg.ia3.target_modules,
                              feedforward_modules=cfg.ia3.feedforward_modules)
    tokens = cfg.virtual_tokens
    if cfg.method == "prompt_tuning":
        init = peft.PromptTuningInit.TEXT if tokens.init_text else peft.PromptTuningInit.RANDOM
        return peft.PromptTuningConfig(
            task_type=task, num_virtual_tokens=tokens.count, prompt_tuning_init=init,
            prompt_tuning_init_text=tokens.init_text,
            tokenizer_name_or_path=model_dir if tokens.init_text else None)
    if cfg.method == "prefix_tuning":
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=tokens.count)
    raise ValueError(f"{cfg.method} trains no adapter")


def load_model(model_dir: str, cfg: TrainingConfig, bf16: bool,
               init_adapter: str | None = None) -> torch.nn.Module:
    """``from_pretrained`` in the training dtype, wrapped in the stage's peft adapter when its
    method trains one (``peft_config``).

    Under ZeRO-3 the caller must have created ``HfDeepSpeedConfig`` first, so the base
    weights are partitioned as they load. The adapters peft adds afterwards are ordinary
    parameters; ``deepspeed.initialize`` partitions them with the rest. ``init_adapter``, a
    peft adapter dir trained on ``model_dir``, is loaded trainable instead of a fresh adapter
    (a stage that continues its predecessor's adapter).
    """
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    kwargs: dict = {"dtype": dtype}
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs, trust_remote_code=trust_remote_code())
    model.config.use_cache = False  # the KV cache is for generation; training never reads it
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it also works
        # when every base weight is frozen (LoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        compile_blocks(model)
    use_chunked_loss(model, compile_chunks=cfg.compile)
    if cfg.method == "full":
        return model
    from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if init_adapter is not None:
        # The adapter names its base relative to the run directory, which is not this
        # worker's working directory; peft reads the base's config through that name when
        # it saves, so it names the model loaded here (the driver names it relative again).
        config = PeftConfig.from_pretrained(init_adapter)
        config.base_model_name_or_path = model_dir
        return PeftModel.from_pretrained(model, init_adapter, is_trainable=True, config=config)
    return get_peft_model(model, peft_config(cfg, model_dir))


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile each repeated block (the classes ``_no_split_modules`` names) in place; returns
    how many. One compiled graph serves every layer, so compiling takes seconds, not minutes;
    LoRA adapters that peft adds later are traced inside the block on its first call."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    n = 0
    for module in model.modules():
        if type(module).__name__ in names:
            module.compile()
            n += 1
    return n


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts, correct under ZeRO-3 partitioning too."""
    total = trainable = 0
    for p in model.parameters():
        # A ZeRO-3 partitioned parameter is empty locally; ds_numel is its full size.
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def _chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor,
                         scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of one chunk of logits (fp32), and ``scale`` times its gradient.

    The same fp32 math as ``cross_entropy(logits.float(), targets, ignore_index=-100)`` and its
    backward; the gradient comes back in the logits' dtype, as autograd would hand it to the
    head's matmul. On an H100 at 32k x 32k logits, 37 ms eager (torch's own loss: 34 ms,
    with 14 GiB more memory) and 24 ms compiled, the head's matmuls included.
    """
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    loss_sum = -torch.where(valid, logp.gather(1, safe[:, None]).squeeze(1), 0.0).sum()
    # d loss_sum / d logits = softmax - one-hot(target), on the rows that count.
    grad = logp.exp_()
    if torch.compiler.is_compiling():
        # A comparison fuses into the compiled kernel's one pass over the chunk.
        vocab = torch.arange(logits.shape[1], device=logits.device)
        grad = grad - (vocab == safe[:, None]).float()
    else:
        # Eager, a scatter touches one element a row rather than the whole chunk.
        grad.scatter_add_(1, safe[:, None], grad.new_full((len(safe), 1), -1.0))
    grad.mul_(torch.where(valid, scale, 0.0)[:, None])
    return loss_sum, grad.to(logits.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` over the targets that are not ignored,
    chunk by chunk of tokens. The gradients are computed in the forward pass, while each
    chunk's logits exist, and only scaled in the backward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int, chunk_fn: Callable,
                grad_enabled: bool):
        need_hidden = grad_enabled and ctx.needs_input_grad[0]
        need_weight = grad_enabled and ctx.needs_input_grad[1]
        # HF's mean over the batch's predicted tokens; a tensor, so no host sync.
        scale = 1.0 / (targets != IGNORE_INDEX).sum().float()
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # fp32 so that summing the chunks' bf16 partial products loses nothing more.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start:start + chunk_tokens]
            part, grad_logits = chunk_fn(h @ weight.t(), targets[start:start + chunk_tokens],
                                         scale)
            loss_sum += part
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_tokens] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ h
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss_sum * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # DeepSpeed scales the loss (1 / grad_accum_steps) before backward: apply it here.
        return (None if grad_hidden is None else grad_hidden * grad_loss,
                None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype),
                None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk_fn: Callable = _chunk_loss_and_grad,
                         chunk_tokens: int | None = None) -> torch.Tensor:
    """The causal-LM loss of Hugging Face's ``ForCausalLMLoss`` on ``hidden @ weight.T``
    (position t predicts ``labels[t + 1]``; -100 is ignored; mean over the predicted tokens),
    computed in chunks of ``chunk_tokens`` so that the full logits never exist."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    if chunk_tokens is None:
        n_chunks = -(-hidden.shape[0] * weight.shape[0] // CHUNK_LOGITS)
        chunk_tokens = -(-hidden.shape[0] // n_chunks)  # equal chunks: one compiled shape
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, chunk_fn,
                                     torch.is_grad_enabled())


class LinearCrossEntropyHead(torch.nn.Linear):
    """The LM head, which returns the loss instead of the logits when given the labels.

    The loss runs inside the head's own forward so that ZeRO-3 has gathered its weight.
    """

    chunk_fn: Callable = staticmethod(_chunk_loss_and_grad)

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            return super().forward(hidden)
        return linear_cross_entropy(hidden, self.weight, labels, self.chunk_fn)


def _forward_with_chunked_loss(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
    """The causal LM's forward when labels are given: hidden states, then the loss in the
    head; any other call (no labels, generation, peft's own options) is the model's own."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if (labels is None or any(v is not None for v in kwargs.values())  # peft passes Nones
            or not isinstance(self.lm_head, LinearCrossEntropyHead)):  # peft wrapped the head
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                  labels=labels, **kwargs)
    hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return CausalLMOutputWithPast(loss=self.lm_head(hidden, labels=labels))


def use_chunked_loss(model: torch.nn.Module, compile_chunks: bool = False) -> bool:
    """Make ``model(input_ids, attention_mask, labels).loss`` skip the full logits; returns
    whether it could (a known architecture, before peft wraps it).

    The logits of a batch are batch x sequence x vocabulary, in fp32 for the loss: at micro-
    batch 16, sequence 2048 and a 32k vocabulary, 4 GiB per copy and several copies between
    forward and backward (15 GiB at the peak on an H100; chunked: 1 GiB, and 10 ms less a step).
    """
    head = getattr(model, "lm_head", None)
    if (getattr(model.config, "model_type", None) not in CHUNKED_LOSS_MODEL_TYPES
            or type(head) is not torch.nn.Linear or head.bias is not None):
        return False
    # Swapping the class keeps the Parameter itself: its state-dict key, its tie to the
    # embedding, and its ZeRO-3 partition.
    head.__class__ = LinearCrossEntropyHead
    if compile_chunks:
        head.chunk_fn = torch.compile(_chunk_loss_and_grad)
    # Bound to this instance only; a bound method, so a deepcopy of the model binds its copy.
    model.forward = types.MethodType(_forward_with_chunked_loss, model)
    return True
