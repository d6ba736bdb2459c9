"""Generate the backward pass of the forward kernel, from the same predicate, layout and emitters.

Three kernels, appended to the forward's module (which holds `visible()`, the constants and
`launch()`), and `launch_backward()`:

- `attention_bwd_rows`: per query row, delta = rowsum(dO * O) and the LSE in base 2 (always
  through pointers: it streams O and dO once, memory-bound either way);
- `attention_bwd_dkdv`: one program per (batch x key/value head, key tile), over the query
  tiles of its column of the layout (the `COLUMNS` sweep: transposed index tables), for each of
  the GROUP query heads sharing the key/value head, so that dK and dV are summed in registers
  (no atomics: deterministic). Written in the transposed form of Triton's tutorial (p^T, dS^T),
  so no score tile is transposed in registers;
- `attention_bwd_dq`: one program per (batch x head, query tile), over the key tiles of its row
  as the forward visits them (`ROWS`: runs or tables).

p is recomputed from the forward's LSE: p = exp2(q k^T * qk_scale - lse2), lse2 = LSE * log2(e),
+inf for rows that see no key so that their p is exactly 0 (never -inf times anything).
Memory (`Pointers` | `Tma`), token order and routing come from the same emitters as the
forward's; with per-token routing (`query=token`) the dK/dV kernel reads each query row's choice of its
own key block from the choice words.
"""
from __future__ import annotations

from .forward import PLACE, POSITIONS, SHAPE_CHECKS, KernelSpec, emitters
from .iteration import COLUMNS, ROWS, Table
from .memory import OUT, Pointers, Q, Tensor
from .order import KEYS, QUERIES, Order, Tile
from .programs import shifts
from .template import Arg, fill, keywords, signature

BACKWARD_DOC = (" Backward (`launch_backward`): delta = rowsum(dO * O) and the LSE in base 2 per row, then dK/dV"
                " per key tile over the query tiles of its column (the layout's transposed index tables; the GROUP"
                " query heads of a key/value head summed in registers), then dQ per query tile over its row's key"
                " tiles, as the forward.")

# the tensors of the backward kernels (q, k, v as the forward's, in the orientation each kernel needs)
DO = Tensor("DO", "do", "do", QUERIES, "off_h")
DQ = Tensor("DQ", "dq", "dq", QUERIES, "off_h")
DK = Tensor("DK", "dk", "dk", KEYS, "off_kh")
DV = Tensor("DV", "dv", "dv", KEYS, "off_kh")
Q_T = Tensor("Q", "q", "q", QUERIES, "off_h", transposed=True, tile_var="qT")  # dK/dV: k @ q^T
K_ROWS = Tensor("K", "k", "k", KEYS, "off_kh")  # dK/dV's own tiles, [BLOCK_N, HEAD_DIM]
V_ROWS = Tensor("V", "v", "v", KEYS, "off_kh")
K_T = Tensor("K", "k", "k", KEYS, "off_kh", transposed=True, tile_var="kT")  # dQ: q @ k^T, dO @ v^T
V_T = Tensor("V", "v", "v", KEYS, "off_kh", transposed=True, tile_var="vT")

ROWS_TILE = Tile(QUERIES, "tl.program_id(1) * BLOCK_M", "offs_m", "tl.arange(0, BLOCK_M)", own=True)
OWN_QUERIES = Tile(QUERIES, "start_m * BLOCK_M", "offs_m", "tl.arange(0, BLOCK_M)", own=True)
LOOP_KEYS = Tile(KEYS, ROWS.loop, "kv_idx", "offs_n", own=False)
OWN_KEYS = Tile(KEYS, "start_n * BLOCK_N", "kv_idx", "tl.arange(0, BLOCK_N)", own=True)
LOOP_QUERIES = Tile(QUERIES, COLUMNS.loop, "q_idx", "offs_m", own=False)

