"""`kernsight audit ...`: the verifier key, the offline log verifier and receipt checks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from . import LOG_FILE

if TYPE_CHECKING:  # imported by every `kernsight` command: crypto loads only for audit commands
    from .note import Verifier

app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log: key, verify, receipts.")


def audit_dir() -> Path:
    return Path(os.environ.get("KERNSIGHT_STATE_DIR", "/var/lib/kernsight")) / "audit"


def _die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise typer.Exit(2)


def _verifier(key: str | None, directory: Path) -> tuple[Verifier, str]:
    """(verifier, where it came from): --key as a key or a file holding one, else the key
    file next to the log (only as trustworthy as that directory: keep a copy elsewhere)."""
    from .note import KEY_FILE, VERIFIER_FILE, NoteError, Signer, Verifier

    try:
        if key:
            if Path(key).is_file():
                return Verifier.parse(Path(key).read_text()), key
            return Verifier.parse(key), "--key"
        pub = directory / VERIFIER_FILE
        if pub.is_file():
            return Verifier.parse(pub.read_text()), str(pub)
        priv = directory / KEY_FILE
        if priv.is_file():
            return Signer.parse(priv.read_text()).verifier, str(priv)
    except NoteError as e:
        _die(f"bad verifier key: {e}")
    except OSError as e:
        _die(str(e))
    _die(f"no verifier key in {directory} (the first `kernsight serve` creates it); pass --key")
    raise AssertionError


@app.command()
def key() -> None:
    """Print the verifier key (name+keyid+base64) that checks this host's checkpoints."""
    v, _ = _verifier(None, audit_dir())
    print(v)


@app.command()
def verify(
    log: Path = typer.Option(None, "--log", help="the log file (default: STATE_DIR/audit/log)"),
    key: str = typer.Option(None, "--key", help="verifier key, or a file holding it"),
    pinned: Path = typer.Option(None, "--pinned", help="a checkpoint you kept (rollback check)"),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON"),
) -> None:
    """Check the whole log; exit 0 only when everything verifies.

    Re-derives every leaf, recomputes the tree, checks every checkpoint signature and their
    consistency (and a pinned checkpoint); else prints the first bad index and the kind."""
    from .verify import verify_log

    path = log or audit_dir() / LOG_FILE
    if not path.is_file():
        _die(f"no audit log at {path}")
    v, source = _verifier(key, path.parent)
    note = None
    if pinned is not None:
        try:
            note = pinned.read_text()
        except OSError as e:
            _die(str(e))
    rep = verify_log(path, v, note)
    if as_json:
        print(json.dumps(rep.as_dict(), indent=1))
    else:
        print(f"log: {path}: {rep.entries} entries, {rep.checkpoints} checkpoints")
        print(f"key: {v} (from {source})")
        if rep.ok:
            pin = f"; consistent with the pinned checkpoint of size {rep.pinned}" if note else ""
            print(f"OK: every record re-derived, tree recomputed (root {rep.root}), every "
                  f"checkpoint signature valid and mutually consistent{pin}")  # fmt: skip
        else:
            print(rep.problem)
        for n in rep.notes:
            print(f"note: {n}")
    raise typer.Exit(0 if rep.ok else 1)


@app.command("verify-receipt")
def verify_receipt_cmd(
    file: Path = typer.Argument(..., help="a saved tool result (JSON) carrying its receipt"),
    key: str = typer.Option(None, "--key", help="verifier key, or a file holding it"),
    log: Path = typer.Option(None, "--log", help="also check this log holds it (default: the "
                             "state directory's log, when present)"),
    no_log: bool = typer.Option(False, "--no-log", help="check the receipt alone (offline)"),
) -> None:  # fmt: skip
    """Prove a saved tool result was served and is in the log.

    Its digest is in a response entry that a signed checkpoint includes (and, with the log,
    the log still holds that entry)."""
    from .verify import parse_json_file, verify_receipt

    try:
        doc = parse_json_file(file)
    except (OSError, ValueError) as e:
        _die(f"cannot read {file}: {e}")
    path = None if no_log else (log or audit_dir() / LOG_FILE)
    if path is not None and not path.is_file():
        if log is not None:
            _die(f"no audit log at {path}")
        path = None
    v, source = _verifier(key, (path.parent if path else audit_dir()))
    ok, lines = verify_receipt(doc, v, path)
    print(f"key: {v} (from {source})")
    for line in lines:
        print(line)
    print("OK: the result is in the audit log" if ok else "FAILED")
    raise typer.Exit(0 if ok else 1)
