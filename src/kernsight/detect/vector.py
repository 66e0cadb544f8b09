"""Rule predicates as Arrow compute kernels, for the common case.

DuckDB costs about 1 ms to parse, bind and plan even a trivial query, and 10-20 ms for a table's
whole rule pack (measured on the default pack: regexes, long IN lists), which is paid per batch
whatever its size: too much when a busy `files` source delivers tens of batches per second. The
predicates the packs use (comparisons, AND/OR/NOT, IN, LIKE, regexp_matches, starts_with, bit
tests, IS NULL, coalesce) map one to one onto Arrow compute functions, which evaluate a batch
with no planning at all. So a validated predicate is compiled here ONCE into a tree of Arrow
calls; anything outside that subset (or that fails a dry run on an empty batch) returns None and
the engine runs that rule in DuckDB instead. The semantics are SQL's: NULL propagates (Kleene
logic), regexes are RE2 in both engines, and tests/test_detect.py checks both paths agree on
real captured data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from .rules import DIALECT

__all__ = ["Mask", "compile_predicate"]

Mask = Callable[[pa.RecordBatch], pa.Array]  # a boolean array, no nulls (NULL -> false)
_Fn = Callable[[pa.RecordBatch], Any]  # an array or a scalar


class _Unsupported(Exception):
    pass


_COMPARE = {exp.EQ: pc.equal, exp.NEQ: pc.not_equal, exp.GT: pc.greater,
            exp.GTE: pc.greater_equal, exp.LT: pc.less, exp.LTE: pc.less_equal}  # fmt: skip
_BITS = {exp.BitwiseAnd: pc.bit_wise_and, exp.BitwiseOr: pc.bit_wise_or,
         exp.BitwiseXor: pc.bit_wise_xor}  # fmt: skip
_MATH = {exp.Add: pc.add_checked, exp.Sub: pc.subtract_checked, exp.Mul: pc.multiply_checked}
_TEXT = {exp.StartsWith: "starts_with", exp.EndsWith: "ends_with", exp.Contains: "match_substring"}
_UNARY = {exp.Lower: pc.utf8_lower, exp.Upper: pc.utf8_upper, exp.Length: pc.utf8_length}


def compile_predicate(sql: str, schema: pa.Schema) -> Mask | None:
    """The predicate as Arrow calls, or None when it needs DuckDB."""
    try:
        fn = _node(sqlglot.parse_one(sql, read=DIALECT), {n.casefold(): n for n in schema.names})
        probe = fn(pa.RecordBatch.from_pylist([], schema=schema))
    except (_Unsupported, pa.ArrowException, TypeError, ValueError):
        return None
    if not pa.types.is_boolean(probe.type) and not pa.types.is_null(probe.type):
        return None

    def mask(batch: pa.RecordBatch) -> pa.Array:
        out = fn(batch)
        if isinstance(out, pa.Scalar):  # a constant: the same answer for every row
            out = pa.array([out.as_py()] * batch.num_rows, pa.bool_())
        return pc.fill_null(out.cast(pa.bool_()), False)

    return mask


def _node(e: exp.Expression, cols: dict[str, str]) -> _Fn:
    t = type(e)
    if t is exp.Paren:
        return _node(e.this, cols)
    if t is exp.Column:
        name = cols.get(e.name.casefold())
        if name is None or e.table:
            raise _Unsupported(e.sql())
        return lambda b: b.column(name)
    if t in (exp.Literal, exp.Boolean, exp.Null, exp.Neg):
        v = _literal(e)
        try:
            value = pa.scalar(v)
        except OverflowError:  # 2^63 and above: only an unsigned column can hold it
            if not isinstance(v, int) or not 0 <= v < 2**64:
                raise _Unsupported(str(v)) from None
            value = pa.scalar(v, pa.uint64())
        return lambda b: value
    if t in (exp.And, exp.Or):
        return _connective(t is exp.And, _node(e.this, cols), _node(e.expression, cols))
    if t is exp.Not:
        a = _node(e.this, cols)
        return lambda b: pc.invert(a(b))
    for table in (_COMPARE, _BITS, _MATH):
        if t in table:
            f2 = table[t]
            a, z = _node(e.this, cols), _node(e.expression, cols)
            return lambda b: f2(*_unsigned_literal(a(b), z(b)))
    if t is exp.Between:
        x, lo, hi = _node(e.this, cols), _node(e.args["low"], cols), _node(e.args["high"], cols)
        return lambda b: pc.and_kleene(pc.greater_equal(x(b), lo(b)), pc.less_equal(x(b), hi(b)))
    if t is exp.In:
        if {k for k, v in e.args.items() if v} != {"this", "expressions"}:
            raise _Unsupported("IN over a subquery or unnest")
        x = _node(e.this, cols)
        opts = pc.SetLookupOptions(pa.array([_literal(v) for v in e.expressions]))
        # SQL: NULL IN (...) is NULL (is_in would say false)
        return lambda b: _null_in(x(b), pc.call_function("is_in", [x(b)], opts))
    if t in (exp.Like, exp.ILike):
        pattern = _string(e.expression)
        if "\\" in pattern or e.args.get("escape"):
            raise _Unsupported("LIKE with a backslash means an escape in Arrow, not in DuckDB")
        x, opts = _node(e.this, cols), pc.MatchSubstringOptions(pattern, ignore_case=t is exp.ILike)
        return lambda b: pc.call_function("match_like", [x(b)], opts)
    if t in (exp.RegexpLike, exp.RegexpFullMatch):
        if e.args.get("flag"):
            raise _Unsupported("regex options")
        rx = _string(e.expression)
        rx = rx if t is exp.RegexpLike else f"^(?:{rx})$"
        x, opts = _node(e.this, cols), pc.MatchSubstringOptions(rx)
        return lambda b: pc.call_function("match_substring_regex", [x(b)], opts)
    if t in _TEXT:
        name, opts = _TEXT[t], pc.MatchSubstringOptions(_string(e.expression))
        x = _node(e.this, cols)
        return lambda b: pc.call_function(name, [x(b)], opts)
    if t in _UNARY:
        fu, x = _UNARY[t], _node(e.this, cols)
        return lambda b: fu(x(b))
    if t is exp.Is and isinstance(e.expression, exp.Null):
        x = _node(e.this, cols)
        return lambda b: pc.is_null(x(b))
    if t is exp.Coalesce:
        parts = [_node(p, cols) for p in [e.this, *e.expressions]]
        return lambda b: pc.coalesce(*(p(b) for p in parts))
    raise _Unsupported(t.__name__)


def _unsigned_literal(x: Any, y: Any) -> tuple[Any, Any]:
    """A non-negative integer literal next to an unsigned column becomes uint64: Arrow would
    otherwise cast the column to int64 and fail on values of 2^63 and above (raw syscall
    arguments, -1 as an unsigned register)."""

    def fix(lit: Any, col: Any) -> Any:
        if (isinstance(lit, pa.Scalar) and not isinstance(col, pa.Scalar)
                and pa.types.is_unsigned_integer(col.type) and pa.types.is_signed_integer(lit.type)
                and lit.is_valid and lit.as_py() >= 0):  # fmt: skip
            return lit.cast(pa.uint64())
        return lit

    return fix(x, y), fix(y, x)


def _connective(is_and: bool, a: _Fn, z: _Fn) -> _Fn:
    """Kleene AND / OR that skips the right side when the left decides every row (false AND x
    is false, true OR x is true): rules put a cheap test first so most batches never reach
    their regexes."""
    f = pc.and_kleene if is_and else pc.or_kleene

    def run(b: pa.RecordBatch) -> Any:
        left = a(b)
        if isinstance(left, pa.BooleanArray) and not left.null_count:
            if (left.true_count if is_and else left.false_count) == 0:
                return left
        return f(left, z(b))

    return run


def _null_in(x: Any, found: pa.Array) -> pa.Array:
    return found if not x.null_count else pc.if_else(pc.is_valid(x), found, None)


def _literal(e: exp.Expression) -> Any:
    if isinstance(e, exp.Boolean):
        return bool(e.this)
    if isinstance(e, exp.Null):
        return None
    if isinstance(e, exp.Neg) and isinstance(e.this, exp.Literal) and not e.this.is_string:
        return -_literal(e.this)
    if isinstance(e, exp.Literal):
        if e.is_string:
            return e.this
        text = e.this
        if text.isdigit():
            return int(text)
        try:
            return float(text)
        except ValueError:
            raise _Unsupported(text) from None
    raise _Unsupported(type(e).__name__)


def _string(e: exp.Expression) -> str:
    if isinstance(e, exp.Literal) and e.is_string:
        return e.this
    raise _Unsupported("a non-literal pattern")