STATS = [Arg("Delta", "delta"), Arg("Lse2", "lse2")]
STATS_ROWS = STATS + [Arg("stride_dh", "delta.stride(0)")]  # the gradient kernels' view: a (batch, head) row each
LSE_IN = [Arg("Lse", "lse"), Arg("stride_lz", "lse.stride(0)"), Arg("stride_lh", "lse.stride(1)"),
          Arg("DLse", "dlse_arg"), Arg("stride_dlz", "dlse_arg.stride(0)"), Arg("stride_dlh", "dlse_arg.stride(1)")]
SCALARS = [Arg("qk_scale", "scale * LOG2E"), Arg("sm_scale", "scale"), Arg("Q_LEN", "M"), Arg("KV_LEN", "N"),
           Arg("H", "H"), Arg("GROUP", "H // k.shape[1]")]
CONSTEXPRS = [
    [Arg("HEAD_DIM", "HEAD_DIM", True), Arg("BLOCK_M", "BLOCK_M", True), Arg("BLOCK_N", "BLOCK_N", True)],
    [Arg("EVEN_M", "M % BLOCK_M == 0", True), Arg("EVEN_N", "N % BLOCK_N == 0", True),
     Arg("INPUT_PRECISION", '"ieee" if q.dtype == torch.float32 else "tf32"', True)],
]
ROWS_PARAMS = [[Arg("Q_LEN", "M"), Arg("H", "H")],
               [Arg("HEAD_DIM", "HEAD_DIM", True), Arg("BLOCK_M", "BLOCK_M", True),
                Arg("EVEN_M", "M % BLOCK_M == 0", True), Arg("HAS_DLSE", "dlse is not None", True)]]

# routed layouts are built per call: say which tables the dK/dV kernel needs if they lack them
ROUTED_CHECK = [
    'if not hasattr(layout, "q_num_blocks"):',
    '    raise ValueError("routed backward: the layout lacks the transposed index tables of dK/dV: "',
    '                     "full_q_num_blocks, full_q_indices, q_num_blocks, q_indices [B*H, Nt(, W)], "',
    '                     "entries query tile | choice << 30")',
]

ROWS_KERNEL = '''


# ------------------------------------------------------------------------------------ backward
# the gradient kernels hold two tiles of their own (k, v or q, dO) where the forward holds one:
# a pipeline one stage shallower keeps them within the shared memory the forward's config used
NUM_STAGES_BWD = max(1, NUM_STAGES - 1)


@triton.jit
def attention_bwd_rows(
    {params}
):
    """Per query row, before the gradient kernels: delta = rowsum(dO * O) (minus the LSE's own
    gradient, when it has one), and lse2, the LSE in base 2 as they exponentiate."""
    off_hz = tl.program_id(0)
    off_z = off_hz // H
    off_h = off_hz % H
    {load}
    delta = tl.sum(out.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:  # d lse / d s = p: dS = p * (dP - delta + dlse)
        delta -= tl.load(DLse + off_z * stride_dlz + off_h * stride_dlh + offs_m, mask=offs_m < Q_LEN, other=0.0)
    lse = tl.load(Lse + off_z * stride_lz + off_h * stride_lh + offs_m, mask=offs_m < Q_LEN, other=0.0)
    # rows that see no key (LSE = -inf): lse2 = +inf makes p = exp2(s - lse2) = 0 with no inf - inf, and
    # delta = 0 keeps whatever dlse holds there out of 0 * (dP - delta)
    empty = lse == float("-inf")
    lse2 = tl.where(empty, float("inf"), lse / LN2)
    delta = tl.where(empty, 0.0, delta)
    rows = off_hz.to(tl.int64) * Q_LEN + offs_m  # delta and lse2: [B x H, M], contiguous
    tl.store(Delta + rows, delta, mask=offs_m < Q_LEN)
    tl.store(Lse2 + rows, lse2, mask=offs_m < Q_LEN)
'''

