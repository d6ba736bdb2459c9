"""Hugging Face transformers integration (`patternc.integrations.transformers`), on the CPU with
tiny randomly initialised models built in code (no downloads): logits and greedy generation
against `attn_implementation="eager"` with the same mask (sliding windows through Mistral's and
Qwen2's own configs), per-layer patterns, training, padding, and the refusals. Most tests run
patternc's dense CPU reference; `test_generated_kernels` runs the generated Triton kernels in the
interpreter, forward and backward."""
from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'patternc[hf]')")

from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

import patternc.integrations.transformers as hf
from patternc import PatternError

SHAPE = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
         "intermediate_size": 128, "vocab_size": 128, "max_position_embeddings": 256, "pad_token_id": 0}
WINDOW = "causal & window(8)"


@pytest.fixture(scope="module", autouse=True)
def registered():
    hf.register()  # no defaults: every test sets the config's pattern
    warnings.filterwarnings("ignore", message="patternc.attention on CPU tensors")


def models(eager_config, pattern=None, patterns=None, config=None, seed=0):
    """(eager model, patternc model with the same weights), in eval mode."""
    torch.manual_seed(seed)
    eager = AutoModelForCausalLM.from_config(eager_config, attn_implementation="eager").eval()
    config = config if config is not None else type(eager_config)(**SHAPE)
    hf.configure(config, pattern=pattern, patterns=patterns)
    ours = AutoModelForCausalLM.from_config(config, attn_implementation="patternc").eval()
    ours.load_state_dict(eager.state_dict())
    return eager, ours


