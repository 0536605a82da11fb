"""The chunked causal-LM loss: the same loss and gradients as Hugging Face's, without the
full logits (fp32 on CPU, where the two must agree to rounding)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunearena.training.config import TrainingConfig
from tunearena.training.data import IGNORE_INDEX
from tunearena.training.model import (
    LinearCrossEntropyHead,
    _chunk_loss_and_grad,
    linear_cross_entropy,
    load_model,
    peft_config,
    use_chunked_loss,
)


def reference_loss(hidden, weight, labels):
    """What HF's ForCausalLMLoss computes: fp32 logits, shift by one, mean over non-ignored."""
    logits = (hidden @ weight.t()).float()
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def random_case(seed: int, batch=3, seq=11, dim=16, vocab=37):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, dim, generator=g, dtype=torch.float64).float()
    weight = torch.randn(vocab, dim, generator=g) / dim**0.5
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[torch.rand(batch, seq, generator=g) < 0.3] = IGNORE_INDEX  # prompts, padding
    return hidden, weight, labels


# 33 tokens: one chunk, uneven chunks, single-token chunks.
@pytest.mark.parametrize("chunk_tokens", [None, 33, 8, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradients_match_torch_cross_entropy(chunk_tokens, seed):
    hidden, weight, labels = random_case(seed)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    expected = reference_loss(h1, w1, labels)
    got = linear_cross_entropy(h2, w2, labels, chunk_tokens=chunk_tokens)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # A scaled loss (as DeepSpeed's 1 / grad_accum_steps) scales both gradients.
    (expected * 0.25).backward()
    (got * 0.25).backward()
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-7)


def test_ignored_targets_get_no_gradient_and_do_not_count():
    hidden, weight, labels = random_case(2)
    labels[0] = IGNORE_INDEX  # the first sequence predicts nothing
    h = hidden.clone().requires_grad_()
    loss = linear_cross_entropy(h, weight, labels, chunk_tokens=5)
    loss.backward()
    assert torch.count_nonzero(h.grad[0]) == 0
    # Only the other sequences' tokens are in the mean.
    torch.testing.assert_close(loss, reference_loss(hidden[1:], weight, labels[1:]))


def test_no_grad_gives_the_loss_alone():
    hidden, weight, labels = random_case(3)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden.requires_grad_(), weight, labels, chunk_tokens=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference_loss(hidden, weight, labels))


def test_chunk_gradient_is_the_softmax_minus_the_target():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 9, generator=g, requires_grad=True)
    targets = torch.tensor([0, 8, IGNORE_INDEX, 3, 3, IGNORE_INDEX])
    loss_sum, grad = _chunk_loss_and_grad(logits.detach(), targets, torch.tensor(0.5))
    expected = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    (expected * 0.5).backward()
    torch.testing.assert_close(loss_sum, expected.detach())
    torch.testing.assert_close(grad, logits.grad)



def test_compiled_chunk_matches_the_eager_one():
    # The two take different branches for the one-hot (a comparison fuses; a scatter is cheap
    # eager). Compiling on the CPU takes seconds; the bf16 CUDA version is the GPU test below.
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 9, generator=g)
    targets = torch.tensor([0, 8, IGNORE_INDEX, 3, 3, IGNORE_INDEX])
    eager = _chunk_loss_and_grad(logits, targets, torch.tensor(0.5))
    compiled = torch.compile(_chunk_loss_and_grad)(logits, targets, torch.tensor(0.5))
    torch.testing.assert_close(compiled, eager)

def tiny_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (2, 12), generator=g)
    labels = input_ids.clone()
    labels[0, :5] = IGNORE_INDEX  # an instruction prompt
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "labels": labels}


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_model_loss_and_gradients_match_the_models_own(tiny_model_dir, method):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    # No dropout: the two models would draw different masks.
    cfg = TrainingConfig(datasets=[{"path": "x.jsonl"}], method=method, lora={"dropout": 0.0})
    torch.manual_seed(0)  # the same LoRA initialisation for both
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if method == "lora":
        plain = get_peft_model(plain, peft_config(cfg, str(tiny_model_dir)))
    torch.manual_seed(0)
    chunked = load_model(str(tiny_model_dir), cfg, bf16=False)
    base = chunked.get_base_model() if method == "lora" else chunked
    assert isinstance(base.lm_head, LinearCrossEntropyHead)

    batch = tiny_batch(base.config.vocab_size)
    expected, got = plain(**batch).loss, chunked(**batch).loss
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    expected.backward()
    got.backward()
    expected_grads, got_grads = grads(plain), grads(chunked)
    assert got_grads.keys() == expected_grads.keys() and got_grads
    for name, g in expected_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # Without labels the model is unchanged: logits, as generation and evaluation need.
    with torch.no_grad():
        logits = chunked(input_ids=batch["input_ids"]).logits
    assert logits.shape == (*batch["input_ids"].shape, base.config.vocab_size)


def test_tied_embeddings_get_both_gradients():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    plain = LlamaForCausalLM(config)
    chunked = LlamaForCausalLM(config)
    chunked.load_state_dict(plain.state_dict())
    assert use_chunked_loss(chunked)
    assert chunked.lm_head.weight is chunked.model.embed_tokens.weight
    batch = tiny_batch(50)
    plain(**batch).loss.backward()
    chunked(**batch).loss.backward()
    torch.testing.assert_close(chunked.lm_head.weight.grad, plain.lm_head.weight.grad,
                               rtol=1e-4, atol=1e-6)


def test_unknown_architectures_keep_their_own_loss():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert not use_chunked_loss(model)
    assert type(model.lm_head) is torch.nn.Linear


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_bf16_chunks_match_the_models_own_loss_on_cuda():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    plain = LlamaForCausalLM(config).to("cuda", torch.bfloat16)
    chunked = LlamaForCausalLM(config).to("cuda", torch.bfloat16)
    chunked.load_state_dict(plain.state_dict())
    assert use_chunked_loss(chunked, compile_chunks=True)
    batch = {k: v.repeat(4, 40)[:, :400].cuda() for k, v in tiny_batch(32000).items()}
    expected, got = plain(**batch).loss, chunked(**batch).loss
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=0)
    expected.backward()
    got.backward()
    for (name, p), q in zip(plain.named_parameters(), chunked.parameters(), strict=True):
        # bf16 gradients: compare as vectors, as rounding differs element by element.
        err = (q.grad.float() - p.grad.float()).norm() / p.grad.float().norm()
        assert err < 2e-2, (name, float(err))


def test_a_copied_model_computes_its_own_loss():
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    assert use_chunked_loss(model)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.lm_head.weight.mul_(2)
    batch = tiny_batch(50)
    assert copied(**batch).loss != model(**batch).loss