DKDV_STEP = '''

@triton.jit
def dkdv_step(dk, dv, k, v, {q_source}, start_m,
              kv_idx, offs_m, off_h, delta_row, lse2_row, qk_scale, Q_LEN, KV_LEN, Q_POS, K_POS, RULE_M, RULE_N,
    {order_params}
              {table_params}
              {routed_params}
              MASKED: tl.constexpr, EVEN_M: tl.constexpr, INPUT_PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """One query tile (at layout position start_m) that sees the key tile: p^T recomputed from
    the forward's LSE, then dV += p^T dO and dK += dS^T q (unscaled: the kernel scales once)."""
    {q_tokens}
    {load_q}
    {stats}
    qkT = tl.dot(k, qT, input_precision=INPUT_PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M], log2 domain
    if MASKED:
        # the predicate is elementwise: transposed indices give the transposed mask
        q_pos = q_idx[None, :] + Q_POS  # the queries' positions (by default the last Q_LEN of the keys)
        keep = visible(q_pos, kv_idx[:, None] + K_POS, off_h, RULE_M, RULE_N{routed_arg}{table_arg})
        qkT = tl.where(keep, qkT, float("-inf"))
    pT = tl.math.exp2(qkT - lse2[None, :])
    dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
    dpT = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
    dsT = pT * (dpT - delta[None, :])
    dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=INPUT_PRECISION)
    return dk, dv
'''

DKDV_KERNEL = '''

@triton.jit
def attention_bwd_dkdv(
    {params}
):
    """One program per (batch x key/value head, key tile): for each of the GROUP query heads
    sharing the key/value head, the query tiles that see the key tile, from the layout's
    transposed index tables (full tiles, then partial ones with the predicate). dK and dV are
    summed over the group in registers: no atomics, deterministic."""
    {program}

    {key_tokens}
    offs_m = tl.arange(0, BLOCK_M)
    {load_kv}
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    for g in range(0, GROUP):
        off_h = off_kh * GROUP + g  # the query heads of this key/value head, one after another
        off_hz = off_z * H + off_h
        # this head's rows of delta and lse2 ([B x H, M], written by attention_bwd_rows)
        delta_row = Delta + off_hz.to(tl.int64) * stride_dh
        lse2_row = Lse2 + off_hz.to(tl.int64) * stride_dh
        {bases}
        {loops}
    dk = dk * sm_scale  # the scores are scale * q k^T: dK takes the scale once, here
    {store}
'''

DQ_STEP = '''

@triton.jit
def dq_step(dq, q, do, lse2, delta, {kv_source}, start_n,
            offs_m, offs_n, off_h, qk_scale, Q_LEN, KV_LEN, Q_POS, K_POS, RULE_M, RULE_N,
    {order_params}
            {table_params}
            {routed_params}
            MASKED: tl.constexpr, EVEN_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
            BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """One key tile (at layout position start_n): p recomputed from the forward's LSE, then
    dQ += dS k (unscaled: the kernel scales once)."""
    {kv_tokens}
    {load_kv}
    qk = tl.dot(q, kT, input_precision=INPUT_PRECISION) * qk_scale  # log2 domain
    if MASKED:
        q_pos = offs_m[:, None] + Q_POS  # the queries' positions (by default the last Q_LEN of the keys)
        keep = visible(q_pos, kv_idx[None, :] + K_POS, off_h, RULE_M, RULE_N{routed_arg}{table_arg})
        if not EVEN_N:
            keep = keep & (kv_idx[None, :] < KV_LEN)
        qk = tl.where(keep, qk, float("-inf"))
    elif not EVEN_N:  # keys past KV_LEN: zero-filled, but exp2(0 - lse2) is not 0
        qk = tl.where(kv_idx[None, :] < KV_LEN, qk, float("-inf"))
    p = tl.math.exp2(qk - lse2[:, None])
    dp = tl.dot(do, vT, input_precision=INPUT_PRECISION)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=INPUT_PRECISION)
    return dq
'''

DQ_KERNEL = '''

@triton.jit
def attention_bwd_dq(
    {params}
):
    """One program per (batch x head, query tile): dQ += dS k over the key tiles of its row, as
    the forward visits them; key tiles {iteration_doc}."""
    {program}

    {query_tokens}
    offs_n = tl.arange(0, BLOCK_N)
    {load_q}
    # this head's rows of delta and lse2 ([B x H, M], written by attention_bwd_rows)
    delta_row = Delta + off_hz.to(tl.int64) * stride_dh
    lse2_row = Lse2 + off_hz.to(tl.int64) * stride_dh
    {stats}
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    {loops}
    dq = dq * sm_scale  # the scores are scale * q k^T: dQ takes the scale once, here
    {store}
'''

