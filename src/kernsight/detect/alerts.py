"""The `alerts` table: one row per alert the rule engine raises (queryable like any table)."""

from __future__ import annotations

import pyarrow as pa

from ..sources.base import TS_TYPE, Column

NAME = "alerts"
SEVERITIES = ("info", "low", "medium", "high", "critical")
DESCRIPTION = (
    "Alerts raised by the detection rules (docs/rules.md), one row per alert, with the "
    "triggering row's process and key columns. Repeats of a rule for the same process (or, for "
    "windowed rules, the same group) within the rate-limit window are not separate rows: they "
    "are counted in `suppressed` of a later row."
)
EXAMPLE = (
    "SELECT ts, severity, rule_id, pid, comm, output "
    "FROM alerts "
    "WHERE severity_level >= 3 "
    "ORDER BY ts DESC LIMIT 20"
)
COLUMNS = [
    Column("ts", TS_TYPE, "when the triggering event happened (UTC, ns)"),
    Column("pid", pa.uint32(), "process id of the triggering row"),
    Column("tid", pa.uint32(), "thread id of the triggering row"),
    Column("uid", pa.uint32(), "real user id of the triggering row"),
    Column("comm", pa.string(), "command name of the triggering row"),
    Column("cgroup_id", pa.uint64(), "cgroup v2 id of the triggering row"),
    Column("rule_id", pa.string(), "id of the rule that fired"),
    Column("title", pa.string(), "the rule's title"),
    Column("severity", pa.string(), "info | low | medium | high | critical"),
    Column("severity_level", pa.uint8(), "severity as a number: info=0 ... critical=4"),
    Column("tags", pa.list_(pa.string()), "MITRE ATT&CK technique ids of the rule"),
    Column("source", pa.string(), "the table the rule reads"),
    Column("output", pa.string(), "the rule's output template rendered (traced strings cleaned)"),
    Column("key", pa.string(), "JSON object of the triggering row's key columns (or the group)"),
    Column("suppressed", pa.uint64(),
           "repeats of this rule for this process / group folded into this row by rate limiting"),
    Column("alert_id", pa.uint64(), "number of the alert in this server run (the alerts cursor)"),
    Column("raised_at", TS_TYPE, "when the engine raised the alert (UTC, ns)"),
]  # fmt: skip
SCHEMA = pa.schema([pa.field(c.name, c.type) for c in COLUMNS])
