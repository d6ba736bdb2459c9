"""The row-summing engine: the total of a signed sum of conjunctions of atoms over every query
row, in closed form. The query axis is split by residue `q = P*Q + r` and, per residue, into
segments on which every max/min of bounds is one linear piece; each segment is summed exactly.
A bound or count on a segment is a *form* `(alpha, gamma, beta)`: `alpha*Q + gamma*n + beta`
with `N = P*n`."""
from __future__ import annotations

import math
from fractions import Fraction

from .atoms import End, NoClosedForm
from .result import Derived

MAX_PERIOD = 4096  # residue classes of q the derivation walks; beyond this, measure instead

_BIG = 10**12  # a stand-in for "large n" when deciding which linear piece wins on a segment


def _form(end: End, r: int, P: int) -> tuple[int, int, int]:
    """`end` at q = P*Q + r, N = P*n, as (alpha, gamma, beta): alpha*Q + gamma*n + beta."""
    return (end.a * P // end.d, end.g * P, end.a * (r // end.d) + end.c)


def _at2(f, Q2):
    """Twice the form `f` at Q = Q2 / 2, n = _BIG."""
    return f[0] * Q2 + 2 * (f[1] * _BIG + f[2])


def _sub(f, g):
    return (f[0] - g[0], f[1] - g[1], f[2] - g[2])


def sum_rows(ie: dict, head: int, min_length: int = 1) -> Derived:
    """S(N) of the signed sum of conjunctions `ie` over the rows (M = N), exact for N >= its n0 (at
    least `min_length`) and N a multiple of its period; an empty row, if any, as (N, head, query)."""
    atoms = set().union(*ie) if ie else set()
    residues = [a for a in atoms if a[0] == "res"]
    ends = [e for a in atoms if a[0] in ("key", "row") for e in a[1:] if e is not None]
    L = math.lcm(*(a[1] * a[2] for a in residues)) if residues else 1
    needs = [e.d for e in ends] + [e.d * L // math.gcd(e.a, e.d * L) for e in ends if e.a] + \
        [a[2] * a[3] for a in residues if a[3]] + [L]
    P = math.lcm(*needs)
    if P > MAX_PERIOD:
        raise NoClosedForm(f"period {P} too large")
    conjs = []
    for conj, coeff in ie.items():
        keys = [a for a in conj if a[0] == "key"]
        rows = [a for a in conj if a[0] == "row"]
        conjs.append((coeff,
                      [a[1] for a in keys if a[1] is not None] + [End()],  # k >= 0
                      [a[2] for a in keys if a[2] is not None] + [End(0, 1, 1, -1)],  # k <= N - 1
                      [a[1] for a in rows if a[1] is not None], [a[2] for a in rows if a[2] is not None],
                      [a for a in conj if a[0] == "res"]))
    total = [Fraction(0)] * 3
    # some primitives only exist from a length on (neighborhood(K): N >= K)
    n0 = max(1, -(-min_length // P))
    empty = None
    at_one = []
    residue_cache: dict = {}
    for r in range(P):
        per = []
        points = {(0, Fraction(0)), (1, Fraction(0))}
        for coeff, los, his, rlos, rhis, res in conjs:
            lo = _envelope([_form(e, r, P) for e in los], max)
            hi = _envelope([_form(e, r, P) for e in his], min)
            qf = (P, 0, r)
            rows = [_sub(qf, _form(e, r, P)) for e in rlos] + [_sub(_form(e, r, P), qf) for e in rhis]
            his1 = [(f[0], f[1], f[2] + 1) for f in hi]
            pairs = [(f, g) for i, f in enumerate(lo) for g in lo[i + 1:]] + \
                [(f, g) for i, f in enumerate(hi) for g in hi[i + 1:]] + [(f, g) for f in his1 for g in lo]
            for f, g in pairs:
                points.add(_crossing(_sub(f, g)))
            for f in rows:  # a row bound holds *at* its zero: the count jumps after it, not before
                point = _crossing(f)
                if point is not None:
                    points |= {point, (point[0], Fraction(math.floor(point[1]) + 1))}
            per.append((coeff, lo, hi, rows, _residue_set(res, r, L, residue_cache)))
        points.discard(None)
        order = sorted(points, key=lambda x: (x[0], x[1]))
        order = [(c, math.ceil(e)) for c, e in order]
        order = sorted(set(order))
        for (c1, e1), (c2, e2) in zip(order, order[1:]):
            if c1 != c2:  # c1 < c2: need c1*n + e1 <= c2*n + e2
                n0 = max(n0, math.ceil(Fraction(e1 - e2, c2 - c1)))
        inside = order[order.index((0, 0)): order.index((1, 0)) + 1]
        for (ca, ea), (cb, eb) in zip(inside, inside[1:]):
            # sample the middle of [A, B - 1]: crossings sit at or before A, or after B - 1,
            # so every linear piece keeps the order it has there on the whole segment.
            # (Twice the middle, to stay in integers: forms are compared at 2Q through _at2.)
            Qs = ca * _BIG + ea + cb * _BIG + eb - 1
            T = (0, 0, 0)
            for coeff, lo, hi, rows, rset in per:
                form, need = _row_count(lo, hi, rows, rset, Qs, L)
                n0 = max(n0, need)
                T = (T[0] + coeff * form[0], T[1] + coeff * form[1], T[2] + coeff * form[2])
            for i, v in enumerate(_segment_sum(T, (ca, ea), (cb, eb))):
                total[i] += v
            if empty is None:
                # T is linear in Q and >= 0 on the segment: a row is empty iff T is 0 at an end.
                # At Q = c*n + e, T is (T0*c + T1) * n + (T0*e + T2): zero for every n, or at one n
                wide = 1 if ca == cb else math.ceil(Fraction(ea - eb + 1, cb - ca))  # A < B from here
                for c, e in ((ca, ea), (cb, eb - 1)):
                    slope, offset = T[0] * c + T[1], T[0] * e + T[2]
                    if slope == 0 and offset == 0:
                        empty = (r, c, e, wide)
                        break
                    if slope != 0 and offset % slope == 0 and -offset // slope >= wide:
                        at_one.append((r, c, e, -offset // slope))
    # from polynomials in n (N = P*n) to polynomials in N
    coeffs = (total[0], total[1] / P, total[2] / (P * P))
    found = Derived("poly", coeffs, period=P, n0=n0 * P)
    if empty is not None:
        r, c, e, wide = empty
        n = max(n0, wide, 1)
        found.empty = (P * n, head, P * (c * n + e) + r)
        found.empty_always = True
    else:  # rows empty at one length only (e.g. full - neighborhood(K, causal=true) at N = K)
        hits = sorted((n, r, c, e) for r, c, e, n in at_one if n >= n0)
        if hits:
            n, r, c, e = hits[0]
            found.empty = (P * n, head, P * (c * n + e) + r)
    return found


def _envelope(forms, pick):
    """Drop forms that a parallel one always beats (same alpha and gamma): fewer, and no spurious,
    breakpoints."""
    best: dict = {}
    for f in forms:
        key = f[:2]
        best[key] = f if key not in best else pick(best[key], f, key=lambda x: x[2])
    return list(best.values())


def _crossing(f):
    """Where the form `f` changes sign in Q, as (c, e) with Q = c*n + e (the first Q past the zero)."""
    alpha, gamma, beta = f
    if alpha == 0:
        return None
    c = Fraction(-gamma, alpha)
    if c.denominator != 1:
        raise NoClosedForm("non-integral crossing")
    return int(c), Fraction(-beta, alpha)


def _threshold(diff) -> int:
    """Smallest n from which the (Q-free) form `diff` keeps the sign it has at large n."""
    _, gamma, beta = diff
    if gamma == 0:
        return 1
    return max(1, math.ceil(Fraction(-beta, gamma)) + 1)


def _row_count(lo, hi, rows, rset, Q2, L):
    """(the count form of one conjunction on a segment, the n it needs) at sample row Q2 / 2."""
    need = 1
    for f in rows:
        if f[0] == 0:
            need = max(need, _threshold(f))
        if _at2(f, Q2) < 0:
            return (0, 0, 0), need
    best_lo = max(lo, key=lambda f: _at2(f, Q2)) if len(lo) > 1 else lo[0]
    best_hi = min(hi, key=lambda f: _at2(f, Q2)) if len(hi) > 1 else hi[0]
    for f in lo:
        if f[0] == best_lo[0] and f is not best_lo:
            need = max(need, _threshold(_sub(best_lo, f)))
    for f in hi:
        if f[0] == best_hi[0] and f is not best_hi:
            need = max(need, _threshold(_sub(f, best_hi)))
    width = _sub((best_hi[0], best_hi[1], best_hi[2] + 1), best_lo)
    if width[0] == 0:
        need = max(need, _threshold(width))
    if _at2(width, Q2) <= 0 or rset is not None and rset[0] == 0:
        return (0, 0, 0), need
    if rset is None:
        return width, need
    return _sub(_residue_count((best_hi[0], best_hi[1], best_hi[2] + 1), rset, L),
                _residue_count(best_lo, rset, L)), need


def _residue_set(res, r, L, cache):
    """(size, prefix counts) of the key residues mod L allowed for query residue r, or None."""
    if not res:
        return None
    targets = tuple((bk, m, ((r // qdiv) + c) % m if qdiv else c) for _, bk, m, qdiv, c in sorted(res, key=str))
    if targets not in cache:
        allowed = [all((rho // bk) % m == t for bk, m, t in targets) for rho in range(L)]
        prefix = [0]
        for a in allowed:
            prefix.append(prefix[-1] + a)
        cache[targets] = (prefix[-1], prefix)
    return cache[targets]


def _residue_count(x, rset, L):
    """The form counting keys k in [0, x) with an allowed residue (x's coefficients are multiples of L)."""
    size, prefix = rset
    alpha, gamma, beta = x
    if alpha % L or gamma % L:
        raise NoClosedForm("residue period does not divide the query period")
    return (size * alpha // L, size * gamma // L, size * (beta - beta % L) // L + prefix[beta % L])


def _segment_sum(T, A, B):
    """sum over Q in [A, B) of T0*Q + T1*n + T2, with A, B = c*n + e: polynomial in n (3 Fractions)."""
    t0, t1, t2 = T

    def tri(c, e):  # X (X - 1) / 2 for X = c n + e
        return (Fraction(e * e - e, 2), Fraction(2 * c * e - c, 2), Fraction(c * c, 2))

    (ca, ea), (cb, eb) = A, B
    sa, sb = tri(ca, ea), tri(cb, eb)
    dc, de = cb - ca, eb - ea
    # (t1 n + t2)(dc n + de)
    lin = (Fraction(t2 * de), Fraction(t1 * de + t2 * dc), Fraction(t1 * dc))
    return tuple(t0 * (sb[i] - sa[i]) + lin[i] for i in range(3))