LAUNCH = '''

def launch_backward(q, k, v, out, lse, do, layout, scale=None, dq=None, dk=None, dv=None, dlse=None, positions=None{documents_param}):
    """Gradients of `launch`. q [B, H, M, D], k/v [B, Hkv, N, D]; `out` and `lse` [B, H, M]
    (float32, natural log) as `launch(..., lse=lse)` wrote them; `do` the gradient of `out`, and
    `dlse` [B, H, M] that of `lse` where the LSE was used too; `layout`: the one the forward ran
    with (or any object with its {layout_doc}); `positions` as `launch`'s.
    Returns (dq, dk, dv) in the inputs' dtype (accumulated in float32); dq, dk, dv given are
    written in place."""
    B, H, M, D = q.shape
    N = k.shape[2]
    {checks}
    {place}
    if lse.shape != (B, H, M) or lse.dtype != torch.float32:
        raise ValueError(f"lse must be float32 [B, H, M] = {{[B, H, M]}} as launch(..., lse=...) writes it, "
                         f"got {{lse.dtype}} {{list(lse.shape)}}")
    for name, x, like in (("out", out, q), ("do", do, q), ("dq", dq, q), ("dk", dk, k), ("dv", dv, v),
                          ("dlse", dlse, lse)):
        if x is not None and x.shape != like.shape:
            raise ValueError(f"{{name}} must have the shape {{tuple(like.shape)}}, got {{tuple(x.shape)}}")
    {routed_check}
    {predicate_tables}
    tiles = (layout.row_order.shape[-1], layout.q_num_blocks.shape[-1])
    if tiles != (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N)):
        raise ValueError(f"the layout has {{tiles[0]}} x {{tiles[1]}} tiles, but M = {{M}}, N = {{N}} at "
                         f"{{BLOCK_M}} x {{BLOCK_N}} make {{triton.cdiv(M, BLOCK_M)}} x {{triton.cdiv(N, BLOCK_N)}}: "
                         "pass the layout the forward ran with")
    {contiguous}
    lse, dlse_arg = (x if x.stride(-1) == 1 else x.contiguous() for x in (lse, lse if dlse is None else dlse))
    dq = torch.empty_like(q) if dq is None else dq
    dk = torch.empty_like(k) if dk is None else dk
    dv = torch.empty_like(v) if dv is None else dv
    {descriptors}
    scale = D ** -0.5 if scale is None else scale
    delta, lse2 = torch.empty((2, B * H, M), dtype=torch.float32, device=q.device)
    attention_bwd_rows[(B * H, triton.cdiv(M, BLOCK_M))](
        {rows_args}
    )
    {column_tables}
    grid = (B * k.shape[1], {column_programs})  # a program per key tile of each key/value head
    attention_bwd_dkdv[grid](
        {dkdv_args}
        num_warps=NUM_WARPS, num_stages=NUM_STAGES_BWD,
    )
    {layout_tables}
    {row_tables}
    grid = (B * H, {row_programs})
    attention_bwd_dq[grid](
        {dq_args}
        num_warps=NUM_WARPS, num_stages=NUM_STAGES_BWD,
    )
    return dq, dk, dv
'''


def stats(tile: Tile) -> list[str]:
    """Lines loading lse2 and delta for a query tile's rows (from `lse2_row`, `delta_row`)."""
    t = tile.tokens
    return [f"if {tile.side.even}:",
            f"    lse2 = tl.load(lse2_row + {t})",
            f"    delta = tl.load(delta_row + {t})",
            f"else:  # rows past {tile.side.length} get lse2 = +inf: p = 0 there",
            f'    lse2 = tl.load(lse2_row + {t}, mask={t} < {tile.side.length}, other=float("inf"))',
            f"    delta = tl.load(delta_row + {t}, mask={t} < {tile.side.length}, other=0.0)"]


