"""The tail of a written module: the problem it serves, the data its `launch` reads (int32
tensors, zlib-compressed and base64-encoded in the file) and `attention()`, over the generated
kernel source. A routed pattern's module also holds patternc's routing kernels
(`patternc/runtime/routing.py` as it is: torch and triton only) and their plan, and chooses its
key blocks from q and k on every call, as `patternc.attention` does."""
from __future__ import annotations

import ast
import base64
import inspect
import re
import textwrap
import zlib

TAIL = '''

# ---------------------------------------------------------------------------- compiled problem
# Written by `patternc compile`: the problem this module serves, the layout's tables for it, and
# `attention()`, which checks its inputs against them and calls `launch` above.{routed_note}
import base64 as _base64
import os as _os
import types as _types
import zlib as _zlib

PATTERN_NAME = {name!r}
SEQ_LEN = {M}  # queries
KV_SEQ_LEN = {N}  # keys and values
HEADS = {H}  # query heads (key/value heads: any divisor, for GQA/MQA)
DTYPE = torch.{dtype}
_INTERPRETED = _os.environ.get("TRITON_INTERPRET") == "1"  # read by triton.jit when the kernels above were defined

# The layout data `launch` reads (`layout.<name>`; `name()` for a method): int32 tensors, each
# (shape, shared by every head, zlib-compressed little-endian bytes in base64); a tensor shared
# by every head is stored once and expanded.
LAYOUT_DATA = {{
{tables}
}}
_layouts = {{}}


def _tensor(shape, shared, blob):
    data = torch.frombuffer(bytearray(_zlib.decompress(_base64.b64decode(blob))), dtype=torch.int32).view(shape)
    return data.expand(HEADS, *shape[1:]) if shared else data


def _value(entry, device):
    if isinstance(entry, list):  # a method returning a tuple of tensors
        values = tuple(_tensor(*e).to(device) for e in entry)
        return lambda: values
    return _tensor(*entry).to(device)


def layout_on(device):
    """The layout object `launch` reads{plan_doc}, its tensors on `device` (made once per device)."""
    device = torch.device(device)
    if device not in _layouts:
        _layouts[device] = _types.SimpleNamespace(
            **{{name.removesuffix("()"): _value(entry, device) for name, entry in LAYOUT_DATA.items()}})
    return _layouts[device]
{layout_functions}


def _check(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{{name}} must be a 4-D tensor [batch, heads, length, head_dim], "
                             f"got {{getattr(x, 'shape', type(x).__name__)}}")
    B, H, M, D = q.shape
    expect = {{"q": (B, HEADS, SEQ_LEN, HEAD_DIM), "k": (B, k.shape[1], KV_SEQ_LEN, HEAD_DIM),
              "v": (B, k.shape[1], KV_SEQ_LEN, HEAD_DIM)}}
    for name, x in (("q", q), ("k", k), ("v", v)):
        if tuple(x.shape) != expect[name]:
            raise ValueError(f"{{name}} has shape {{tuple(x.shape)}} but this module was compiled for {{expect[name]}} "
                             f"(batch, heads, length, head_dim); recompile with patternc compile for other shapes")
    if k.shape[1] < 1 or HEADS % k.shape[1]:
        raise ValueError(f"key/value heads ({{k.shape[1]}}) must divide the query heads ({{HEADS}}) for GQA/MQA")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype != DTYPE:
            raise ValueError(f"{{name}} is {{x.dtype}} but this module was compiled for {{DTYPE}}; "
                             f"recompile with patternc compile --dtype for another")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {{q.device}}, {{k.device}}, {{v.device}}")
    if q.device.type == "cpu" and not _INTERPRETED:
        raise ValueError("CPU tensors run only in Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                         "this module, or move q, k, v to the GPU")


class _Attention(torch.autograd.Function):
    """The kernels above with their gradients: launch forward, launch_backward backward."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        lse = torch.empty(q.shape[0], HEADS, SEQ_LEN, dtype=torch.float32, device=q.device)
        ctx.layout = _layout(q, k)
        out, lse = launch(q, k, v, ctx.layout, scale=scale, lse=lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = launch_backward(q, k, v, out, lse, dout.contiguous(), _backward_layout(ctx.layout),
                                     scale=ctx.scale, dlse=dlse)
        return dq, dk, dv, None


def attention(q, k, v, scale=None, return_lse=False):
    """Sparse attention with this module's pattern: q [B, HEADS, SEQ_LEN, HEAD_DIM], k and v
    [B, Hkv, KV_SEQ_LEN, HEAD_DIM] (Hkv divides HEADS), all DTYPE on one device; `scale` defaults
    to HEAD_DIM ** -0.5. Returns out [B, HEADS, SEQ_LEN, HEAD_DIM], and with return_lse=True also
    the log-sum-exp [B, HEADS, SEQ_LEN] (float32, natural log). Rows that see no key get 0 and
    LSE = -inf. Differentiable in q, k, v (and through the LSE): the backward kernels above run
    when a gradient is asked for."""
    _check(q, k, v)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out, lse = _Attention.apply(q, k, v, scale)
        return (out, lse) if return_lse else out
    lse = torch.empty(q.shape[0], HEADS, SEQ_LEN, dtype=torch.float32, device=q.device) if return_lse else None
    out, lse = launch(q, k, v, _layout(q, k), scale=scale, lse=lse)
    return (out, lse) if return_lse else out
'''


