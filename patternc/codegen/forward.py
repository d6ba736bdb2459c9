"""Generate a Triton flash-attention forward kernel specialised to one pattern.

The generated module reads like Triton's fused-attention tutorial: a header with the pattern
and layout summary, the pattern's predicate (one line per primitive), the online-softmax step,
the kernel (full tiles without the predicate, then partial tiles with it, an epilogue that
writes 0 / LSE = -inf for rows that see no key) and a small `launch()`. It needs only torch and
triton, so `patternc compile` writes it out as it is.

The module is composed from one emitter per axis, and only the branch taken is emitted:
iteration (`Runs` | `Table`, over the `ROWS` sweep), memory (`Pointers` | `Tma`), token order
(`Order`: natural | residue, or `Boxes`) and routing (`Static` | `ByBlock` | `ByToken`). The templates below are
the forward family's own text; the kernel's parameters and the launch's keyword arguments come
from the same `Arg` lists, so the two can't disagree.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

from ..version import __version__
from .iteration import ROWS, Runs, Table
from .memory import OUT, K, Pointers, Q, Tma, V
from .order import KEYS, QUERIES, Boxes, Order, Tile
from .predicate import FLOOR_HELPERS, Predicate, predicate_lines, trace
from .programs import programs, shifts
from .routed import MODES
from .tables import Tables
from .template import Arg, fill, keywords, signature

GENERATOR_VERSION = 14  # bump when the generated code changes: it is part of every cache key


@dataclass(frozen=True)
class KernelSpec:
    """Everything that changes the generated code."""

    pattern_text: str
    predicate: Predicate
    head_dim: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    runs: tuple[int, int] | None = None  # (full, partial) runs per row; None: index tables
    tma: bool = False
    residue: int | None = None  # tokens ordered by residue class modulo this (Layout.permutation)
    box: object = None  # or box by box over the grid: the layout's `layout.box.BoxOrder`
    # topk at run time: per (batch, head) tables; "block": partial entries carry the choice of
    # their key block, "token": every query row reads its own choice (a bit per key block)
    routed: str = ""
    documents: bool = False  # packed documents (`documents=` boundaries at launch)

    def __post_init__(self):
        if self.routed not in MODES:
            raise ValueError(f"routed must be one of {', '.join(map(repr, MODES))}, got {self.routed!r}")
        if self.predicate.routed != bool(self.routed):
            raise ValueError(f"the pattern {'is' if self.predicate.routed else 'is not'} routed but routed="
                             f"{self.routed!r}: routed patterns need 'block' or 'token', others ''")
        if self.routed and self.runs is not None:
            raise ValueError(f"routed kernels read their choices from index tables: runs must be None, "
                             f"got {self.runs}")
        if self.documents and (self.tma or self.residue is not None or self.box is not None):
            raise ValueError("packed documents need pointers and natural token order (a document starts anywhere: "
                             "no TMA box, residue class or box of a grid lines up with it)")
        if self.box is not None and (self.tma and not self.box.tma or self.residue is not None):
            raise ValueError("this box order reads tiles through pointers (a box of a dilation group, or two boxes "
                             "side by side, is no TMA box), and is no residue order")


def make_spec(pattern, *, heads: int, M: int, N: int, head_dim: int, block_m: int, block_n: int,
              num_warps: int, num_stages: int, runs: tuple[int, int] | None = None, tma: bool = False,
              residue: int | None = None, box=None, routed: str = "", documents: bool = False) -> KernelSpec:
    """The kernel for `pattern` with `heads` query heads. Lengths matter only to patterns on a
    token grid (their index arithmetic uses the grid's shape); other kernels serve every length."""
    predicate = trace(pattern.sections(heads), pattern.rule_grid(M, N))
    return KernelSpec(str(pattern), predicate, head_dim, block_m, block_n, num_warps, num_stages, runs, tma,
                      residue, box, routed, documents)


QUERY_TILE = Tile(QUERIES, "start_m * BLOCK_M", "offs_m", "tl.arange(0, BLOCK_M)", own=True)
KEY_TILE = Tile(KEYS, ROWS.loop, "kv_idx", "offs_n", own=False)

LSE = [Arg("Lse", "lse_arg"), Arg("stride_lz", "lse_arg.stride(0)"), Arg("stride_lh", "lse_arg.stride(1)")]
SCALARS = [Arg("qk_scale", "scale * LOG2E"), Arg("Q_LEN", "M"), Arg("KV_LEN", "N"), Arg("H", "H"),
           Arg("GROUP", "H // k.shape[1]")]
# where the rule places queries and keys: query row i at position Q_POS + i, key j at K_POS + j,
# and the lengths it reads (`positions=`; by default the queries are the last M of the N keys)
POSITIONS = [Arg("Q_POS", "q_pos"), Arg("K_POS", "k_pos"), Arg("RULE_M", "rule_m"), Arg("RULE_N", "rule_n")]
PLACE = ["q_pos, k_pos, rule_m, rule_n = (N - M, 0, M, N) if positions is None else positions"]
CONSTEXPRS = [
    [Arg("HEAD_DIM", "HEAD_DIM", True), Arg("BLOCK_M", "BLOCK_M", True), Arg("BLOCK_N", "BLOCK_N", True)],
    [Arg("EVEN_M", "M % BLOCK_M == 0", True), Arg("EVEN_N", "N % BLOCK_N == 0", True),
     Arg("WRITE_LSE", "lse is not None", True),
     Arg("INPUT_PRECISION", '"ieee" if q.dtype == torch.float32 else "tf32"', True)],
]

HEADER = '''"""patternc generated attention kernel ({passes}).

pattern:
{pattern}

{description}
{summary}
Generated by patternc {version} (generator {generator}). Needs torch and triton only.
"""
import torch
import triton
import triton.language as tl
{imports}

BLOCK_M = {block_m}
BLOCK_N = {block_n}
HEAD_DIM = {head_dim}
NUM_WARPS = {num_warps}
NUM_STAGES = {num_stages}
{constants}
LOG2E = 1.4426950408889634  # log2(e): launch() folds it into qk_scale, so the kernel exponentiates with exp2
LN2 = tl.constexpr(0.6931471805599453)  # ln(2), back to a natural-log LSE (kernels read constexpr globals only)
'''

PREDICATE = '''

@triton.jit
def visible(q_pos, kv_idx, off_h, Q_LEN, KV_LEN{routed_param}{table_param}):
    """The pattern's rule for a tile: q_pos [BLOCK_M, 1] (query positions: by default row +
    KV_LEN - Q_LEN, the queries are the last Q_LEN keys), kv_idx [1, BLOCK_N] (key positions),
    Q_LEN, KV_LEN the lengths the rule reads -> bool."""
    {predicate}
'''

STEP = '''

@triton.jit
def online_softmax_step(acc, l_i, m_i, q, {kv_source}, start_n,
                        offs_m, offs_n, off_h, qk_scale, Q_LEN, KV_LEN, Q_POS, K_POS, RULE_M, RULE_N,
    {order_params}
                        {table_params}
                        {routed_params}
                        MASKED: tl.constexpr, EVEN_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                        BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """One key tile (at layout position start_n): scores, masking (partial tiles only), and the
    running softmax update."""
    {kv_tokens}
    {load_kv}
    qk = tl.dot(q, k, input_precision=INPUT_PRECISION)
    if MASKED:
        q_pos = offs_m[:, None] + Q_POS  # the queries' positions (by default the last Q_LEN of the keys)
        keep = visible(q_pos, kv_idx[None, :] + K_POS, off_h, RULE_M, RULE_N{routed_arg}{table_arg})
        if not EVEN_N:
            keep = keep & (kv_idx[None, :] < KV_LEN)
        qk = tl.where(keep, qk * qk_scale, float("-inf"))  # log2 domain: exp2 below
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen no key yet
        qk = qk - m_use[:, None]
    else:
        if not EVEN_N:
            qk = tl.where(kv_idx[None, :] < KV_LEN, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = m_new
        qk = qk * qk_scale - m_use[:, None]
    p = tl.math.exp2(qk)
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
    return acc, l_i, m_new
'''

STEP_CALL = '''acc, l_i, m_i = online_softmax_step(
    acc, l_i, m_i, q, {kv_source}, start_n, offs_m, offs_n, off_h,
    qk_scale, Q_LEN, KV_LEN, Q_POS, K_POS, RULE_M, RULE_N,{order_args}{table_args}
    {routed_arg}MASKED={masked}, EVEN_N=EVEN_N, INPUT_PRECISION=INPUT_PRECISION, BLOCK_N=BLOCK_N,
    HEAD_DIM=HEAD_DIM)'''

KERNEL = '''

@triton.jit
def attention_fwd(
    {params}
):
    """One program per (batch x head, query tile): full key tiles first (no predicate), then
    partial ones (predicate); key tiles {iteration_doc}."""
    {program}

    {query_tokens}
    offs_n = tl.arange(0, BLOCK_N)
    {load_q}

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    {loops}
    # epilogue: rows that saw no key get 0 and LSE = -inf (never 0/0)
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    {store_out}
    if WRITE_LSE:
        log2_l = tl.math.log2(tl.where(empty, 1.0, l_i))
        lse = tl.where(empty, float("-inf"), (m_i + log2_l) * LN2)  # natural log
        tl.store(Lse + off_z * stride_lz + off_h * stride_lh + offs_m, lse, mask=offs_m < Q_LEN)
'''

# launch()'s checks of q, k, v (launch_backward() makes them too)
SHAPE_CHECKS = [
    "if D != HEAD_DIM:",
    '    raise ValueError(f"q has head_dim {D}, but this kernel was generated for HEAD_DIM = {HEAD_DIM}")',
    "if k.shape[1] != v.shape[1] or k.shape[1] < 1 or H % k.shape[1]:",
    "    raise ValueError(f\"k and v need one number of heads that divides q's {H} (GQA/MQA), got k \"",
    '                     f"{tuple(k.shape)} and v {tuple(v.shape)}")',
]

LAUNCH = '''

def launch(q, k, v, layout, scale=None, out=None, lse=None, positions=None{documents_param}):
    """Run the kernel. q [B, H, M, D], k/v [B, Hkv, N, D]; `layout`: a patternc Layout at
    BLOCK_M x BLOCK_N tiles (or any object with its {layout_doc}).
    `positions` = (q_pos, k_pos, rule_m, rule_n): query row i at position q_pos + i and key j at
    k_pos + j of a sequence the rule reads as rule_m x rule_n (a block of a longer attention, with
    the layout's tiles for that block); None: the queries are the last M of the N keys.
    Returns (out, lse or None)."""
    B, H, M, D = q.shape
    N = k.shape[2]
    {checks}
    {place}
    {contiguous}
    out = torch.empty_like(q) if out is None else out
    {descriptors}
    scale = D ** -0.5 if scale is None else scale
    lse_arg = lse if lse is not None else torch.empty(1, 1, 1, device=q.device)  # unused unless WRITE_LSE
    {layout_tables}
    {predicate_tables}
    {programs}
    grid = (B * H, {row_programs})  # x (heads) varies fastest: every head's long rows go first
    attention_fwd[grid](
        {args}
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out, lse
'''


def emitters(spec: KernelSpec) -> tuple:
    """(memory, iteration, order, routing, tables, programs): the emitter of each axis for this spec."""
    return (Tma() if spec.tma else Pointers(), Table() if spec.runs is None else Runs(*spec.runs),
            Order(spec.residue) if spec.box is None else Boxes(spec.box), MODES[spec.routed],
            Tables(spec.predicate.tables),
            programs(spec.documents, MODES[spec.routed]))


def forward_source(spec: KernelSpec, summary: str = "", backward_doc: str = "") -> str:
    """The forward family as formatted Python source: the module's header, the predicate, the
    kernel and `launch()`. `summary` (lines ending in a newline) describes the layout in the
    header; `backward_doc`, when a backward family follows, what it adds."""
    memory, iteration, order, routed, tables, program = emitters(spec)
    kv_source = ", ".join(memory.step_params([K, V]))
    order_args = "".join(f" {a.call}," for group in order.params() for a in group)

    def step(masked: bool) -> list[str]:
        return fill("STEP_CALL", STEP_CALL, kv_source=kv_source, order_args=order_args, table_args=tables.step_args,
                    routed_arg=routed.call_arg(masked), masked=str(masked)).split("\n")

    # the kernel's parameters, a line each: tensors (then Lse), the layout (then its row order), scalars,
    # the token order's, constexprs; launch() passes the same list by keyword
    io = memory.params([Q, K, V, OUT])
    layout = iteration.params(ROWS) + routed.params()
    params = (io[:-1] + [io[-1] + LSE] + layout[:-1] + [layout[-1] + program.params("m")] + [SCALARS, POSITIONS]
              + order.params() + tables.params() + program.constexprs(CONSTEXPRS))
    description = textwrap.fill(
        f"tiles: BLOCK_M={spec.block_m} x BLOCK_N={spec.block_n}, head_dim {spec.head_dim}, {spec.num_warps} warps, "
        f"pipeline depth {spec.num_stages}; key tiles {iteration.doc(ROWS)}; memory through {memory.doc}; "
        f"{order.doc}{tables.doc}{program.doc}.{backward_doc}".replace("\n    ", " "), width=96)
    header = fill("HEADER", HEADER, passes="forward and backward" if backward_doc else "forward",
                  pattern=textwrap.indent(spec.pattern_text, "    "), description=description, summary=summary,
                  version=__version__, generator=str(GENERATOR_VERSION), imports=list(program.imports + memory.imports),
                  block_m=str(spec.block_m), block_n=str(spec.block_n), head_dim=str(spec.head_dim),
                  num_warps=str(spec.num_warps), num_stages=str(spec.num_stages), constants=order.constants())
    predicate = fill("PREDICATE", PREDICATE, routed_param=routed.predicate_param, table_param=tables.predicate_param,
                     predicate=predicate_lines(spec.predicate))
    step_fn = fill("STEP", STEP, kv_source=kv_source, order_params=signature(order.params()),
                   routed_params=routed.step_params(), routed_arg=routed.predicate_param,
                   table_params=tables.step_params(), table_arg=tables.predicate_param,
                   kv_tokens=order.tokens(KEY_TILE),
                   load_kv=memory.shift([K, V], KEY_TILE, order) + memory.load([K, V], KEY_TILE, order))
    kernel = fill("KERNEL", KERNEL, params=signature(params), iteration_doc=iteration.doc(ROWS),
                  program=program.program("m", shifts([Q, K, V, OUT], "Lse")),
                  query_tokens=order.tokens(QUERY_TILE),
                  load_q=(memory.dims() + memory.tile_pointers(Q, QUERY_TILE) + memory.bases([K, V], KEY_TILE, order)
                          + memory.load([Q], QUERY_TILE, order)),
                  loops=iteration.loops(ROWS, routed, step, program.clips),
                  store_out=memory.tile_pointers(OUT, QUERY_TILE) + memory.store(OUT, QUERY_TILE, order, "out"))
    launch = fill("LAUNCH", LAUNCH, documents_param=program.launch_param, place=PLACE + program.place_checks(),
                  layout_doc=iteration.layout_doc(ROWS) + tables.layout_doc, checks=SHAPE_CHECKS + program.checks(),
                  contiguous=memory.contiguous([Q, K, V]),
                  descriptors=memory.descriptors([Q, K, V, OUT], order), layout_tables=iteration.prepare(ROWS),
                  predicate_tables=tables.prepare(), programs=program.prepare("m"), row_programs=program.programs("m"),
                  args=keywords(params, 8))
    helpers = ((FLOOR_HELPERS if spec.predicate.uses_floor else "") + memory.helper + order.helper + tables.helper
               + program.helper)
    return header + helpers + predicate + step_fn + kernel + launch
