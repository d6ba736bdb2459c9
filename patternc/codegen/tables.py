"""Tables: the bits a predicate looks up, for primitives whose rule reads a table (`random`).

Such a rule is traced into `table(slot, h, Q, K)` terms (`primitives.tables.lookup`): `trace`
turns each into a call of the `table_bit` helper on table argument `slot`, one argument per
`primitives.tables.table_primitives` entry. `launch()` takes the tables from
`layout.block_tables()` (int32 `[H, rows, words]`: entry `[h, r, c]` is bit `c % 32` of word
`c // 32`, built once per shape on the host), and every kernel passes them down to `visible()`.
With no table the emitter adds nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.expr import Term
from .template import Arg

TABLE_HELPER = '''

@triton.jit
def table_bit(table, stride_th, rows, words, off_h, row, col):
    """Entry [off_h, row, col] of a table of bits: int32 words [H, rows, words], column c in bit
    c % 32 of word c // 32. False outside the table (rows and columns past its end)."""
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < 32 * words)
    word = tl.load(table + off_h * stride_th + row * words + col // 32, mask=inside, other=0)
    return ((word >> (col % 32)) & 1) != 0
'''


def _names(i: int) -> tuple[str, str, str, str]:
    return f"table_{i}", f"stride_t{i}h", f"rows_t{i}", f"words_t{i}"


def table_calls(term: Term) -> Term:
    """`term` with every `table(slot, h, Q, K)` a call `table_bit(<argument slot>, h, Q, K)`."""
    if term.op == "table":
        slot, *rest = term.args
        return Term("table_bit", tuple(Term.var(n) for n in _names(slot.value)) + tuple(rest))
    if term.op in ("const", "var"):
        return term
    return Term(term.op, tuple(table_calls(a) for a in term.args))


@dataclass(frozen=True)
class Tables:
    count: int  # table arguments of the predicate

    @property
    def helper(self) -> str:
        return TABLE_HELPER if self.count else ""

    def params(self) -> list[list[Arg]]:
        """The kernels' parameters: per table its pointer, head stride, rows and words per row."""
        args = []
        for i in range(self.count):
            t, stride, rows, words = _names(i)
            args += [Arg(t, f"tables[{i}]"), Arg(stride, f"tables[{i}].stride(0)"), Arg(rows, f"tables[{i}].shape[1]"),
                     Arg(words, f"tables[{i}].shape[2]")]
        return [args] if args else []

    @property
    def predicate_param(self) -> str:
        """What `visible()` takes (and is passed) after its indices and lengths."""
        return "".join(f", {a.name}" for group in self.params() for a in group)

    def step_params(self) -> list[str]:
        """A step helper's parameter line, passing them on to `visible()`."""
        return [self.predicate_param.removeprefix(", ") + ","] if self.count else []

    @property
    def step_args(self) -> str:
        """A step helper's call: the same names, after the order's arguments."""
        return "".join(f" {a.name}," for group in self.params() for a in group)

    @property
    def doc(self) -> str:
        """For the module's description (after the token order's)."""
        return f"; the predicate reads {self.count} table(s) of bits" if self.count else ""

    @property
    def layout_doc(self) -> str:
        """What launch() reads of the layout besides the iteration's tables."""
        return ", `block_tables()`" if self.count else ""

    def prepare(self) -> list[str]:
        """launch()'s lines that fetch the tables."""
        if not self.count:
            return []
        return [f"tables = layout.block_tables()  # {self.count} table(s) of bits: int32 [H, rows, words]"]