# how `_layout` finds the layout of a call: the compiled one, or (routed) one chosen from q and k
STATIC = '''

def _layout(q, k):
    """The layout `launch` reads: the compiled problem's, on q's device."""
    return layout_on(q.device)


def _backward_layout(layout):
    return layout  # the layout data carries the transposed tables too
'''

ROUTED = '''

# The topk's options and the plan's shape, as `route` reads them (patternc.runtime.routed.RoutedPlan)
ROUTING = {routing}


def _layout(q, k):
    """This call's layout: key blocks chosen from q and k on the device (`route`, above), then
    their index tables; the plan's tables of bits too."""
    plan = layout_on(q.device)
    return _types.SimpleNamespace(**route(_types.SimpleNamespace(**vars(plan), **ROUTING), q, k),
                                  block_tables=plan.block_tables)


def _backward_layout(layout):
    """The dK/dV kernel's transposed tables too, from the forward's choice."""
    return _types.SimpleNamespace(**vars(layout), **transposed(
        layout.full_kv_num_blocks, layout.full_kv_indices, layout.kv_num_blocks, layout.kv_indices, layout.key_tiles))
'''


def tail_source(name: str, M: int, N: int, H: int, dtype: str, data: dict, routing: dict | None = None) -> str:
    """The tail for the problem (`data`: the layout's tensors by name, as `layout_data` gives
    them); `routing`: a routed pattern's topk options and plan shape (`data` then holds the
    plan's tensors), None for a static pattern."""
    # a plan's tensors are stored whole: the routing kernels read a candidate's class with its tile's strides
    tables = "\n".join(_encode(n, v, H if routing is None else 0) for n, v in data.items())
    if routing is None:
        return TAIL.format(name=name, M=M, N=N, H=H, dtype=dtype, tables=tables, routed_note="", plan_doc="",
                           layout_functions=STATIC)
    options = "".join(f"\n    {key!r}: {value!r}," for key, value in routing.items())
    functions = ROUTED.format(routing=f"{{{options}\n}}")
    note = ("\n# A routed pattern: the routing kernels and `route` above (patternc's, as they are) choose the\n"
            "# key blocks from q and k on every call and write the index tables from the plan's.")
    return "\n\n\n" + routing_source() + TAIL.format(name=name, M=M, N=N, H=H, dtype=dtype, tables=tables,
                                                     routed_note=note, plan_doc=" (the plan the routing kernels read)",
                                                     layout_functions=functions)


def routing_source() -> str:
    """patternc/runtime/routing.py without its docstring and `__future__` import."""
    from ..runtime import routing

    text = inspect.getsource(routing)
    first = next(node for node in ast.parse(text).body
                 if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                 and not (isinstance(node, ast.ImportFrom) and node.module == "__future__"))
    return ("# ---------------------------------------------------------------------------- routing\n"
            "# patternc/runtime/routing.py: the routing kernels, `route` and `transposed`\n"
            + "\n".join(text.splitlines()[first.lineno - 1:]).strip("\n"))

def layout_reads(source: str) -> list[str]:
    """The layout attributes the generated `launch` reads, in order of first use (`runs()` for a
    method call): they are what the written module must carry."""
    launch = source[source.index("\ndef launch("):]
    found = re.findall(r"\blayout\.(\w+)(\(\))?", launch)
    return list(dict.fromkeys(name + call for name, call in found))


def _encode_tensor(tensor, heads: int, indent: str = "    ") -> str:
    import numpy as np
    import torch

    tensor = tensor.cpu()
    shared = heads > 1 and tensor.shape[0] == heads and torch.equal(tensor, tensor[:1].expand_as(tensor))
    data = np.ascontiguousarray((tensor[:1] if shared else tensor).numpy(), dtype="<i4")
    blob = base64.b64encode(zlib.compress(data.tobytes(), 9)).decode()
    lines = "\n".join(f'{indent}    "{line}"' for line in textwrap.wrap(blob, 96) or [""])
    return f"({tuple(data.shape)!r}, {shared}, (\n{lines}\n{indent}))"


def _encode(name: str, value, heads: int) -> str:
    if isinstance(value, tuple):
        items = "".join(f"        {_encode_tensor(t, heads, ' ' * 8)},\n" for t in value)
        return f'    "{name}": [\n{items}    ],'
    return f'    "{name}": {_encode_tensor(value, heads)},'


def layout_data(layout, names: list[str]) -> dict:
    """{name: tensor or tuple of tensors} for `layout_reads` names."""
    out = {}
    for name in names:
        value = getattr(layout, name.removesuffix("()"))
        out[name] = value() if name.endswith("()") else value
        items = out[name] if isinstance(out[name], tuple) else (out[name],)
        if out[name] is None or not all(hasattr(t, "dtype") and str(t.dtype) == "torch.int32" for t in items):
            raise TypeError(f"the generated launch reads layout.{name}, which is not int32 tensors; "
                            "patternc.aot can't write it out")
    return out


