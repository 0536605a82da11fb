"""The model a worker trains: the base weights, plus LoRA adapters and gradient checkpointing
when the config asks for them."""

from __future__ import annotations

import torch

from tunearena.training.config import TrainingConfig


def peft_lora_config(cfg: TrainingConfig):
    """The peft ``LoraConfig`` for ``cfg.lora`` (causal LM, adapters only, no bias)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
    )


def load_model(model_dir: str, cfg: TrainingConfig, bf16: bool,
               init_adapter: str | None = None) -> torch.nn.Module:
    """``from_pretrained`` in the training dtype, wrapped for LoRA / QLoRA when asked.

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
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False  # the KV cache is for generation; training never reads it
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it also works
        # when every base weight is frozen (LoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        compile_blocks(model)
    if cfg.method == "full":
        return model
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if init_adapter is not None:
        return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    return get_peft_model(model, peft_lora_config(cfg))


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
