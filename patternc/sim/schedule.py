"""Programs onto SMs: a greedy list schedule, longest programs first.

The hardware hands each next program of a launch to the first slot that frees (a slot: one
of the CTAs an SM holds), which is a greedy list schedule; its makespan shows the waves and
the tail imbalance.

The generated kernel launches one program per (batch x head, query tile) on the grid
`(B * H, Mt)`, x varying fastest, and program `(x, j)` takes the j-th longest row of its head
(`Layout.row_order`): for heads that share a layout that is every program longest first.
The model schedules longest first by its own program times (LPT order) for every pattern:
it differs from the launch order only where heads differ or the layout's row estimate
disagrees with the model, it makes the prediction independent of the order of the heads,
and it keeps the makespan from dropping when a program gets longer (list scheduling in a
fixed order can: Graham's anomalies).

FlexAttention launches rows in their natural order (query tiles fastest): `list_schedule`.
"""
from __future__ import annotations

import heapq

import numpy as np


def longest_first(work: np.ndarray, slots: int, assignment: bool = False):
    """`list_schedule` of the programs sorted by decreasing work (stable): the kernel's order."""
    work = np.asarray(work, dtype=np.float64)
    order = np.argsort(-work, kind="stable")
    if not assignment:
        return list_schedule(work[order], slots)
    makespan, slot_sorted = list_schedule(work[order], slots, assignment=True)
    slot_of = np.empty_like(slot_sorted)
    slot_of[order] = slot_sorted
    return makespan, slot_of


def list_schedule(work: np.ndarray, slots: int, assignment: bool = False):
    """Makespan of running `work` (in launch order) greedily on `slots` identical slots: each
    program goes to the slot that frees first. With `assignment=True` also returns each
    program's slot (int array)."""
    work = np.asarray(work, dtype=np.float64)
    n = len(work)
    if n == 0:
        return (0.0, np.zeros(0, np.int64)) if assignment else 0.0
    if n <= slots:
        return (float(work.max()), np.arange(n)) if assignment else float(work.max())
    if not assignment and work.min() == work.max():
        return float(-(-n // slots) * work[0])
    heap = [(float(w), s) for s, w in enumerate(work[:slots])]
    heapq.heapify(heap)
    slot_of = np.empty(n, np.int64) if assignment else None
    if assignment:
        slot_of[:slots] = np.arange(slots)
    replace = heapq.heapreplace
    values = work[slots:].tolist()
    if assignment:
        for i, w in enumerate(values, start=slots):
            t, s = heap[0]
            slot_of[i] = s
            replace(heap, (t + w, s))
    else:
        for w in values:
            t, s = heap[0]
            replace(heap, (t + w, s))
    makespan = max(t for t, _ in heap)
    return (makespan, slot_of) if assignment else makespan
