"""Defence in depth for the DuckDB connection that runs agent SQL.

``validate`` is the first layer; ``harden`` makes the engine itself refuse to touch files,
the network or extensions, and freezes the configuration, so a validator bug alone is not
enough to escape.  What it does NOT do: DuckDB has no runtime read-only switch, so DML and
DDL against the database's own tables (DELETE, CREATE TABLE, ...) and CHECKPOINT still work
on a hardened connection.  Keeping telemetry intact against those relies on the validator,
or on giving agents a read-only database (``duckdb.connect(path, read_only=True)`` in a
process that does not also write it, or Arrow snapshots registered in a scratch database).

These settings are GLOBAL in DuckDB: they apply to the whole database instance, i.e. to
every connection of it (in one process, connections to the same file share an instance),
and cannot be undone once ``lock_configuration`` is set.  Harden an instance that only
serves agent queries.
"""

from __future__ import annotations

import logging

import duckdb

__all__ = ["harden"]

log = logging.getLogger(__name__)

_Value = str | int | bool | list[str]

# Settings whose absence means we cannot vouch for the sandbox: refuse instead of running.
_REQUIRED = frozenset({
    "enable_external_access", "autoinstall_known_extensions", "autoload_known_extensions",
    "lock_configuration",
})

# What the hardened configuration must read back as (duckdb_settings() renders values).
_EXPECTED = {
    "enable_external_access": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    "allowed_paths": "[]",
    "allowed_directories": "[]",
    "allowed_configs": "[]",
    "temp_directory": "",
    "lock_configuration": "true",
}


def harden(conn: duckdb.DuckDBPyConnection, *, memory_limit: str = "1GB", threads: int = 2) -> None:
    """Lock ``conn``'s database instance down for untrusted read-only queries.

    Settings missing from this DuckDB version are skipped with a warning, except the ones
    the sandbox depends on, whose absence raises RuntimeError.  Idempotent: an instance that
    is already locked in the hardened state is accepted; one locked otherwise raises.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    current = _settings(conn)
    if missing := sorted(_REQUIRED - current.keys()):
        raise RuntimeError(
            f"DuckDB {duckdb.__version__} lacks settings {missing}; refusing to run agent "
            "SQL on a connection that cannot be hardened"
        )
    if current["lock_configuration"] == "true":
        _verify(current)  # already locked: fine only if it is our hardened state
        return

    # Order matters:
    # 1. Anything that names paths must come before enable_external_access=false, after
    #    which DuckDB refuses to change it (temp_directory).  Worse, disabling external
    #    access while a temp_directory is set adds that directory (default: ./.tmp) to
    #    allowed_directories, where COPY TO and read_csv then still work.  So the temp
    #    directory is cleared first, and the path allow-lists are emptied.
    # 2. lock_configuration must be last: after it nothing can be SET or RESET, by us or by
    #    a query (allowed_configs is emptied first, since it exempts settings from the lock).
    steps: list[tuple[str, _Value]] = [
        ("allowed_paths", []),
        ("allowed_directories", []),
        ("temp_directory", ""),  # no spill directory: big queries fail instead of writing
        ("max_temp_directory_size", "0B"),  # and no spill budget should one be set anyway
        ("allow_persistent_secrets", False),
        ("enable_external_access", False),  # files, COPY, ATTACH, INSTALL/LOAD, replacements
        ("autoinstall_known_extensions", False),
        ("autoload_known_extensions", False),
        ("allow_community_extensions", False),
        ("allow_unsigned_extensions", False),
        ("allow_extension_repositories", "forbidden"),
        ("python_enable_replacements", False),  # no scans of Python variables by name
        ("memory_limit", memory_limit),
        ("threads", threads),
        ("allowed_configs", []),
        ("lock_configuration", True),
    ]
    for name, value in steps:
        if name not in current:
            log.warning("DuckDB %s has no setting %s; skipped", duckdb.__version__, name)
            continue
        conn.execute(f"SET {name} = {_literal(value)}")
    _verify(_settings(conn))


def _settings(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = conn.execute("SELECT name, value FROM duckdb_settings()").fetchall()
    return {str(name): str(value) for name, value in rows}


def _literal(value: _Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return "'" + value.replace("'", "''") + "'"


def _verify(current: dict[str, str]) -> None:
    wrong = {
        name: current[name]
        for name, want in _EXPECTED.items()
        if name in current and current[name] != want
    }
    if wrong:
        raise RuntimeError(f"DuckDB connection is not hardened; unexpected settings: {wrong}")
