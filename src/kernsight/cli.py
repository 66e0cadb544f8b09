"""The `kernsight` command line."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer
from rich.console import Console

from . import __version__
from .kernel.errors import KernelError
from .trust.cli import app as audit_app
from .untrusted import safe

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="kernsight: live Linux kernel events as SQL tables for AI agents.",
)
err = Console(stderr=True, highlight=False)


@app.callback()
def main(
    state_dir: Path = typer.Option(
        None, "--state-dir", envvar="KERNSIGHT_STATE_DIR",
        help="where kernsight keeps everything it writes (default /var/lib/kernsight)",
    ),
) -> None:  # fmt: skip
    if state_dir:
        os.environ["KERNSIGHT_STATE_DIR"] = str(state_dir)


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


@app.command()
def build(force: bool = typer.Option(False, help="rebuild even when up to date")) -> None:
    """Compile the BPF programs against this kernel's BTF."""
    from .kernel import build as b

    try:
        for path in b.build_all(force=force):
            print(path)
    except KernelError as e:
        _fail(e)


@app.command()
def doctor() -> None:
    """Check what works on this host, with the fix for anything that does not."""
    from .doctor import run_checks

    ok = run_checks(Console(highlight=False))
    raise typer.Exit(0 if ok else 1)


# -- capture ------------------------------------------------------------------------------

def _detail(source: str, r: dict) -> str:
    if source == "process":
        if r["event"] == "exec":
            marks = " [memfd]" if r["exe_memfd"] else ""
            marks += " [stdio-socket]" if r["stdio_sockets"] else ""
            parent = f"(parent {r['ppid']} {safe(r['parent_comm'])})"
            return f"exec {safe(r['argv'] or r['filename'])}{marks}  {parent}"
        if r["event"] == "fork":
            return f"fork from {r['ppid']} {safe(r['parent_comm'])}"
        sig = f" signal {r['exit_signal']}" if r["exit_signal"] else ""
        return f"exit {r['exit_code']}{sig}"
    if source == "files":
        return f"{r['syscall']} {safe(r['path'])} flags=0x{r['flags']:x} -> {r['ret']}"
    if source == "syscalls":
        args = ", ".join(f"{r[f'arg{i}']:#x}" for i in range(3))
        return f"{r['name']}({args}, ...) = {r['ret']}  {r['latency_ns']} ns"
    if source == "syscall_stats":
        return f"{r['name']} x{r['count']} errors={r['errors']} total={r['total_latency_ns']} ns"
    if source == "packets":
        return (f"{r['interface']} {r['direction']} {','.join(r['anomalies'])} {r['protocol']} "
                f"{r['saddr']}:{r['sport']} -> {r['daddr']}:{r['dport']} len {r['length']}")
    if source == "drops":
        return (f"{r['event']} {r['reason']} at {r['location']} on {safe(r['interface'])} "
                f"{r['l4proto']} {r['saddr']}:{r['sport']} -> {r['daddr']}:{r['dport']}")
    return " ".join(f"{k}={safe(v)}" for k, v in r.items() if k not in ("ts", "pid", "comm"))


def _rows(batch: pa.RecordBatch) -> list[dict]:
    """Rows as dicts with `ts` as an ISO-8601 UTC string (nanoseconds kept)."""
    ns = pc.cast(batch.column("ts"), pa.int64()).to_numpy().view("datetime64[ns]")
    iso = pa.array([s + "Z" for s in np.datetime_as_string(ns, unit="ns")])
    return batch.set_column(batch.schema.get_field_index("ts"), "ts", iso).to_pylist()


