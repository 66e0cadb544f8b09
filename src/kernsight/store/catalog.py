"""The catalog: one place that declares every table, its columns and what can be pushed
into the kernel. `kernsight tables` prints it; docs/tables.md is generated from it."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from ..sources import SOURCES
from ..sources import tracepoint as tp

BATCH_COLUMN = ("batch", "UBIGINT", "sequence number of the capture batch this row came in")

_DUCKDB_TYPES = {
    pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT", pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER",
    pa.int64(): "BIGINT", pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN", pa.binary(): "BLOB",
}  # fmt: skip


def duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return duckdb_type(t.value_type) + "[]"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ_NS" if t.tz else "TIMESTAMP_NS"
    if pa.types.is_fixed_size_list(t):
        return f"{duckdb_type(t.value_type)}[{t.list_size}]"
    return _DUCKDB_TYPES.get(t, str(t).upper())


@dataclass(frozen=True)
class TableInfo:
    name: str
    description: str
    columns: list[tuple[str, str, str]]  # (name, SQL type, description)
    pushdown: tuple[str, ...]
    example: str
    heavy: bool

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "columns": [{"name": n, "type": t, "description": d} for n, t, d in self.columns],
            "kernel_filters": list(self.pushdown),
            "example": self.example,
            "heavy": self.heavy,
        }


def tables() -> dict[str, TableInfo]:
    out = {}
    for name, src in SOURCES.items():
        cols = [(c.name, duckdb_type(c.type), c.description) for c in src.columns]
        out[name] = TableInfo(name, src.description, [*cols, BATCH_COLUMN], src.pushdown,
                              src.example, src.heavy)  # fmt: skip
    from ..detect import alerts  # derived from the other tables, not captured

    cols = [(c.name, duckdb_type(c.type), c.description) for c in alerts.COLUMNS]
    batch = ("batch", "UBIGINT", "sequence number of the capture batch that triggered the alert")
    out[alerts.NAME] = TableInfo(alerts.NAME, alerts.DESCRIPTION, [*cols, batch], (),
                                 alerts.EXAMPLE, False)  # fmt: skip
    return out


def tracepoint_table(name: str) -> TableInfo:
    """A tracepoint table (tp.<category>.<name>), described from its tracefs format."""
    p = tp.plan(name)
    cols = [(c.name, duckdb_type(c.type), c.description) for c in p.columns]
    desc = f"Kernel tracepoint {p.fmt.category}:{p.fmt.name}, one row per event"
    if text := p.fmt.description():
        desc += f"; the kernel prints it as: {text}"
    example = f"SELECT * FROM {p.table} ORDER BY ts DESC LIMIT 20"
    return TableInfo(p.table, desc, [*cols, BATCH_COLUMN], (), example, False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    lines = [
        "# Tables",
        "",
        "Generated from the catalog (`kernsight tables --markdown`); do not edit by hand.",
        "Every table has the common columns `ts`, `pid`, `tid`, `uid`, `comm`, `cgroup_id`, and",
        "`batch`, the capture batch a row came in. Strings from the traced system (comm, paths,",
        "argv) are attacker-controlled data.",
        "",
    ]
    for t in tables().values():
        lines += [f"## `{t.name}`" + (" (heavy, off unless asked for)" if t.heavy else ""), ""]
        lines += [t.description, "", "| column | type | description |", "|---|---|---|"]
        lines += [f"| `{n}` | {ty} | {_cell(d)} |" for n, ty, d in t.columns]
        if t.pushdown:
            lines += ["", f"In-kernel filters (equality / IN): {', '.join(t.pushdown)}.", ""]
        else:
            lines += [""]
        lines += ["Example:", "", "```sql", t.example, "```", ""]
    return "\n".join(lines)