def _call(returns: str, helper: str, args: list[str], side, order: Order, routed, tables, masked: bool) -> list[str]:
    """`returns = helper(args...)`: a step helper's call in a loop body; `side`, the side of the
    tiles looped over."""
    order_args = "".join(f" {a.call}," for group in order.params() for a in group) + tables.step_args
    options = (f"MASKED={masked}, {side.even}={side.even}, INPUT_PRECISION=INPUT_PRECISION, "
               f"{side.block}={side.block},")
    return [f"{returns} = {helper}(", *(f"    {line}," for line in args[:-1]), f"    {args[-1]},{order_args}",
            f"    {routed.call_arg(masked)}{options}", "    HEAD_DIM=HEAD_DIM)"]


def backward_source(spec: KernelSpec) -> str:
    """The backward family for `spec`, to append to its forward module: the kernels and
    `launch_backward()`. Raises ValueError for routing with per-token choices (no dK/dV yet)."""
    memory, iteration, order, routed, tables, program = emitters(spec)
    rows, rows_params = _rows_kernel()
    dkdv, dkdv_params = _dkdv_kernel(memory, order, routed, tables, program)
    dq, dq_params = _dq_kernel(memory, iteration, order, routed, tables, program)
    launch = fill("LAUNCH", LAUNCH, documents_param=program.launch_param, place=PLACE + program.place_checks(),
                  layout_doc=_layout_doc(iteration, program) + tables.layout_doc,
                  checks=SHAPE_CHECKS + program.checks(),
                  routed_check=ROUTED_CHECK if routed.selects else [], predicate_tables=tables.prepare(),
                  contiguous=memory.contiguous([Q, K_ROWS, V_ROWS, OUT, DO]),
                  descriptors=_once(memory.descriptors([Q, K_ROWS, V_ROWS, DO, DQ], order)
                                    + memory.descriptors([DK, DV], order)),
                  rows_args=keywords(rows_params, 8), column_tables=program.prepare("n"),
                  column_programs=program.programs("n"), dkdv_args=keywords(dkdv_params, 8),
                  layout_tables=iteration.prepare(ROWS), row_tables=program.prepare("m"),
                  row_programs=program.programs("m"), dq_args=keywords(dq_params, 8))
    return rows + dkdv + dq + launch


def _rows_kernel() -> tuple[str, list]:
    """The per-row pre-pass, always through pointers: it streams O and dO once."""
    memory, order = Pointers(), Order()
    params = memory.params([OUT, DO]) + [LSE_IN + STATS] + ROWS_PARAMS
    load = (order.tokens(ROWS_TILE) + memory.dims() + memory.tile_pointers(OUT, ROWS_TILE)
            + memory.tile_pointers(DO, ROWS_TILE) + memory.load([OUT, DO], ROWS_TILE, order))
    return fill("ROWS_KERNEL", ROWS_KERNEL, params=signature(params), load=load), params


def _dkdv_kernel(memory, order: Order, routed, tables, program) -> tuple[str, list]:
    """dkdv_step and the dK/dV kernel: a column sweep through the transposed tables (layouts
    have no runs of query tiles per column)."""
    columns = Table()
    layout = columns.params(COLUMNS) + routed.params()
    params = (memory.params([Q_T, K_ROWS, V_ROWS, DO, DK, DV]) + [STATS_ROWS] + layout[:-1]
              + [layout[-1] + program.params("n")] + [SCALARS, POSITIONS] + order.params() + tables.params()
              + program.constexprs(CONSTEXPRS))
    source = ", ".join(memory.step_params([Q_T, DO]))
    step = fill("DKDV_STEP", DKDV_STEP, q_source=source, order_params=signature(order.params()),
                routed_params=routed.step_params(), routed_arg=routed.predicate_param,
                table_params=tables.step_params(), table_arg=tables.predicate_param,
                q_tokens=order.tokens(LOOP_QUERIES),
                load_q=memory.shift([Q_T, DO], LOOP_QUERIES, order) + memory.load([Q_T, DO], LOOP_QUERIES, order),
                stats=stats(LOOP_QUERIES))
    own = [K_ROWS, V_ROWS]
    kernel = fill("DKDV_KERNEL", DKDV_KERNEL, params=signature(params),
                  program=program.program("n", shifts([Q_T, K_ROWS, V_ROWS, DO, DK, DV], "Delta", "Lse2")),
                  key_tokens=order.tokens(OWN_KEYS),
                  load_kv=(memory.dims() + [line for t in own for line in memory.tile_pointers(t, OWN_KEYS)]
                           + memory.load(own, OWN_KEYS, order)),
                  bases=memory.bases([Q_T, DO], LOOP_QUERIES, order),
                  loops=columns.loops(COLUMNS, routed, lambda masked: _call(
                      "dk, dv", "dkdv_step", [f"dk, dv, k, v, {source}, start_m, kv_idx, offs_m, off_h",
                                              "delta_row, lse2_row, qk_scale, Q_LEN, KV_LEN, Q_POS, K_POS, RULE_M, RULE_N"],
                      QUERIES, order, routed, tables, masked), program.clips),
                  store=_once([line for t in (DK, DV) for line in memory.tile_pointers(t, OWN_KEYS)
                               + memory.store(t, OWN_KEYS, order, t.var)]))
    return step + kernel, params


