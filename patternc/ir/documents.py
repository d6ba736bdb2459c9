"""Packed documents: several documents in one sequence, the pattern applied inside each.

`documents` holds cumulative boundaries, FlashAttention's varlen convention: int32
`[docs + 1]`, from 0 to the sequence length N, non-decreasing (an empty document is allowed and
holds no token). Inside a document the pattern sees a sequence of its own: its first token is
position 0 (`sink(4)` is each document's first 4 tokens) and no key of another document is
visible. Self-attention only (M == N), so a document's queries and keys are the same tokens.

A pattern applies per document only if its rule reads no length: one document is as long as it
is, so `window(N // 8)`, a token grid (which fixes the length) and per-head tables drawn for a
length (`random`) are refused with the reason.

A routed pattern (`topk`) chooses inside each document, as on the document alone: its routing
blocks start at the document's first token (the last one partial), key and query blocks are
pooled over their own tokens, and a query chooses among its document's blocks only (own block,
causal rule and ties as without documents, in document positions). The kernels do so on the
device (`runtime/routing.py`); the masks here slice q and k per document. Layouts, the
FlexAttention export and the simulator take static patterns only (`routed=False`).
"""
from __future__ import annotations

import dataclasses

from ..errors import PatternError
from .expr import Sym, _term

HINT = "documents= takes int32 cumulative boundaries [0, len_0, len_0 + len_1, ..., N] (FlashAttention's cu_seqlens)"


def check_tensor(documents, N: int, device) -> None:
    """The checks that need no look at the values (no host sync): a 1-D int32 tensor of at least
    two boundaries on `device`."""
    import torch

    if not isinstance(documents, torch.Tensor):
        raise PatternError(f"documents must be a torch tensor, got {type(documents).__name__}", None, HINT)
    if documents.dtype != torch.int32 or documents.dim() != 1 or documents.shape[0] < 2:
        raise PatternError(f"documents must be a 1-D int32 tensor of at least 2 boundaries, got {documents.dtype} "
                           f"{list(documents.shape)}", None, HINT)
    if documents.device != torch.device(device):
        raise PatternError(f"documents are on {documents.device} but q, k, v on {device}", None,
                           "put the boundaries on the inputs' device (the kernels read them there)")


def check_values(documents, N: int) -> None:
    """The boundaries start at 0, end at N and never decrease (one host sync)."""
    import torch

    first, last = documents[0], documents[-1]
    bad = (first != 0) | (last != N) | torch.any(documents[1:] < documents[:-1])
    if bool(bad):
        values = documents.tolist()
        shown = values if len(values) <= 12 else values[:6] + ["..."] + values[-5:]
        where = next((i for i in range(1, len(values)) if values[i] < values[i - 1]), None)
        why = (f"they start at {values[0]}, not 0" if values[0] != 0 else
               f"they end at {values[-1]}, not at the sequence length {N}" if values[-1] != N else
               f"they decrease at index {where} ({values[where - 1]} -> {values[where]})")
        raise PatternError(f"bad document boundaries {shown}: {why}", None, HINT)


def boundaries(documents, N: int) -> list[int]:
    """Checked boundaries as Python ints (the reference paths: masks, host layouts)."""
    import torch

    if not isinstance(documents, torch.Tensor):
        try:
            documents = torch.tensor(list(documents), dtype=torch.int32)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise PatternError(f"documents must be a sequence of integer boundaries, got {documents!r}", None,
                               HINT) from None
    check_tensor(documents, N, documents.device)
    check_values(documents, N)
    return documents.tolist()


def check_pattern(pattern, heads: int | None = None, routed: bool = False) -> None:
    """Refuse, with the reason, a pattern whose rule can't apply per document (see the module);
    routed ones unless `routed` (the caller selects per document: kernels and masks)."""
    why = None
    if pattern.is_routed and not routed:
        why = ("routed patterns (topk) choose their blocks from q and k: over packed documents only "
               "patternc.attention, Pattern.mask(q=, k=) and reference_attention take them (no layout, "
               "FlexAttention export or simulation yet)")
    elif pattern.grid is not None or pattern.rule_grid(1, 1) is not None:
        why = "its token grid fixes the sequence's length, which each document has its own of"
    else:
        for section in pattern.sections(heads):
            # traced with query rows at their positions (M == N inside a document): any M or N left
            # in the rule comes from the pattern itself; a routed primitive reads none (its blocks
            # count from the document's first token), the static ones around it are traced alone
            ctx = dataclasses.replace(pattern.context(section, Sym("N"), Sym("N"), Sym("h"), lengths=(1, 1)),
                                      q_offset=0)
            rules = ([n for n in section.expr.walk() if not n.children() and not n.routed] if pattern.is_routed
                     else [section.expr])
            try:
                terms = [_term(rule.visible(ctx, Sym("q"), Sym("k"))) for rule in rules]
            except NotImplementedError:
                why = "it looks up tables drawn for one sequence length (random)"
                break
            if any(t.free_vars() & {"M", "N"} for t in terms):
                why = f"its rule `{section.expr}` reads the sequence length (M or N), which each document has its own of"
                break
    if why:
        raise PatternError(f"pattern {pattern.name or str(pattern)!r} can't apply per document: {why}",
                           pattern.span, "write the pattern with lengths that don't depend on N, or call it "
                           "once per document")


def document_mask(pattern, N: int, heads: int | None, documents, device="cpu", q=None, k=None):
    """`Pattern.mask` over packed documents: bool [heads, N, N], each document's own mask on the
    diagonal, False elsewhere. `q` [H, N, D], `k` [Hkv, N, D] (checked by `Pattern.mask`): a
    routed pattern's data, each document's own tokens given to its mask."""
    import torch

    check_pattern(pattern, heads, routed=True)
    bounds = boundaries(documents, N)
    H = pattern.sections(heads)[-1].hi + 1
    out = torch.zeros(H, N, N, dtype=torch.bool, device=device)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            data = {} if q is None else {"q": q[:, start:end], "k": k[:, start:end]}
            out[:, start:end, start:end] = pattern.mask(end - start, heads=heads, device=device, **data)
    return out
