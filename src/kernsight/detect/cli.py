"""`kernsight rules list|test` and `kernsight alerts` (registered by kernsight.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from ..untrusted import safe
from .alerts import SEVERITIES

if TYPE_CHECKING:
    from .rules import Rule

rules_app = typer.Typer(no_args_is_help=True, help="Detection rules: list them, test a rule file.")
TEST_ROWS = 20  # matches shown per rule by `rules test`


def _tables() -> dict:
    from ..sources import SOURCES

    return {n: s.schema() for n, s in SOURCES.items()}


def _engine():  # noqa: ANN202
    """A query engine over a running (or stopped) server's store, read-only."""
    from ..cli import state_dir
    from ..query.engine import QueryEngine
    from ..store.store import Store
    from . import alerts

    root = state_dir() / "store"
    if not root.is_dir():
        return None, root
    store = Store(root, _tables() | {alerts.NAME: alerts.SCHEMA}, readonly=True)
    return QueryEngine(store, workers=1), root


@rules_app.command("list")
def list_rules(
    rules: list[Path] = typer.Option([], "--rules", help="extra rule directories"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per rule"),
) -> None:
    """The rules a server started now would load: default packs, then user rules."""
    from ..cli import _fail, state_dir
    from .rules import RuleError, load_rules, user_dirs

    try:
        loaded = load_rules(_tables(), user_dirs(state_dir(), rules))
    except RuleError as e:
        _fail(e)
    if as_json:
        print(json.dumps([r.summary() for r in loaded], indent=1))
        return
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"{'ID':<34} {'SEVERITY':<9} {'SOURCE':<8} {'TAGS':<22} TITLE", style="bold")
    for r in loaded:
        off = "" if r.enabled else " [disabled]"
        win = f" [window {r.window.seconds:g}s]" if r.window else ""
        out.print(f"{r.id:<34} {r.severity:<9} {r.source:<8} {','.join(r.tags):<22} "
                  f"{r.title}{win}{off}", markup=False)  # fmt: skip
    files = sorted({r.file for r in loaded})
    out.print(f"{len(loaded)} rules from {len(files)} files: {', '.join(files)}", style="dim")


@rules_app.command("test")
def test_rules(
    file: Path = typer.Argument(..., help="a rule file (YAML)"),
    since: str = typer.Option("1h", help="how far back to look in the stored data"),
) -> None:
    """Validate FILE, then show what each rule would have matched in the stored data of a
    server's state directory (--state-dir)."""
    from ..cli import _fail
    from ..query.engine import QueryFailed, QueryRejected
    from .rules import RuleError, load_file

    try:
        rules = load_file(file, _tables())
    except RuleError as e:
        _fail(e)
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"{file}: {len(rules)} rules, valid", markup=False)
    engine, root = _engine()
    if engine is None:
        out.print(f"no stored data: {root} does not exist (start `kernsight serve` with this "
                  "--state-dir to collect some)", markup=False)  # fmt: skip
        return
    try:
        for r in rules:
            try:
                _show_matches(out, engine, r, since)
            except (QueryRejected, QueryFailed) as e:
                _fail(e)
    finally:
        engine.close()


def _show_matches(out: Console, engine, rule: Rule, since: str) -> None:  # noqa: ANN001
    from .engine import render

    if rule.window:
        w = rule.window
        cols = [*(f'"{g}"' for g in w.group_by), *(f'{a} AS "{n}"' for n, a in w.aggregates)]
        keys = ", ".join(f'"{g}"' for g in w.group_by)
        group = f" GROUP BY {keys}" if keys else ""
        sql = (f"SELECT {', '.join(cols) or 'count(*) AS rows'} FROM {rule.source} WHERE "
               f"{rule.predicate}{group} HAVING {w.having}")  # fmt: skip
        note = f" (groups over the whole window since {since}, not sliding {w.seconds:g} s)"
    else:
        sql = f"SELECT * FROM {rule.source} WHERE {rule.predicate} ORDER BY ts"
        note = ""
    res = engine.query(sql, since=since, limit=TEST_ROWS)
    rows = res.table.drop_columns(["ts"]) if "ts" in res.table.column_names else res.table
    meta = res.meta["sources"].get(rule.source, {})
    more = "+" if res.meta["truncated"] else ""
    out.print(f"\n{rule.id} ({rule.severity}): {res.table.num_rows}{more} matches since "
              f"{since}{note}; {rule.source}: lost {meta.get('lost', 0)}, expired "
              f"{meta.get('expired', 0)}", markup=False)  # fmt: skip
    for row in rows.to_pylist():
        out.print("  " + render(rule, row), markup=False)


def alerts(
    since: str = typer.Option("1h", help="window start: 30s, 5m, 2h, 1d or ISO-8601"),
    min_severity: str = typer.Option("info", help=f"one of {', '.join(SEVERITIES)}"),
    rule: str = typer.Option(None, help="only this rule id"),
    limit: int = typer.Option(100, help="at most this many (newest first)"),
    as_json: bool = typer.Option(False, "--json", help="the answer as JSON"),
) -> None:
    """Alerts a server raised, from its state directory's alerts table (newest first)."""
    from ..cli import _fail, _print_result, err
    from ..query.engine import QueryFailed, QueryRejected

    if min_severity not in SEVERITIES:
        _fail(ValueError(f"unknown severity {min_severity!r}; use one of {', '.join(SEVERITIES)}"))
    where = f"severity_level >= {SEVERITIES.index(min_severity)}"
    if rule is not None:
        where += " AND rule_id = '" + rule.replace("'", "''") + "'"
    engine, root = _engine()
    if engine is None:
        _fail(FileNotFoundError(f"no stored data: {root} does not exist"))
    sql = (f"SELECT ts, severity, rule_id, pid, comm, suppressed, output, tags FROM alerts "
           f"WHERE {where} ORDER BY ts DESC")  # fmt: skip
    try:
        res = engine.query(sql, since=since, limit=limit)
    except (QueryRejected, QueryFailed, ValueError) as e:
        _fail(e)
    finally:
        engine.close()
    if as_json:
        _print_result(res, "json")
        return
    out = Console(highlight=False, soft_wrap=True)
    for r in res.to_json()["rows"]:
        ts, sev, rid, pid, comm, suppressed, output, _ = r
        more = f" (+{suppressed} suppressed repeats)" if suppressed else ""
        out.print(f"{ts[:23]} {sev:<8} {rid} pid {pid} {safe(comm, 16)}: {safe(output)}{more}",
                  markup=False)  # fmt: skip
    err.print(res.summary(), markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")
    app.command("alerts")(alerts)