def _dq_kernel(memory, iteration, order: Order, routed, tables, program) -> tuple[str, list]:
    """dq_step and the dQ kernel: a row sweep, iterated as the forward's."""
    layout = iteration.params(ROWS) + routed.params()
    params = (memory.params([Q, K_T, V_T, DO, DQ]) + [STATS_ROWS] + layout[:-1] + [layout[-1] + program.params("m")]
              + [SCALARS, POSITIONS] + order.params() + tables.params() + program.constexprs(CONSTEXPRS))
    source = ", ".join(memory.step_params([K_T, V_T]))
    step = fill("DQ_STEP", DQ_STEP, kv_source=source, order_params=signature(order.params()),
                routed_params=routed.step_params(), routed_arg=routed.predicate_param,
                table_params=tables.step_params(), table_arg=tables.predicate_param,
                kv_tokens=order.tokens(LOOP_KEYS),
                load_kv=memory.shift([K_T, V_T], LOOP_KEYS, order) + memory.load([K_T, V_T], LOOP_KEYS, order))
    own = [Q, DO]
    kernel = fill("DQ_KERNEL", DQ_KERNEL, params=signature(params), iteration_doc=iteration.doc(ROWS),
                  program=program.program("m", shifts([Q, K_T, V_T, DO, DQ], "Delta", "Lse2")),
                  query_tokens=order.tokens(OWN_QUERIES),
                  load_q=(memory.dims() + [line for t in own for line in memory.tile_pointers(t, OWN_QUERIES)]
                          + memory.bases([K_T, V_T], LOOP_KEYS, order)
                          + memory.load(own, OWN_QUERIES, order)),
                  stats=stats(OWN_QUERIES),
                  loops=iteration.loops(ROWS, routed, lambda masked: _call(
                      "dq", "dq_step", [f"dq, q, do, lse2, delta, {source}, start_n, offs_m, offs_n, off_h",
                                        "qk_scale, Q_LEN, KV_LEN, Q_POS, K_POS, RULE_M, RULE_N"], KEYS, order, routed,
                                        tables, masked),
                                        program.clips),
                  store=memory.tile_pointers(DQ, OWN_QUERIES) + memory.store(DQ, OWN_QUERIES, order, "dq"))
    return step + kernel, params


def _once(lines: list[str]) -> list[str]:
    """`lines` without the repeats of a comment line (two descriptor stores or groups: one note)."""
    kept, seen = [], set()
    for line in lines:
        if line.lstrip().startswith("#") and line in seen:
            continue
        seen.add(line)
        kept.append(line)
    return kept


def _layout_doc(iteration, program) -> str:
    """What launch_backward() reads of the layout: the dQ kernel's row iteration, and the
    transposed tables."""
    order = "" if program.packed else ", `row_order`"
    return iteration.layout_doc(ROWS) + order + ";\n    for dK/dV the transposed " + Table().layout_doc(COLUMNS)
