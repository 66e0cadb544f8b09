"""Detection rules: YAML files of `rules: [...]`, loaded and checked before anything runs.

A rule's `condition` and `exceptions` are SQL boolean expressions over ONE table's columns. They
are operator-supplied, yet they run inside the server on every batch, so they pass the same
checks as an agent's standing query (`query.validate` allow-list, then `check_standing`: no
subqueries, no aggregates outside windows, nothing that can build unbounded values), and a dry
run on an empty table catches unknown columns and type errors at load time. Every error names
the file, the rule id and what is wrong.

Packs: the default ones in this package's `rules/` directory, then user files (`*.yaml` in
`<state-dir>/rules/` and any `--rules DIR`); a user rule with the id of a default one replaces it.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
import yaml
from sqlglot import exp
from sqlglot.errors import SqlglotError

from ..query.sandbox import harden
from ..query.subscribe import check_standing
from ..query.validate import QueryRejected, validate
from .alerts import SEVERITIES

__all__ = [
    "SEVERITIES", "DEFAULT_DIR", "Rule", "RuleError", "Window", "load_file", "load_rules",
    "user_dirs",
]  # fmt: skip

DIALECT = "duckdb"
DEFAULT_DIR = Path(__file__).parent / "rules"
MAX_EXPR_BYTES = 4_000
MAX_WINDOW_S = 3600.0
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_TAG = re.compile(r"^T[0-9]{4}(\.[0-9]{3})?$")  # ATT&CK technique / sub-technique
_ALIAS = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
_REQUIRED = ("id", "title", "description", "source", "condition", "severity", "tags", "output")
_OPTIONAL = ("exceptions", "enabled", "window", "aggregates")
_WINDOW_KEYS = ("seconds", "group_by", "having", "aggregates")


class RuleError(ValueError):
    """A rule file or rule is wrong; the message names the file, the rule and the problem."""


@dataclass(frozen=True)
class Window:
    seconds: float
    group_by: tuple[str, ...]
    having: str  # validated SQL over the aggregates
    aggregates: tuple[tuple[str, str], ...]  # (alias, validated aggregate SQL)


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    description: str
    source: str
    condition: str  # validated SQL, as rendered by sqlglot
    severity: str
    tags: tuple[str, ...]
    output: str
    exceptions: tuple[str, ...] = ()
    enabled: bool = True
    window: Window | None = None
    file: str = ""
    fields: tuple[str, ...] = field(default=(), compare=False)  # the output's placeholders

    @property
    def level(self) -> int:
        return SEVERITIES.index(self.severity)

    @property
    def predicate(self) -> str:
        """One boolean per row: matches the condition and none of the exceptions (NULL: no)."""
        p = f"coalesce(({self.condition}), false)"
        if self.exceptions:
            p += " AND NOT coalesce(" + " OR ".join(f"({e})" for e in self.exceptions) + ", false)"
        return p

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "title": self.title, "severity": self.severity, "source": self.source,
            "tags": list(self.tags), "enabled": self.enabled, "file": self.file,
            "condition": self.condition, "exceptions": list(self.exceptions),
        }  # fmt: skip
        if self.window:
            d["window"] = {"seconds": self.window.seconds, "group_by": list(self.window.group_by),
                           "having": self.window.having,
                           "aggregates": dict(self.window.aggregates)}  # fmt: skip
        return d


def user_dirs(state_dir: Path, extra: Iterable[Path] = ()) -> list[Path]:
    """Where user rules come from, lowest precedence first: <state-dir>/rules (when it exists),
    then KERNSIGHT_RULES (directories separated by ':', set by `serve --rules`), then extra."""
    env = [Path(p) for p in os.environ.get("KERNSIGHT_RULES", "").split(os.pathsep) if p]
    own = Path(state_dir) / "rules"
    return ([own] if own.is_dir() else []) + env + [Path(p) for p in extra]


def load_rules(
    tables: Mapping[str, pa.Schema],
    user_dirs: Iterable[Path] = (),
    *,
    defaults: bool = True,
) -> list[Rule]:
    """The default packs, then every `*.yaml` of each user dir in name order. A user rule with
    the id of an earlier one replaces it; two rules with one id in the same tier are an error."""
    out: dict[str, Rule] = {}
    tiers = ([DEFAULT_DIR] if defaults else []) + [Path(d) for d in user_dirs]
    with _Checker(tables) as checker:
        for i, d in enumerate(tiers):
            if not d.is_dir():
                if i == 0 and defaults:
                    raise RuleError(f"{d}: the default rule directory is missing")
                raise RuleError(f"{d}: not a directory of rule files")
            tier: dict[str, Rule] = {}
            for path in sorted(d.glob("*.yaml")):
                for r in load_file(path, tables, checker):
                    if r.id in tier:
                        raise RuleError(
                            f"{path}: rule {r.id!r}: id already used in {tier[r.id].file}"
                        )
                    tier[r.id] = r
            out.update(tier)
    return list(out.values())


def load_file(
    path: Path, tables: Mapping[str, pa.Schema], checker: _Checker | None = None
) -> list[Rule]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise RuleError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise RuleError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or set(doc) != {"rules"} or not isinstance(doc["rules"], list):
        raise RuleError(f"{path}: a rule file is a mapping with one key, `rules`, holding a list")
    if checker is None:
        with _Checker(tables) as c:
            return [_rule(path, i, raw, c) for i, raw in enumerate(doc["rules"])]
    seen: set[str] = set()
    rules = []
    for i, raw in enumerate(doc["rules"]):
        r = _rule(path, i, raw, checker)
        if r.id in seen:
            raise RuleError(f"{path}: rule {r.id!r}: id used twice in this file")
        seen.add(r.id)
        rules.append(r)
    return rules


# -- one rule --------------------------------------------------------------------------------


def _rule(path: Path, index: int, raw: Any, checker: _Checker) -> Rule:
    where = f"{path}: rule #{index + 1}"
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: a rule is a mapping of fields, got {type(raw).__name__}")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RuleError(f"{where}: `id` must be lowercase letters, digits, '_', '-', '.' "
                        f"(1-64 characters), got {rid!r}")  # fmt: skip
    where = f"{path}: rule {rid!r}"

    def fail(msg: str) -> RuleError:
        return RuleError(f"{where}: {msg}")

    if missing := [k for k in _REQUIRED if k not in raw]:
        raise fail(f"missing field(s): {', '.join(missing)}")
    if unknown := sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL)):
        raise fail(f"unknown field(s): {', '.join(unknown)} "
                   f"(allowed: {', '.join(_REQUIRED + _OPTIONAL)})")  # fmt: skip
    for k in ("title", "description", "source", "condition", "output"):
        if not isinstance(raw[k], str) or not raw[k].strip():
            raise fail(f"`{k}` must be a non-empty string")
    sev = raw["severity"]
    if sev not in SEVERITIES:
        raise fail(f"bad severity {sev!r}: use one of {', '.join(SEVERITIES)}")
    tags = raw["tags"]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise fail("`tags` must be a list of ATT&CK technique ids (e.g. [T1059.004])")
    if bad := [t for t in tags if not _TAG.match(t)]:
        raise fail(f"tag {bad[0]!r} is not an ATT&CK technique id like T1055 or T1055.008")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail("`enabled` must be true or false")
    exceptions = raw.get("exceptions", [])
    if not isinstance(exceptions, list) or not all(isinstance(e, str) for e in exceptions):
        raise fail("`exceptions` must be a list of SQL boolean expressions")
    source = raw["source"]
    if source not in checker.tables:
        raise fail(f"unknown source {source!r}; tables: {', '.join(sorted(checker.tables))}")

    try:
        cond = checker.predicate(source, raw["condition"])
    except RuleError as e:
        raise fail(f"condition: {e}") from None
    excs = []
    for i, e in enumerate(exceptions):
        try:
            excs.append(checker.predicate(source, e))
        except RuleError as err:
            raise fail(f"exception #{i + 1}: {err}") from None

    window = None
    names = set(checker.tables[source].names)
    if "window" in raw or "aggregates" in raw:
        window = _window(raw, source, cond, checker, fail)
        names = set(window.group_by) | {a for a, _ in window.aggregates}
    fields = _template_fields(raw["output"], names, fail)
    return Rule(
        id=rid, title=raw["title"].strip(), description=raw["description"].strip(),
        source=source, condition=cond, severity=sev, tags=tuple(tags), output=raw["output"],
        exceptions=tuple(excs), enabled=enabled, window=window, file=str(path), fields=fields,
    )  # fmt: skip


def _window(raw: dict, source: str, cond: str, checker: _Checker, fail: Any) -> Window:
    w = raw.get("window")
    if not isinstance(w, dict):
        raise fail("`aggregates` needs `window: {seconds, group_by, having}`")
    if unknown := sorted(set(w) - set(_WINDOW_KEYS)):
        raise fail(f"window: unknown field(s) {', '.join(unknown)} "
                   f"(allowed: {', '.join(_WINDOW_KEYS)})")  # fmt: skip
    if "aggregates" in w and "aggregates" in raw:
        raise fail("give `aggregates` once: at the rule's top level or inside `window`")
    secs = w.get("seconds")
    if isinstance(secs, bool) or not isinstance(secs, int | float) or not 0 < secs <= MAX_WINDOW_S:
        raise fail(f"window.seconds must be a number in (0, {MAX_WINDOW_S:g}], got {secs!r}")
    group_by = w.get("group_by", [])
    if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
        raise fail("window.group_by must be a list of column names")
    schema = checker.tables[source]
    cols = {n.casefold(): n for n in schema.names}
    if bad := [g for g in group_by if g.casefold() not in cols]:
        raise fail(f"window.group_by: unknown column {bad[0]!r} in table {source}; "
                   f"columns: {', '.join(schema.names)}")  # fmt: skip
    group = tuple(cols[g.casefold()] for g in group_by)
    aggs = w.get("aggregates", raw.get("aggregates", {}))
    if not isinstance(aggs, dict) or not all(isinstance(v, str) for v in aggs.values()):
        raise fail("aggregates must map an alias to an aggregate expression, e.g. "
                   "{ports: 'count(DISTINCT dport)'}")  # fmt: skip
    for a in aggs:
        if not isinstance(a, str) or not _ALIAS.match(a) or a.casefold() in cols:
            raise fail(f"aggregate alias {a!r} must be a lowercase identifier that is not a "
                       "column name")  # fmt: skip
    having = w.get("having")
    if not isinstance(having, str) or not having.strip():
        raise fail("window.having must be an aggregate condition, e.g. 'count(*) >= 20'")
    try:
        sql = checker.windowed(source, cond, group, aggs, having)
    except RuleError as e:
        raise fail(f"window: {e}") from None
    tree = sqlglot.parse_one(sql, read=DIALECT)
    rendered = {a.alias: a.this.sql(dialect=DIALECT) for a in tree.expressions
                if isinstance(a, exp.Alias)}  # fmt: skip
    return Window(float(secs), group, tree.args["having"].this.sql(dialect=DIALECT),
                  tuple((a, rendered[a]) for a in aggs))  # fmt: skip


def _template_fields(template: str, names: set[str], fail: Any) -> tuple[str, ...]:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise fail(f"output: bad template ({e}); write literal braces as {{{{ and }}}}") from None
    fields = []
    for _, name, spec, conv in parts:
        if name is None:
            continue
        if spec or conv:
            raise fail(f"output: placeholder {{{name}}} may not have a format spec or conversion")
        if name not in names:
            raise fail(f"output: unknown column {name!r} in placeholder {{{name}}}; "
                       f"available: {', '.join(sorted(names))}")  # fmt: skip
        fields.append(name)
    return tuple(fields)


# -- SQL checks ------------------------------------------------------------------------------


class _Checker:
    """Validates expressions and dry-runs them on an empty table (a private, hardened,
    in-memory DuckDB, closed when loading ends)."""

    def __init__(self, tables: Mapping[str, pa.Schema]) -> None:
        self.tables = dict(tables)
        self._db = duckdb.connect(":memory:")
        harden(self._db, memory_limit="256MB", threads=1)

    def __enter__(self) -> _Checker:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()

    def _parse(self, text: str) -> exp.Expression:
        if len(text.encode()) > MAX_EXPR_BYTES:
            raise RuleError(f"longer than {MAX_EXPR_BYTES} bytes")
        try:
            tree = sqlglot.parse_one(text, read=DIALECT)
        except SqlglotError as e:
            raise RuleError(f"bad SQL: {_first_line(e)}") from None
        if tree is None or isinstance(tree, exp.Query | exp.Command | exp.Block | exp.DDL
                                      | exp.DML):  # fmt: skip
            raise RuleError("must be one SQL expression (e.g. path LIKE '/tmp/%'), not a statement")
        return tree

    def _columns(self, source: str, tree: exp.Expression) -> None:
        schema = self.tables[source]
        cols = {n.casefold() for n in schema.names}
        for c in tree.find_all(exp.Column):
            if c.is_star:
                raise RuleError("`*` is not an expression")
            if c.table and c.table.casefold() != source.casefold():
                raise RuleError(f"column {c.sql()!r} names another table; rules read only {source}")
            if c.name.casefold() not in cols:
                raise RuleError(f"unknown column {c.name!r} in table {source}; columns: "
                                f"{', '.join(schema.names)}")  # fmt: skip

    def _check(self, source: str, query: exp.Select, windowed: bool) -> str:
        try:
            checked = validate(query.sql(dialect=DIALECT), list(self.tables))
            check_standing(sqlglot.parse_one(checked.sql, read=DIALECT), checked.tables, windowed)
        except QueryRejected as e:
            raise RuleError(str(e).replace("a standing query", "a rule")) from None
        cur = self._db.cursor()
        try:
            cur.register(source, self.tables[source].empty_table())
            out = cur.sql(checked.sql).to_arrow_table()
        except duckdb.Error as e:
            raise RuleError(f"bad SQL: {_first_line(e)}") from None
        finally:
            cur.close()
        kind = out.schema.field(0).type
        if not windowed and not (pa.types.is_boolean(kind) or pa.types.is_null(kind)):
            raise RuleError(f"must be a boolean expression; this one is {kind}")
        return checked.sql

    def predicate(self, source: str, text: str) -> str:
        """The expression as validated SQL (sqlglot's rendering of the checked tree)."""
        tree = self._parse(text)
        self._columns(source, tree)
        sql = self._check(source, exp.select(exp.alias_(tree, "m")).from_(source), False)
        rendered = sqlglot.parse_one(sql, read=DIALECT).expressions[0]
        return rendered.this.sql(dialect=DIALECT)

    def windowed(
        self, source: str, cond: str, group: tuple[str, ...], aggs: dict[str, str], having: str
    ) -> str:
        select: list[exp.Expression] = [exp.column(g, quoted=True) for g in group]
        select.append(exp.alias_(exp.Count(this=exp.Star()), "__rows"))
        for alias, text in aggs.items():
            tree = self._parse(text)
            self._columns(source, tree)
            if not tree.find(exp.AggFunc):
                raise RuleError(f"aggregate {alias!r} ({text}) has no aggregate function")
            select.append(exp.alias_(tree, alias))
        htree = self._parse(having)
        known = {a.casefold() for a in aggs}
        for c in htree.find_all(exp.Column):  # aliases are allowed in HAVING, columns checked
            if c.name.casefold() not in known:
                self._columns(source, c)
        q = exp.select(*select).from_(source).where(sqlglot.parse_one(cond, read=DIALECT))
        if group:
            q = q.group_by(*[exp.column(g, quoted=True) for g in group])
        return self._check(source, q.having(htree), True)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
