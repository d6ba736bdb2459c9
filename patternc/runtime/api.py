"""`patternc.attention`: the public entry. Inference calls the cached kernel path directly;
training (inputs that need grad) and `torch.compile` go through the custom op with autograd."""
from __future__ import annotations

from ..errors import PatternError
from .attention import _attention, as_pattern, config_key


def attention(q, k, v, pattern, scale: float | None = None, return_lse: bool = False, config: dict | None = None,
              return_layout: bool = False, documents=None):
    """Sparse attention: `softmax(q k^T * scale, masked by pattern) v`.

    q `[B, H, M, D]`, k and v `[B, Hkv, N, D]` (PyTorch SDPA layout; H a multiple of Hkv for
    GQA/MQA); float16, bfloat16 or float32; D in 16, 32, 64, 128, 256. `pattern` is a `Pattern`,
    pattern text, or a `@patternc.jit` object; `scale` defaults to `D ** -0.5`. Returns the
    output `[B, H, M, D]` (q's dtype), and with `return_lse=True` also the log-sum-exp
    `[B, H, M]` (float32, natural log). Queries that see no key get 0 and LSE = -inf.

    On CUDA the generated Triton kernel runs. On the CPU it runs under `TRITON_INTERPRET=1`
    (slow; for tests), else a dense masked reference does, with a one-time warning.
    Routed patterns (`topk`) select their key blocks from q and k on every call, on the device;
    `return_layout=True` also returns the layout used (for routed patterns a `RoutedLayout` whose
    `selection [B, H, nQ, nK]` holds the chosen blocks).

    The first call for a problem shape autotunes the kernel config on this device (cached on
    disk; `PATTERNC_AUTOTUNE=0` takes the default config instead); `config` overrides it:
    `{"block_m", "block_n", "num_warps", "num_stages"}`, and `"iteration"`: "runs" loops over
    ranges of key tiles where every row has few runs (the default, "auto"), "table" always reads
    index tables; `"memory"`: "pointers" (default) or
    "tma" (Hopper tensor descriptors; box order reads pointers whatever it says); `"order"`: "auto"
    (residue order for dilated/strided patterns, box order for neighborhoods on a 2-D/3-D grid
    where it visits fewer tiles), "natural" or "box".

    Packed documents (variable-length batches): `documents` holds int32 cumulative boundaries
    `[docs + 1]` on q's device (FlashAttention's `cu_seqlens`: 0, then each document's end, the
    last N), for self-attention (M == N; batch entries share the boundaries, usually batch 1).
    The pattern applies inside each document with positions from its first token (`sink(4)`:
    each document's first 4 tokens), and no key of another document is visible; a routed `topk`
    chooses among its document's blocks, as on the document alone. Patterns whose rule reads the
    length (`window(N // 8)`, grids, `random`) are refused. The boundaries are checked (0 first,
    N last, never decreasing: one host sync per boundaries tensor and version, skipped while a
    CUDA graph is captured); the kernel's programs are laid out from them on the device.

    Training: when q, k or v require grad the call takes autograd's path (under `torch.compile`
    the `patternc::attention` custom op, `runtime/autograd.py`; in eager mode an
    `autograd.Function`, `runtime/eager.py`), whose backward runs generated backward kernels;
    the LSE output is differentiable too. Under autocast, q, k and v are cast to the autocast
    dtype. `return_layout=True` is for inspection and takes no gradients.
    """
    import torch

    if torch._C._is_any_autocast_enabled():  # cheap first: reading q.device.type costs more
        device = getattr(q, "device", None)  # anything else gets its error from the checks
        if device is not None and device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
            q, k, v = (x.to(dtype) for x in (q, k, v))
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (getattr(q, "requires_grad", False)
                                                                      or getattr(k, "requires_grad", False)
                                                                      or getattr(v, "requires_grad", False))):
        if return_layout:
            raise PatternError("return_layout=True takes no gradients (and can't be compiled)", None,
                               "call it under torch.no_grad() to inspect the layout")
        if torch.compiler.is_compiling():
            # imported on first use: it brings in torch.compile's machinery (seconds)
            from .autograd import attention_op, problem_key

            text = pattern if isinstance(pattern, str) else as_pattern(pattern).text
            out, lse = attention_op(q, k, v, documents, problem_key(text, config_key(config)), scale)
        else:  # eager: the same passes through an autograd.Function, a fraction of the op's host time
            from .eager import Attention

            out, lse = Attention.apply(q, k, v, documents, pattern, config, scale)
        return (out, lse) if return_lse else out
    return _attention(q, k, v, pattern, scale, return_lse, config, return_layout, documents)