def prompt(batch=2, length=20, seed=1):
    return torch.randint(1, SHAPE["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def generate(model, ids, **kw):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.logits)


def assert_same_generation(eager, ours, ids, **kw):
    seq_e, logits_e = generate(eager, ids, **kw)
    seq_o, logits_o = generate(ours, ids, **kw)
    assert torch.equal(seq_e, seq_o)
    torch.testing.assert_close(logits_o, logits_e, atol=2e-5, rtol=1e-4)


@torch.no_grad()
def assert_same_logits(eager, ours, ids, **kw):
    torch.testing.assert_close(ours(ids, **kw).logits, eager(ids, **kw).logits, atol=2e-5, rtol=1e-4)


# --------------------------------------------------------------------------- same mask, same numbers


def test_causal_prefill_and_generation_match_eager():
    eager, ours = models(LlamaConfig(**SHAPE), pattern="causal")
    ids = prompt()
    assert_same_logits(eager, ours, ids)
    assert_same_generation(eager, ours, ids)
    assert_same_generation(eager, ours, ids, cache_implementation="static")  # empty slots cut off


def test_window_matches_eager_sliding_window():
    """patternc's window on a Llama (whose cache keeps every key: decode is M=1 of N keys,
    bottom-right) against Mistral's own sliding window of 8 in eager attention."""
    eager, ours = models(MistralConfig(**SHAPE, sliding_window=8), pattern=WINDOW, config=LlamaConfig(**SHAPE))
    ids = prompt()
    assert_same_logits(eager, ours, ids)
    assert_same_generation(eager, ours, ids)


def test_per_layer_patterns_match_eager_layer_types():
    """Layer 0 local, layer 1 global: Qwen2's `layer_types` in eager against patternc patterns."""
    local = Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8, max_window_layers=0,
                        layer_types=["sliding_attention", "full_attention"])
    eager, ours = models(local, patterns=[WINDOW, "causal"])
    assert ours.config.patternc_layer_patterns == [WINDOW, "causal"]
    ids = prompt()
    assert_same_logits(eager, ours, ids)
    assert_same_generation(eager, ours, ids)


def test_register_defaults_and_files(tmp_path):
    """`register(patterns=...)` defaults, `"file.pat:name"`, and configure() surviving
    save_pretrained / from_pretrained."""
    pat = tmp_path / "model.pat"
    pat.write_text("pattern local(w = 8): causal & window(w)\npattern dense: causal\n")
    hf.register(patterns=[f"{pat}:local", None], pattern=f"{pat}:dense", name="patternc_defaults")
    local = Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8, max_window_layers=0,
                        layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    eager = AutoModelForCausalLM.from_config(local, attn_implementation="eager").eval()
    ours = AutoModelForCausalLM.from_config(Qwen2Config(**SHAPE), attn_implementation="patternc_defaults").eval()
    ours.load_state_dict(eager.state_dict())
    assert_same_logits(eager, ours, prompt())

    hf.configure(ours.config, patterns=[f"{pat}:local", f"{pat}:dense"])
    ours.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", attn_implementation="patternc").eval()
    assert loaded.config.patternc_layer_patterns[0].startswith("pattern local")
    assert_same_logits(eager, loaded, prompt())


def test_model_window_is_intersected():
    """On a model with its own sliding window, `causal` runs as `causal & window(8)` (with a
    warning), also through Mistral's sliding-window cache that drops old keys."""
    config = MistralConfig(**SHAPE, sliding_window=8)
    eager, ours = models(config, pattern="causal", config=MistralConfig(**SHAPE, sliding_window=8))
    ids = prompt()
    with pytest.warns(UserWarning, match=r"runs `causal & window\(8\)`"):
        assert_same_logits(eager, ours, ids)
    assert_same_generation(eager, ours, ids)


def test_sliding_cache_refuses_absolute_positions():
    _, ours = models(MistralConfig(**SHAPE, sliding_window=8), pattern="causal & (window(8) | sink(2))",
                     config=MistralConfig(**SHAPE, sliding_window=8))
    if hasattr(transformers.cache_utils, "DynamicSlidingWindowLayer"):  # before 4.57, caches kept every key
        with pytest.warns(UserWarning), pytest.raises(PatternError, match="sliding-window cache dropped"):
            generate(ours, prompt())
    with warnings.catch_warnings():  # `past_key_values` is `cache` in recent versions (the old name still works)
        warnings.simplefilter("ignore")
        generate(ours, prompt(), past_key_values=DynamicCache())  # a cache that keeps every key: runs


# --------------------------------------------------------------------------- training


def test_training_gradients_match_eager_and_loss_decreases():
    eager, ours = models(MistralConfig(**SHAPE, sliding_window=8), pattern=WINDOW, config=LlamaConfig(**SHAPE))
    ids = prompt(batch=4, length=24)
    for model in (eager, ours):
        model.train()
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
    for (name, a), b in zip(ours.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)

    optimizer = torch.optim.AdamW(ours.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = ours(ids, labels=ids).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_dropout_in_training_is_refused():
    config = LlamaConfig(**SHAPE, attention_dropout=0.1)
    hf.configure(config, pattern="causal")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="patternc").train()
    with pytest.raises(PatternError, match="no dropout"):
        model(prompt())
    with torch.no_grad():
        model.eval()(prompt())  # eval passes dropout 0


# --------------------------------------------------------------------------- padding and refusals


def test_right_padding_is_honoured():
    eager, ours = models(MistralConfig(**SHAPE, sliding_window=8), pattern=WINDOW, config=LlamaConfig(**SHAPE))
    ids = prompt(length=16)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    with torch.no_grad():
        a, b = eager(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(b[real], a[real], atol=2e-5, rtol=1e-4)  # padding tokens: unspecified


def test_left_padding_is_refused():
    _, ours = models(LlamaConfig(**SHAPE), pattern="causal")
    ids = prompt(length=12)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with pytest.raises(PatternError, match=r"batch row 1.*hides 3 keys") as info:
        ours.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    assert "padding_side = 'right'" in info.value.hint


@pytest.mark.parametrize("through", ["position_ids", "cu_seq_lens"])
def test_packed_sequences_match_each_document_alone(through):
    """DataCollatorWithFlattening's packing: one row, position ids restarting per document (and,
    for FlashAttention's path, cu_seq_lens); eager on each document alone is the reference."""
    eager, ours = models(MistralConfig(**SHAPE, sliding_window=4), pattern="causal & (window(4) | sink(2))",
                         config=LlamaConfig(**SHAPE))
    lengths = [5, 9, 1, 6]
    ids = prompt(batch=1, length=sum(lengths))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    extra = {}
    if through == "cu_seq_lens":
        cu = torch.tensor([0, 5, 14, 15, 21], dtype=torch.int32)
        extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 9, "max_length_k": 9}
    with torch.no_grad():
        got = ours(ids, position_ids=position_ids, use_cache=False, **extra).logits
        # eager's own sliding window (4) differs from the pattern; each document alone, with the
        # same pattern through patternc on one sequence, and eager where the pattern is eager's rule
        starts = [0, 5, 14, 15]
        for start, n in zip(starts, lengths):
            alone = ours(ids[:, start:start + n], use_cache=False).logits
            torch.testing.assert_close(got[:, start:start + n], alone, atol=2e-5, rtol=1e-4)
    eager_c, ours_c = models(LlamaConfig(**SHAPE), pattern="causal")
    with torch.no_grad():
        got = ours_c(ids, position_ids=position_ids, use_cache=False, **extra).logits
        for start, n in zip([0, 5, 14, 15], lengths):
            torch.testing.assert_close(got[:, start:start + n], eager_c(ids[:, start:start + n]).logits,
                                       atol=2e-5, rtol=1e-4)


def test_packed_training_and_refusals():
    _, ours = models(LlamaConfig(**SHAPE), pattern="causal & window(4)")
    ours.train()
    ids = prompt(batch=1, length=16)
    position_ids = torch.cat([torch.arange(7), torch.arange(9)])[None]
    loss = ours(ids, position_ids=position_ids, labels=ids, use_cache=False).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters() if p.requires_grad)
    with pytest.raises(PatternError, match="batch of 2 rows"):
        ours(prompt(batch=2, length=16), position_ids=position_ids.expand(2, -1), use_cache=False)


