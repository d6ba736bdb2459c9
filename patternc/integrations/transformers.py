"""Hugging Face transformers: every attention layer of a model through `patternc.attention`.

    import patternc.integrations.transformers as patternc_hf
    patternc_hf.register(pattern="causal & (window(1024) | sink(4))")     # one pattern, every layer
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="patternc")

`register` adds `"patternc"` to transformers' `AttentionInterface` (the attention function) and
`AttentionMaskInterface` (transformers' SDPA mask builder, so padding reaches patternc instead of
being dropped). The pattern of a layer (`module.layer_idx`) comes, first found, from
`config.patternc_layer_patterns[i]` (a list, one entry per layer; `None` falls through),
`config.patternc_pattern`, `register(patterns=[...])[i]`, `register(pattern=...)`. Each is a
`Pattern`, a `@patternc.jit` object, pattern text or `"file.pat:name"`; `configure(config, ...)`
stores canonical text in the config, so `save_pretrained`/`from_pretrained` keep it.

What runs: `pattern & rule`, where `rule` is the model's own mask rule for the layer: `causal`
(decoders; `full` where the module is not causal) and `window(w)` where the layer has a sliding
window `w` (Mistral, Gemma, Qwen2 sliding layers). A pattern that already holds the rule's terms
(`causal & window(1024)`) runs as written; otherwise a warning names what runs. Queries are the
last M of the N keys (bottom-right, as transformers' KV-cache decoding), so prefill (M == N) and
decoding (M < N) run the same pattern.

Masks transformers passes (checked once per mask tensor; every layer gets the same one):
- None, or exactly the rule's mask at these positions: runs.
- Right padding (tokens after a row's end, hidden from every query): runs; every real token's
  output is exact, padding tokens' outputs are unspecified (the loss masks them).
- Static caches (key slots past the last token, hidden): the empty slots are cut off.
- Packed sequences (training and prefill, batch 1): documents from `cu_seq_lens_q/_k`
  (`DataCollatorWithFlattening`) or from `position_ids` restarting at 0; the pattern runs inside
  each document (`patternc.attention(..., documents=...)`).
- Anything else (left or middle padding, custom 4-D masks, additive biases): `PatternError`.
  patternc runs one pattern for every batch row.
A sliding-window cache that dropped old keys runs only where the pattern is exactly the rule
(absolute positions are gone). No dropout (refused in training), no softcap, no sinks
(`s_aux`), no position bias; head_dim 16, 32, 64, 128 or 256; GQA k/v pass unrepeated. Under
`torch.compile` (transformers compiles static-cache decoding) the call is a graph break.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
import weakref
from functools import lru_cache

import torch

from .. import Pattern, PatternError, attention, compile, load
from ..runtime.attention import SUPPORTED_HEAD_DIMS, as_pattern

NAME = "patternc"
CONFIG_PATTERN = "patternc_pattern"  # one pattern for every layer
CONFIG_LAYER_PATTERNS = "patternc_layer_patterns"  # a list, one entry per layer
SUPPORTED = "transformers>=4.53,<6"  # the `hf` extra (tested: 4.53.3, 4.55.4, 4.57.6, 5.0.0, 5.24.0)

_HINT_PATTERN = (f"register(pattern='causal & window(1024)') or patterns=[...] (one per layer), or set "
                 f"config.{CONFIG_PATTERN} / config.{CONFIG_LAYER_PATTERNS} before building the model")


def register(pattern=None, patterns=None, name: str = NAME):
    """Register `attn_implementation=name` ("patternc") with transformers.

    `pattern`: one pattern for every layer; `patterns`: a list with one per layer (`None`
    entries fall back to `pattern`), e.g. Gemma-style `["causal & window(512)", "causal"] * 13`.
    Both are defaults: `config.patternc_pattern` / `config.patternc_layer_patterns` win. Each
    entry is a `Pattern`, a `@patternc.jit` object, pattern text or `"file.pat:name"`, resolved
    here (errors now, not at the first forward). Returns the registered attention function.
    """
    interfaces = _transformers()
    one = None if pattern is None else resolve(pattern)
    per_layer = None if patterns is None else tuple(None if p is None else resolve(p) for p in _as_list(patterns))

    def patternc_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return attention_forward(module, query, key, value, attention_mask, scaling, dropout,
                                 defaults=(one, per_layer), **kwargs)

    attention_interface, mask_interface, sdpa_mask = interfaces
    attention_interface.register(name, patternc_attention)
    mask_interface.register(name, sdpa_mask)  # boolean masks, None where SDPA would use is_causal
    return patternc_attention


def configure(config, pattern=None, patterns=None):
    """Store patterns in a transformers config as canonical pattern text (JSON, so that
    `save_pretrained` / `from_pretrained` keep them): `config.patternc_pattern`,
    `config.patternc_layer_patterns`. Returns the config."""
    if pattern is not None:
        setattr(config, CONFIG_PATTERN, str(resolve(pattern)))
    if patterns is not None:
        texts = [None if p is None else str(resolve(p)) for p in _as_list(patterns)]
        layers = getattr(config, "num_hidden_layers", None)
        if layers is not None and len(texts) != layers:
            raise PatternError(f"{len(texts)} layer patterns for a model of {layers} layers", None,
                               "give one entry per layer (None: the single pattern)")
        setattr(config, CONFIG_LAYER_PATTERNS, texts)
    return config


def resolve(spec) -> Pattern:
    """A `Pattern` from a Pattern, a `@patternc.jit` object, pattern text, `"file.pat:name"`, or
    `"file.pat"` holding one pattern (read relative to the working directory, once)."""
    file = re.fullmatch(r"\s*(.+?\.pat)(?::(\w+))?\s*", spec) if isinstance(spec, str) else None
    return as_pattern(spec) if file is None else _from_file(file[1], file[2])


@lru_cache(maxsize=256)
def _from_file(path: str, name: str | None) -> Pattern:
    patterns = load(path)
    if name is not None:
        return patterns[name]
    if len(patterns) != 1:
        raise PatternError(f"{path} defines {len(patterns)} patterns ({', '.join(patterns)})", None,
                           f"pick one: '{path}:{next(iter(patterns), 'name')}'")
    return next(iter(patterns.values()))


def _as_list(patterns) -> list:
    if isinstance(patterns, (str, Pattern)) or not hasattr(patterns, "__iter__"):
        raise PatternError(f"patterns= takes a list with one pattern per layer, got {type(patterns).__name__}",
                           None, "one pattern for every layer: pattern=...")
    return list(patterns)


def _transformers():
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:
        raise PatternError(f"patternc's Hugging Face integration needs {SUPPORTED} ({e})", None,
                           "pip install 'patternc[hf]'") from None
    return AttentionInterface, AttentionMaskInterface, sdpa_mask


# --------------------------------------------------------------------------- the attention function


@torch.compiler.disable  # the checks read tensors; under torch.compile (static-cache decoding) a graph break
def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, defaults=(None, None),
                      **kwargs):
    """transformers' attention contract: query `[B, H, M, D]`, key/value `[B, Hkv, N, D]` (after
    the cache update), `attention_mask` None or 4-D; returns (`[B, M, H, D]`, None)."""
    layer = getattr(module, "layer_idx", None)
    where = f"layer {layer}" if layer is not None else type(module).__name__
    _refuse_unsupported(module, query, dropout, kwargs, where)
    pattern = layer_pattern(module, defaults, where)
    causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if causal is None else causal)
    window = kwargs.get("sliding_window") or None
    rule = _rule(causal, window)
    M, N = query.shape[2], key.shape[2]
    documents = _documents(kwargs, query.shape[0], M, N, query.device, where)
    keep = N if documents is not None else _keys_kept(attention_mask, causal, M, N, where)
    if attention_mask is not None:
        _memo(attention_mask, ("mask", M, keep, causal, window, documents is None),
              lambda: _check_mask(attention_mask, M, N, keep, causal, window, rule, where, documents))
    if documents is not None:
        out = attention(query, key, value, _effective(pattern, rule), scale=scaling, documents=documents)
        return out.transpose(1, 2).contiguous(), None
    last = None if _is_rule(pattern, rule) else _last_position(kwargs.get("position_ids"), M)
    if last is not None and last + 1 > keep:
        raise PatternError(
            f"{where}: the cache holds the last {keep} keys of {last + 1} tokens (a sliding-window cache dropped "
            f"the oldest), so key indices are not positions and the pattern `{pattern}` can't be placed", None,
            f"give this layer exactly `{' & '.join(rule)}`, or generate with a cache that keeps every key "
            "(a DynamicCache() built without the config)")
    if keep < N:  # static cache: the slots past the last token are empty
        key, value = key[:, :, :keep], value[:, :, :keep]
    out = attention(query, key, value, _effective(pattern, rule), scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _refuse_unsupported(module, query, dropout, kwargs, where):
    if dropout and getattr(module, "training", False):
        raise PatternError(f"{where}: attention dropout {dropout} in training: patternc attention has no dropout",
                           None, "set config.attention_dropout = 0.0 (or train with attn_implementation='sdpa')")
    for name, what in (("softcap", "logit softcapping"), ("s_aux", "attention sinks (s_aux)"),
                       ("position_bias", "a position bias")):
        if kwargs.get(name) is not None:
            raise PatternError(f"{where}: this model's attention uses {what}, which patternc attention lacks", None,
                               "use attn_implementation='eager' or 'sdpa' for this model")
    D = query.shape[-1]
    if D not in SUPPORTED_HEAD_DIMS:
        raise PatternError(f"{where}: head_dim {D} is not supported by patternc attention", None,
                           f"supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))} (the model's head_dim, or "
                           "hidden_size // num_attention_heads)")


def layer_pattern(module, defaults=(None, None), where: str = "this layer") -> Pattern:
    """The pattern of an attention module: the config's, then `register`'s (see the module doc)."""
    config = getattr(module, "config", None)
    layer = getattr(module, "layer_idx", None)
    sources = [(f"config.{CONFIG_LAYER_PATTERNS}", getattr(config, CONFIG_LAYER_PATTERNS, None),
                getattr(config, CONFIG_PATTERN, None)), ("register(patterns=...)", *reversed(defaults))]
    for list_name, per_layer, one in sources:
        if per_layer is not None:
            layers = getattr(config, "num_hidden_layers", None)
            if layer is None or (layers is not None and len(per_layer) != layers) or layer >= len(per_layer):
                raise PatternError(f"{where}: {list_name} has {len(per_layer)} entries, for a model of "
                                   f"{layers if layers is not None else '?'} layers"
                                   + ("" if layer is not None else " (and this module has no layer_idx)"), None,
                                   "one entry per layer (None: the single pattern)")
            if per_layer[layer] is not None:
                return resolve(per_layer[layer])
        if one is not None:
            return resolve(one)
    raise PatternError(f"{where}: no pattern for attn_implementation='{NAME}'", None, _HINT_PATTERN)


def _rule(causal: bool, window: int | None) -> tuple[str, ...]:
    """The model's own mask rule as pattern terms. transformers' sliding window is
    `q - w < k` (causal) or `|q - k| <= w` (bidirectional): `window(w)` and `window(w + 1)`."""
    terms = ("causal",) if causal else ()
    if window:
        terms += (f"window({int(window) if causal else int(window) + 1})",)
    return terms


def _conjuncts(node) -> list:
    from ..ir.nodes import Intersect

    return _conjuncts(node.a) + _conjuncts(node.b) if isinstance(node, Intersect) else [node]


def _bodies(pattern: Pattern) -> list:
    return [s.expr for s in pattern.sections()] if isinstance(pattern.body, tuple) else [pattern.expr]


@lru_cache(maxsize=256)
def _effective(pattern: Pattern, rule: tuple[str, ...]) -> Pattern:
    """`pattern & rule`, leaving out the rule's terms the pattern already has (the same object
    when it has them all, so the kernel cache keeps hitting)."""
    terms = [compile(t).expr for t in rule]

    def narrowed(expr):
        have = _conjuncts(expr)
        for t in terms:
            if t not in have:
                expr = expr & t
        return expr

    if isinstance(pattern.body, tuple):
        sections = pattern.sections()
        body = tuple(dataclasses.replace(s, expr=narrowed(s.expr)) for s in sections)
        same = body == tuple(sections)
    else:
        body = narrowed(pattern.expr)
        same = body == pattern.expr
    if same:
        return pattern
    result = dataclasses.replace(pattern, body=body)
    warnings.warn(f"patternc runs `{result}`: the pattern `{pattern}` intersected with the model's own mask rule "
                  f"`{' & '.join(rule)}`", stacklevel=2)
    return result


@lru_cache(maxsize=256)
def _is_rule(pattern: Pattern, rule: tuple[str, ...]) -> bool:
    """Does `pattern & rule` equal the rule (the pattern adds no term of its own)?"""
    terms = [compile(t).expr for t in rule]
    return all(all(c in terms for c in _conjuncts(body)) for body in _bodies(pattern))


# --------------------------------------------------------------------------- masks and positions


_MEMO: dict = {}


def _memo(tensor, key, compute):
    """`compute()` once per live tensor and key: transformers hands every layer the same mask and
    position ids, so the checks (and their device syncs) run once per forward."""
    slot = (id(tensor), key)
    entry = _MEMO.get(slot)
    if entry is not None and entry[0]() is tensor and entry[1] == tensor._version:
        return entry[2]
    value = compute()
    if len(_MEMO) > 64:
        _MEMO.clear()
    _MEMO[slot] = (weakref.ref(tensor), tensor._version, value)
    return value


def _keys_kept(mask, causal: bool, M: int, N: int, where: str) -> int:
    """How many leading keys hold tokens. A static cache hands every slot: with no mask at
    prefill (SDPA's reading: an empty cache, is_causal), the first M; with a mask, up to the
    last key any query sees, where that leaves the queries at positions >= 0."""
    if mask is None:
        return M if causal and 1 < M < N else N
    if N <= M:
        return N

    def last_seen():
        seen = _visible(mask, where).reshape(-1, N).any(0).nonzero()
        return int(seen[-1]) + 1 if len(seen) else N

    kept = _memo(mask, ("kept", M, N), last_seen)
    return kept if kept >= M else N


def _documents(kwargs, B: int, M: int, N: int, device, where: str):
    """Boundaries of packed documents (int32, on `device`), or None: FlashAttention's
    `cu_seq_lens_q`/`_k` when transformers passes them (`DataCollatorWithFlattening`), else
    `position_ids` that restart at 0 inside a row of one sequence with no cache (M == N)."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None or cu_k is not None:
        if cu_q is None or cu_k is None or not torch.equal(cu_q, cu_k) or M != N:
            raise PatternError(f"{where}: packed sequences need the same boundaries for queries and keys "
                               "(self-attention, no cache)", None, "pack prompts for prefill or training only")
        documents = cu_q
    else:
        position_ids = kwargs.get("position_ids")
        if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.shape[-1] != M \
                or M != N:
            return None
        documents = _memo(position_ids, "documents", lambda: _restarts(position_ids))
        if documents is None:
            return None
    if B != 1:
        raise PatternError(f"{where}: packed sequences in a batch of {B} rows; patternc takes packed documents in "
                           "one row (batch 1), as DataCollatorWithFlattening makes them", None,
                           "pack every document into one row")
    return documents.to(device=device, dtype=torch.int32)


def _restarts(position_ids):
    """Document boundaries where the position ids restart at 0 (each document counting 0, 1, 2,
    ...; every row alike), or None for a single sequence."""
    row = position_ids[0]
    starts = (row == 0).nonzero().flatten()
    if len(starts) < 2 or not (position_ids == row).all():
        return None  # rows that differ are padded, not packed: the mask check decides
    bounds = torch.cat([starts, starts.new_tensor([row.shape[0]])])
    counting = torch.arange(row.shape[0], device=row.device) - torch.repeat_interleave(starts, bounds.diff())
    if int(starts[0]) != 0 or not torch.equal(row, counting):
        return None  # not documents counting from 0: the mask check decides
    return bounds


def _last_position(position_ids, M: int) -> int | None:
    import torch

    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.shape[-1] != M:
        return None
    return _memo(position_ids, "last", lambda: int(position_ids[:, -1].max()))


def _visible(mask, where: str):
    """A boolean view of a 4-D mask: boolean as is; float masks are additive (0: seen; the
    dtype's minimum or -inf: hidden), anything else is a bias patternc can't add."""
    import torch

    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise PatternError(f"{where}: a {mask.dtype} attention mask; expected bool or an additive float mask")
    hidden = mask <= torch.finfo(mask.dtype).min / 2
    if not (hidden | (mask == 0)).all():
        raise PatternError(f"{where}: the attention mask adds a bias to the scores (values other than 0 and "
                           "the minimum), which patternc attention can't apply", None,
                           "use attn_implementation='sdpa' or 'eager' for models with ALiBi or relative biases")
    return ~hidden


def _check_mask(mask, M: int, N: int, keep: int, causal: bool, window, rule, where: str, documents=None):
    """Raise unless the mask is the rule's mask for queries at positions keep-M .. keep-1 over
    the first `keep` keys (the rest hidden), up to padding tokens: rows whose own key no query
    sees, whose outputs are then unspecified (right padding). With packed `documents`, the
    rule's mask inside each document."""
    import torch

    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[-2:]) != (M, N):
        raise PatternError(f"{where}: expected a 4-D attention mask [batch, 1, {M}, {N}], got "
                           f"{tuple(getattr(mask, 'shape', ())) or type(mask).__name__}", None,
                           f"register() sets transformers' SDPA mask builder for attn_implementation='{NAME}'")
    visible = _visible(mask, where)
    pos = torch.arange(M, device=mask.device) + (keep - M)
    keys = torch.arange(N, device=mask.device)
    d = pos[:, None] - keys[None, :]
    expected = keys[None, :] < keep
    if causal:
        expected = expected & (d >= 0)
    if window:
        expected = expected & ((d < window) if causal else (d.abs() <= window))
    if documents is not None:
        doc = torch.searchsorted(documents[1:].to(mask.device), keys, right=True)
        expected = expected & (doc[:, None] == doc[None, :])
    wrong = (visible != expected).any(-1)  # [B, h, M]
    if not wrong.any():
        return True
    own = visible[..., torch.arange(M, device=mask.device), pos]  # does each query see its own key?
    seen = visible.any(-2)[..., pos]  # does any query see it?
    bad = wrong & (own | seen)  # padding tokens (own key unseen by all) may differ
    if not bad.any():
        return True
    b, h, q = (int(x) for x in bad.nonzero()[0])
    hides = int((expected[q] & ~visible[b, h, q]).sum())
    shows = int((visible[b, h, q] & ~expected[q]).sum())
    what = " and ".join(s for s in (f"hides {hides} keys" if hides else "", f"shows {shows} keys" if shows else "") if s)
    raise PatternError(
        f"{where}: the attention mask is not the model's own `{' & '.join(rule) or 'full'}` mask: in batch row {b}, "
        f"query {q} (position {keep - M + q}) it {what} beyond it (left or inner padding, packed sequences or a "
        "custom mask); patternc runs one pattern for every batch row", None,
        "pad on the right (tokenizer.padding_side = 'right': honoured, padding tokens' outputs are unspecified), or "
        "batch sequences of one length; generate from one prompt, or prompts of one length, at a time")