@app.command()
def capture(
    sources: list[str] = typer.Argument(
        ..., help="process, files, syscalls, syscall_stats, packets, drops"
    ),
    seconds: float = typer.Option(
        0, "--for", help="stop after this many seconds (0: until Ctrl-C)"
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout, one per event"),
    pid: list[int] = typer.Option([], "--pid", help="only these pids (filtered in the kernel)"),
    comm: list[str] = typer.Option([], "--comm", help="only these command names (in the kernel)"),
    max_rows_per_s: int = typer.Option(40, help="terminal view: rows shown per second at most"),
    interfaces: str = typer.Option(
        None, "--interfaces", envvar="KERNSIGHT_INTERFACES",
        help="packets: interfaces to watch, comma-separated (NAME or NETNS/NAME)",
    ),
) -> None:  # fmt: skip
    """Show kernel events live, then a summary of delivered and lost counts."""
    if interfaces:  # read by the packets source when it starts
        os.environ["KERNSIGHT_INTERFACES"] = interfaces
    from .capture import Capture
    from .sources import SOURCES

    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        _fail(ValueError(f"unknown source {unknown[0]!r}; known: {', '.join(SOURCES)}"))
    filters: dict[str, list] = {}
    if pid:
        filters["pid"] = pid
    if comm:
        filters["comm"] = comm
    q: queue.Queue = queue.Queue(maxsize=1024)
    dropped_display = 0

    def on_batch(b) -> None:
        nonlocal dropped_display
        try:
            q.put_nowait(b)
        except queue.Full:  # the terminal is slower than the kernel: count, never block capture
            dropped_display += b.data.num_rows

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    out = Console(highlight=False, soft_wrap=True)
    cap = Capture()
    try:
        cap.subscribe(on_batch)
        for s in sources:
            cap.start(s, filters={k: v for k, v in filters.items() if k in SOURCES[s].pushdown})
    except (KernelError, ValueError) as e:
        cap.close()
        _fail(e)
    cap.run_in_thread()
    # On stderr in every mode: once it is printed, the programs are attached.
    err.print(
        f"capturing {', '.join(sources)}"
        + (f" for {seconds:g}s" if seconds else " (Ctrl-C to stop)"),
    )
    if not as_json:
        out.print(f"{'TIME':<15} {'SOURCE':<13} {'PID':>7} {'COMM':<16} EVENT", style="bold")
    deadline = time.monotonic() + seconds if seconds else None
    # Truncate to the terminal's width on a terminal only; a pipe gets whole lines.
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    shown_in_second, second, hidden = 0, int(time.monotonic()), 0
    try:
        while not stop and (deadline is None or time.monotonic() < deadline):
            try:
                b = q.get(timeout=0.2)
            except queue.Empty:
                continue
            if as_json:
                for r in _rows(b.data):
                    sys.stdout.write(json.dumps({"source": b.source, "batch": b.seq, **r}) + "\n")
                sys.stdout.flush()
                continue
            now = int(time.monotonic())
            if now != second:
                if hidden:
                    out.print(f"{'':<15} [dim]… {hidden} more events not shown[/]")
                second, shown_in_second, hidden = now, 0, 0
            room = max(0, max_rows_per_s - shown_in_second)
            rows = _rows(b.data.slice(0, room)) if room else []
            hidden += b.data.num_rows - len(rows)
            for r in rows:
                line = (
                    f"{r['ts'][11:26]:<15} {b.source:<13} {r['pid']:>7} "
                    f"{safe(r['comm'], 16):<16} {_detail(b.source, r)}"
                )
                out.print(safe(line, width), markup=False)
            shown_in_second += len(rows)
    finally:
        cap.close()
        summary = ", ".join(
            f"{n}: delivered {s.delivered}, lost {s.lost}" for n, s in cap.final.items()
        )
        for n, s in cap.final.items():
            if s.extra:  # e.g. packets: every packet and byte per interface and direction
                summary += f"\n  {n}: {json.dumps(s.extra)}"
        extra = f", not displayed {dropped_display} (terminal too slow)" if dropped_display else ""
        err.print(f"summary: {summary}{extra}")
        for e in cap.errors:
            err.print(f"[red]capture error:[/] {e}")


# -- tables and queries ----------------------------------------------------------------------


def state_dir() -> Path:
    return Path(os.environ.get("KERNSIGHT_STATE_DIR", "/var/lib/kernsight"))


@app.command()
def tables(
    as_json: bool = typer.Option(False, "--json", help="the catalog as JSON"),
    markdown: bool = typer.Option(False, "--markdown", help="the catalog as Markdown"),
) -> None:
    """The tables agents can query: columns, types, descriptions, in-kernel filters."""
    from .store import catalog

    if markdown:
        print(catalog.markdown(), end="")
        return
    infos = catalog.tables()
    if as_json:
        print(json.dumps([t.as_dict() for t in infos.values()], indent=2))
        return
    out = Console(highlight=False)
    for t in infos.values():
        out.print(f"[bold]{t.name}[/]" + (" [yellow](heavy, opt-in)[/]" if t.heavy else ""))
        out.print(f"  {t.description}")
        for n, ty, d in t.columns:
            out.print(f"    {n:<18} {ty:<15} {d}", markup=False)
        out.print(f"  kernel filters: {', '.join(t.pushdown)}")
        out.print(f"  example: {t.example}\n", markup=False)


@app.command()
def tracepoints(
    filter: str = typer.Argument(None, help="substring of category:name, or a glob (* ?)"),
    describe: str = typer.Option(
        None, "--describe", "-d", help="show one tracepoint's fields (category:name)"
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON output"),
) -> None:
    """The kernel's tracepoints; each is queryable as table tp.<category>.<name>."""
    from .sources import tracepoint as tp

    out = Console(highlight=False, soft_wrap=True)
    try:
        if describe:
            d = tp.describe(describe)
            if as_json:
                print(json.dumps(d, indent=2))
                return
            out.print(f"[bold]{d['name']}[/]  table {d['table']}  (id {d['id']})")
            out.print(f"  {d['description']}", markup=False)
            for f in d["fields"]:
                note = f"  ({f['note']})" if f.get("note") else ""
                out.print(f"    {f['column']:<22} {f['c_type']:<28} off {f['offset']:<4} "
                          f"size {f['size']:<4} {'signed' if f['signed'] else 'unsigned':<8} "
                          f"{f['kind']}{note}", markup=False)  # fmt: skip
            out.print(f"  example: {d['example']}", markup=False)
            return
        rows, cursor = [], 0
        while cursor is not None:
            page = tp.listing(filter, cursor)
            rows += page["tracepoints"]
            cursor = page["next_cursor"]
    except (KeyError, ValueError, KernelError) as e:
        _fail(ValueError(e.args[0]) if isinstance(e, KeyError) else e)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        out.print(f"{r['name']:<48} {r['table']}", markup=False)
    err.print(f"{len(rows)} tracepoints; describe one with: kernsight tracepoints -d NAME")


@app.command()
def query(
    sql: str = typer.Argument(..., help="one read-only SELECT (DuckDB dialect)"),
    since: str = typer.Option(None, help="window start: 30s, 5m, 2h, 1d or ISO-8601"),
    until: str = typer.Option(None, help="window end: same forms"),
    seconds: float = typer.Option(
        None, "--for", help="live: capture the tables the query names for this long, then answer"
    ),
    limit: int = typer.Option(1000, help="row limit (the answer says when it was truncated)"),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    pushdown: bool = typer.Option(True, help="live: push equality filters into the kernel"),
) -> None:
    """Run a read-only SQL query over captured events.

    Without --for it reads the store of a running server (the state directory); with --for it
    captures live into a private store for that long and answers from it."""
    import tempfile

    from .query.engine import QueryEngine, QueryFailed, QueryRejected
    from .sources import SOURCES
    from .sources import tracepoint as tp
    from .store.store import Store

    if fmt not in ("table", "json", "csv"):
        _fail(ValueError(f"unknown format {fmt!r}: use table, json or csv"))
    schemas = {n: s.schema() for n, s in SOURCES.items()}
    known = None
    cap = None
    tmp = None
    if seconds is not None:
        from .capture import Capture

        tmp = tempfile.TemporaryDirectory(prefix="kernsight-query-")
        store = Store(Path(tmp.name), schemas)
        cap = Capture()
        cap.subscribe(lambda b: store.append(b.source, b.data, b.seq, b.lost_total))

        def ensure(wanted: dict[str, dict]) -> dict[str, dict]:
            for t, f in wanted.items():  # a private store: every filter is sound here
                if tp.is_table(t):
                    store.add_table(t, tp.schema(t))
                cap.start(t, filters=f)
            err.print(f"capturing {', '.join(wanted) or 'nothing'} for {seconds:g}s")
            return wanted

        def known() -> set[str]:
            return set(store.tables) | tp.all_tables()

        cap.run_in_thread()
        engine = QueryEngine(store, ensure_sources=ensure, flush=cap.flush, pushdown=pushdown,
                             known_tables=known)  # fmt: skip
    else:
        from .detect import alerts

        root = state_dir() / "store"
        for d in root.glob("tp.*") if root.is_dir() else []:  # what the server captured
            if tp.TABLE_RE.match(d.name):
                try:
                    schemas[d.name] = tp.schema(d.name)
                except KeyError:
                    pass  # a tracepoint this kernel no longer has
        store = Store(root, schemas | {alerts.NAME: alerts.SCHEMA}, readonly=True)
        engine = QueryEngine(store)
    try:
        result = engine.query(sql, since=since, until=until, limit=limit, live_seconds=seconds)
    except (QueryRejected, QueryFailed, ValueError, KernelError) as e:
        _fail(e)
    finally:
        engine.close()
        if cap is not None:
            cap.close()
        if tmp is not None:
            tmp.cleanup()
    _print_result(result, fmt)


def _print_result(result, fmt: str) -> None:
    doc = result.to_json()
    if fmt == "json":
        print(json.dumps(doc))
        return
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(doc["columns"])
        w.writerows([[safe(v) for v in row] for row in doc["rows"]])
    else:
        from rich.table import Table

        t = Table(show_edge=False, pad_edge=False)
        for c in doc["columns"]:
            t.add_column(c)
        for row in doc["rows"]:
            t.add_row(*[safe(v) for v in row])
        Console(highlight=False).print(t)
    err.print(result.summary(), markup=False)


# -- MCP server ------------------------------------------------------------------------------


@app.command()
def serve(
    http: str = typer.Option(
        None, "--http", metavar="HOST:PORT",
        help="serve Streamable HTTP on HOST:PORT (e.g. 127.0.0.1:8765) instead of stdio",
    ),
    no_auth: bool = typer.Option(False, "--no-auth", help="HTTP without a token (loopback only)"),
    tokens_file: Path = typer.Option(None, help="YAML/JSON file of extra tokens with scopes"),
    public_url: str = typer.Option(None, help="the URL clients use for /mcp (behind a proxy)"),
    allow_host: list[str] = typer.Option([], help="extra allowed Host header values"),
    oauth_issuer: str = typer.Option(None, help="OAuth: accept JWTs from this issuer"),
    oauth_audience: str = typer.Option(None, help="OAuth: required audience"),
    oauth_jwks: str = typer.Option(None, help="OAuth: the issuer's JWKS URL"),
    view: bool = typer.Option(
        None, "--view/--no-view", help="HTTP: live panel on stderr (default: on a terminal)"
    ),
    interfaces: str = typer.Option(
        None, "--interfaces", envvar="KERNSIGHT_INTERFACES",
        help="packets: interfaces to watch, comma-separated (NAME or NETNS/NAME; default: "
        "every interface that is up, loopback excluded)",
    ),
    rules: list[Path] = typer.Option(
        [], "--rules", help="a directory of user rule files (*.yaml), besides STATE_DIR/rules",
    ),
) -> None:  # fmt: skip
    """Serve MCP to agents: stdio by default (only MCP on stdout), or Streamable HTTP."""
    from .server import serve as srv

    if interfaces:  # read by the packets source when it starts
        os.environ["KERNSIGHT_INTERFACES"] = interfaces
    if rules:  # read by the runtime when it loads the rules (detect.rules.user_dirs)
        os.environ["KERNSIGHT_RULES"] = os.pathsep.join(str(d) for d in rules)

    if http is None:
        try:
            srv.run_stdio(state_dir())
        except ValueError as e:  # a rule file with a mistake: nothing started
            _fail(e)
        return
    host, sep, port = http.rpartition(":")
    if not sep or not port.isdigit():
        _fail(ValueError(f"--http wants HOST:PORT, got {http!r}"))
    cfg = srv.HttpConfig(
        host=host.strip("[]") or "127.0.0.1", port=int(port), auth=not no_auth,
        tokens_file=tokens_file, public_url=public_url, allowed_hosts=allow_host,
        oauth_issuer=oauth_issuer, oauth_audience=oauth_audience, oauth_jwks=oauth_jwks,
    )  # fmt: skip
    try:
        srv.run_http(state_dir(), cfg, view=view)
    except (ValueError, PermissionError, KernelError) as e:
        _fail(e)


@app.command()
def token(
    url: str = typer.Option("http://127.0.0.1:8765/mcp", help="the server URL to show"),
) -> None:
    """Where the HTTP bearer token is and how to use it (never prints the token)."""
    from .server import serve as srv

    print(srv.usage(state_dir(), url))


app.add_typer(audit_app, name="audit")

from .detect.cli import register as _register_detect  # noqa: E402  (needs the helpers above)

_register_detect(app)

if __name__ == "__main__":
    app()
