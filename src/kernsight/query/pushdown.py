"""Which filters of a query can run in the kernel: equality / IN on a few columns, in the
top-level AND of a single-table query's WHERE. Anything less certain pushes nothing."""

from __future__ import annotations

from sqlglot import exp, parse_one

PUSHABLE = ("pid", "tid", "uid", "comm", "cgroup_id", "nr")


def _literal(e: exp.Expression, column: str) -> object | None:
    if isinstance(e, exp.Literal):
        if e.is_string:
            return e.this if column == "comm" else None
        if column != "comm" and e.is_int:
            v = int(e.this)
            return v if 0 <= v < 1 << 64 else None
    return None


def kernel_filters(sql: str, table: str, pushable: tuple[str, ...] = PUSHABLE) -> dict[str, list]:
    """{column: [values]} that every row of the answer must satisfy, for `table`.

    Sound only for a query reading `table` once with no joins, set operations or CTEs: each
    filter is a conjunct of its WHERE, so a row failing it cannot be in the answer."""
    tree = parse_one(sql, read="duckdb")
    if not isinstance(tree, exp.Select) or tree.args.get("with") or tree.args.get("joins"):
        return {}
    tables = list(tree.find_all(exp.Table))
    if len(tables) != 1 or tables[0].name != table or list(tree.find_all(exp.Subquery)):
        return {}
    where = tree.args.get("where")
    if where is None:
        return {}
    out: dict[str, set] = {}
    for c in where.this.flatten() if isinstance(where.this, exp.And) else [where.this]:
        if isinstance(c, exp.EQ):
            col, lits = c.left, [c.right]
            if isinstance(col, exp.Literal):
                col, lits = c.right, [c.left]
        elif isinstance(c, exp.In) and not c.args.get("query"):
            col, lits = c.this, c.expressions
        else:
            continue
        if not isinstance(col, exp.Column) or col.name not in pushable:
            continue
        values = [_literal(v, col.name) for v in lits]
        if not values or any(v is None for v in values):
            continue
        # Two conjuncts on one column intersect.
        s = set(values)
        out[col.name] = out[col.name] & s if col.name in out else s
    return {k: sorted(v) for k, v in out.items()}