def test_custom_masks_are_refused_or_accepted_by_value():
    _, ours = models(LlamaConfig(**SHAPE), pattern="causal")
    ids = prompt(length=10)
    causal = torch.ones(10, 10).tril().bool()[None, None].expand(2, 1, 10, 10)
    with torch.no_grad():
        ours(ids, attention_mask=causal)  # exactly the causal mask: runs
        with pytest.raises(PatternError, match="shows 9 keys"):
            ours(ids, attention_mask=torch.ones(2, 1, 10, 10, dtype=torch.bool))
        bias = torch.zeros(2, 1, 10, 10).masked_fill(~causal, torch.finfo(torch.float32).min)
        ours(ids, attention_mask=bias)  # additive 0 / minimum: runs
        with pytest.raises(PatternError, match="adds a bias"):
            ours(ids, attention_mask=bias + 0.5 * causal)


def test_configuration_errors():
    with pytest.raises(PatternError, match="no pattern"):
        AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE), attn_implementation="patternc")(prompt())
    with pytest.raises(PatternError, match="1 layer patterns for a model of 2 layers"):
        hf.configure(LlamaConfig(**SHAPE), patterns=["causal"])
    config = LlamaConfig(**SHAPE)
    config.patternc_layer_patterns = ["causal"]
    with pytest.raises(PatternError, match="has 1 entries, for a model of 2 layers"):
        AutoModelForCausalLM.from_config(config, attn_implementation="patternc")(prompt())
    with pytest.raises(PatternError, match="head_dim 12 is not supported"):
        wide = hf.configure(LlamaConfig(**dict(SHAPE, hidden_size=48)), pattern="causal")
        AutoModelForCausalLM.from_config(wide, attn_implementation="patternc")(prompt())
    with pytest.raises(PatternError, match="list with one pattern per layer"):
        hf.register(patterns="causal")
    with pytest.raises(PatternError, match="expected a Pattern"):
        hf.resolve(3)


# --------------------------------------------------------------------------- the generated kernels


def test_generated_kernels(interpret):
    """The same comparisons through the generated Triton kernels (interpreter): prefill, decode
    steps with the cache, and one backward."""
    eager, ours = models(MistralConfig(**SHAPE, sliding_window=8), pattern=WINDOW, config=LlamaConfig(**SHAPE))
    ids = prompt(batch=1, length=12)
    assert_same_logits(eager, ours, ids)
    seq_e, logits_e = generate(eager, ids)
    seq_o, logits_o = generate(ours, ids)
    assert torch.equal(seq_e, seq_o)
    torch.testing.assert_close(logits_o, logits_e, atol=1e-4, rtol=1e-3)
    for model in (eager, ours):
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
    for a, b in zip(ours.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3)


def test_compiled_model():
    """transformers compiles static-cache decoding: the attention call is a graph break there."""
    eager, ours = models(MistralConfig(**SHAPE, sliding_window=8), pattern=WINDOW, config=LlamaConfig(**SHAPE))
    compiled = torch.compile(ours, backend="eager")
    assert_same_logits(eager, compiled, prompt())
