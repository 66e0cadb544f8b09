"""Allow-list validation of agent-supplied SQL before it reaches DuckDB.

Agents may be buggy or hostile, so a query is accepted only when EVERY node of its sqlglot
tree is on an explicit allow-list: read-only query structure, operators, literals and pure
functions.  Nothing is rejected by keyword matching, because sqlglot folds syntax it does
not know into generic ``exp.Command`` / ``exp.Anonymous`` nodes that a deny-list would miss.

Callers must execute ``Checked.sql`` (sqlglot's re-rendering of the validated tree, with
comments dropped), never the raw text, so anything sqlglot did not put in the tree cannot
reach DuckDB.  The rendering is re-validated (it must be a fixed point) and cross-checked
with DuckDB's own parser.  ``kernsight.query.sandbox.harden`` is the second, independent
layer on the connection that runs the query.

Design decisions:

* WITH RECURSIVE is allowed: walking parent/child chains (process trees, lock chains) is a
  real need, and an unbounded recursion is stopped by the engine's memory cap and query
  timeout like any other expensive query.  Its self-reference is honoured only where DuckDB
  treats it as one (see ``_recursive_term``); anywhere else the name must be a known table.
* DuckDB's FROM-first form (``FROM events``) is allowed: sqlglot parses it into the same
  SELECT tree, so it passes exactly the same checks as ``SELECT * FROM events``.
* Session / catalog introspection (current_setting, current_database, version, duckdb_*,
  information_schema, ...) is rejected: it has no analytical value over telemetry, it leaks
  deployment details (paths, versions, settings, other schemas), and the store's schema is
  published by kernsight itself.
* random() / uuid() are allowed (harmless); setseed() is not (it changes session state).
* Lambdas are allowed: DuckDB lambdas are pure expressions and their bodies are walked too.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection
from dataclasses import dataclass

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

__all__ = ["Checked", "QueryRejected", "validate"]

DIALECT = "duckdb"


class QueryRejected(ValueError):
    """The SQL was refused; the message says which rule fired."""


@dataclass(frozen=True)
class Checked:
    """A validated query: ``sql`` is what to execute; ``tables`` the store tables it reads."""

    sql: str
    tables: frozenset[str]


# --- allow-lists ----------------------------------------------------------------------

# Query structure, references, literals and operators.  Exact classes, never superclasses,
# so a new sqlglot subclass is rejected until someone decides it is safe.
_NODES: frozenset[type[exp.Expression]] = frozenset({
    # query shape
    exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery, exp.With, exp.CTE,
    exp.From, exp.Join, exp.Lateral, exp.Values, exp.Table, exp.TableAlias, exp.Where,
    exp.Group, exp.Having, exp.Qualify, exp.Order, exp.Ordered, exp.Limit, exp.Offset,
    exp.Fetch, exp.LimitOptions, exp.Distinct, exp.Window, exp.WindowSpec, exp.TableSample,
    exp.Cube, exp.Rollup, exp.GroupingSets, exp.Filter, exp.WithinGroup, exp.IgnoreNulls,
    exp.RespectNulls,
    # references and literals
    exp.Star, exp.Column, exp.Identifier, exp.Alias, exp.Dot,
    exp.PositionalColumn, exp.Literal, exp.Null, exp.Boolean, exp.Var, exp.DataType,
    exp.DataTypeParam, exp.ColumnDef, exp.Interval, exp.Tuple, exp.Paren, exp.Bracket,
    exp.Slice, exp.PropertyEQ, exp.Kwarg, exp.Lambda, exp.Comprehension, exp.Collate,
    exp.Escape, exp.RawString, exp.AtTimeZone, exp.JSONPath, exp.JSONPathRoot,
    exp.JSONPathKey, exp.JSONPathSubscript, exp.JSONPathWildcard, exp.JSONPathSlice,
    # operators and predicates
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Neg, exp.EQ, exp.NEQ,
    exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ, exp.And, exp.Or,
    exp.Not, exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.SimilarTo, exp.Glob,
    exp.DPipe, exp.BitwiseAnd, exp.BitwiseOr, exp.BitwiseXor, exp.BitwiseNot,
    exp.BitwiseLeftShift, exp.BitwiseRightShift, exp.Any, exp.All, exp.Exists,
})

# Typed sqlglot function classes that are pure computations over values.  (CAST, CASE,
# COALESCE, ... are Func subclasses in sqlglot, so they live here too.)
_FUNCS: frozenset[type[exp.Func]] = frozenset({
    # conditional / conversion / constructors
    exp.Cast, exp.TryCast, exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.Greatest,
    exp.Least, exp.Extract, exp.Array, exp.Struct, exp.Map, exp.ToMap, exp.MapFromEntries,
    exp.MapKeys,
    exp.StructExtract, exp.Typeof, exp.Try, exp.Columns,
    # aggregates
    exp.Count, exp.CountIf, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.AnyValue, exp.First,
    exp.Last, exp.ArgMax, exp.ArgMin, exp.ArrayAgg, exp.GroupConcat, exp.Median, exp.Mode,
    exp.Quantile, exp.PercentileCont, exp.PercentileDisc, exp.ApproxDistinct,
    exp.ApproxQuantile, exp.ApproxTopK, exp.Stddev, exp.StddevPop, exp.StddevSamp,
    exp.Variance, exp.VariancePop, exp.CovarPop, exp.CovarSamp, exp.Corr, exp.Kurtosis,
    exp.Skewness, exp.LogicalAnd, exp.LogicalOr, exp.BitwiseAndAgg, exp.BitwiseOrAgg,
    exp.BitwiseXorAgg, exp.RegrAvgx, exp.RegrAvgy, exp.RegrCount, exp.RegrIntercept,
    exp.RegrR2, exp.RegrSlope, exp.RegrSxx, exp.RegrSxy, exp.RegrSyy, exp.Grouping,
    # window
    exp.RowNumber, exp.Rank, exp.DenseRank, exp.PercentRank, exp.CumeDist, exp.Ntile,
    exp.Lag, exp.Lead, exp.FirstValue, exp.LastValue, exp.NthValue,
    # math
    exp.Abs, exp.Ceil, exp.Floor, exp.Round, exp.Trunc, exp.Sign, exp.Sqrt, exp.Cbrt,
    exp.Pow, exp.Exp, exp.Ln, exp.Log, exp.Pi, exp.Sin, exp.Cos, exp.Tan, exp.Cot,
    exp.Asin, exp.Acos, exp.Atan, exp.Atan2, exp.Degrees, exp.Radians, exp.Factorial,
    exp.IsNan, exp.IsInf, exp.Rand, exp.Uuid, exp.Getbit,
    # strings and regexps (DuckDB uses RE2: linear time, no catastrophic backtracking)
    exp.Lower, exp.Upper, exp.Length, exp.BitLength, exp.Concat, exp.ConcatWs,
    exp.Substring, exp.Left, exp.Right, exp.Pad, exp.Trim, exp.Replace, exp.Reverse,
    exp.Repeat, exp.Split, exp.SplitPart, exp.StartsWith, exp.EndsWith, exp.Contains,
    exp.StrPosition, exp.Format, exp.Translate, exp.Ascii, exp.Chr, exp.Unicode, exp.MD5,
    exp.SHA, exp.SHA2, exp.Hex, exp.Unhex, exp.ToBase64, exp.FromBase64, exp.ToBinary,
    exp.Encode, exp.Decode, exp.Levenshtein, exp.JarowinklerSimilarity, exp.RegexpLike,
    exp.RegexpFullMatch, exp.RegexpExtract, exp.RegexpExtractAll, exp.RegexpReplace,
    exp.RegexpSplit,
    # date / time
    exp.CurrentDate, exp.CurrentTime, exp.CurrentTimestamp, exp.TimestampTrunc,
    exp.DateDiff, exp.DateAdd, exp.DateBin, exp.DateFromParts, exp.TimeFromParts,
    exp.TimestampFromParts, exp.TimeToStr, exp.StrToTime, exp.TimeToUnix, exp.UnixToTime,
    exp.Year, exp.Quarter, exp.Month, exp.Week, exp.WeekOfYear, exp.Day, exp.DayOfMonth,
    exp.DayOfWeek, exp.DayOfWeekIso, exp.DayOfYear, exp.Dayname, exp.Monthname, exp.Hour,
    exp.Minute, exp.Second, exp.LastDay, exp.ToDays,
    # lists, maps, JSON values (not JSON files)
    exp.ArrayAppend, exp.ArrayPrepend, exp.ArrayConcat, exp.ArrayContains,
    exp.ArrayDistinct, exp.ArrayFilter, exp.ArrayIntersect, exp.ArrayMax, exp.ArrayMin,
    exp.ArrayPosition, exp.ArrayReverse, exp.ArraySize, exp.ArraySlice, exp.ArraySort,
    exp.ArrayToString, exp.EuclideanDistance, exp.Flatten, exp.Transform, exp.Reduce,
    exp.ArrayContainsAll, exp.ArrayContainedBy, exp.ArrayOverlaps, exp.Explode, exp.Unnest,
    exp.GenerateSeries, exp.JSONArray, exp.JSONObject, exp.JSONKeys, exp.JSONType,
    exp.JSONExtract, exp.JSONExtractScalar,
})

# sqlglot also models AND/OR, EXISTS and COLLATE as Func subclasses; judge every typed
# function-like node against both lists.
_TYPED = _NODES | _FUNCS

# DuckDB functions that sqlglot leaves as ``exp.Anonymous`` (matched case-insensitively).
# list_aggregate()/aggregate() are deliberately absent: they take a function NAME as a
# string, which would let a query call something this allow-list never saw.
_ANON: frozenset[str] = frozenset("""
    mean arbitrary favg fsum sumkahan kahan_sum geomean geometric_mean histogram product
    reservoir_quantile entropy kurtosis_pop mad sem weighted_avg bitstring_agg count_star
    round_even even gcd lcm isfinite bit_count gamma lgamma nextafter signbit fdiv fmod divide
    strlen octet_length suffix prefix regexp_split_to_array regexp_escape printf hash ord
    to_base bin base64 damerau_levenshtein hamming jaccard jaro_similarity mismatches
    list_to_string strip_accents nfc_normalize url_encode url_decode format_bytes
    formatreadablesize formatreadabledecimalsize parse_path parse_dirname parse_filename
    parse_dirpath bar uuidv4 uuidv7 iff like_escape ilike_escape md5_number
    now get_current_timestamp transaction_timestamp date_part datepart date_sub datesub
    epoch_us epoch_ns make_timestamptz make_timestamp_ms make_timestamp_ns try_strptime age
    millisecond microsecond nanosecond weekday yearweek isoyear era decade century millennium
    to_seconds to_milliseconds to_microseconds to_minutes to_hours to_weeks to_months
    to_years timezone julian
    list_pack list_extract list_element array_extract list_slice list_cat array_push_back
    array_push_front list_position list_indexof array_indexof list_unique array_unique
    list_sort array_sort list_reverse_sort array_reverse_sort list_reverse array_transform
    list_apply array_apply list_reduce array_reduce list_sum list_avg list_count
    list_any_value list_first list_last list_median list_mode list_string_agg list_bool_and
    list_bool_or list_zip list_has_all array_has_any list_intersect list_grade_up
    array_grade_up list_select array_select list_where array_where list_resize array_resize
    list_inner_product list_dot_product list_cosine_similarity array_cosine_similarity
    array_distance array_inner_product cardinality struct_insert row map_values map_extract
    element_at map_entries map_concat map_contains json_value json_valid json_array_length
    json_structure to_json json_contains json_group_array json_group_object json_exists set_bit
""".split())

# Table-valued functions allowed in FROM: they only generate values from their arguments.
# Their output size is bounded by the engine's memory cap and query timeout.
_TABLE_FUNCS: frozenset[type[exp.Func]] = frozenset({exp.GenerateSeries, exp.Unnest})
_TABLE_FUNC_NAMES = frozenset({"range", "generate_series", "unnest"})

# Reasons given for well-known refusals.  Messages only: acceptance is purely the above.
_DENY_REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), why)
    for p, why in (
        (r"^(read_|parquet_|iceberg_|delta_|sqlite_|postgres_|mysql_|st_read)|_scan$"
         r"|^(glob|sniff_csv)$", "it reads outside the store"),
        (r"^getenv$", "it reads the host environment"),
        (r"^(query|query_table|json_execute_serialized_sql)$", "it runs dynamic SQL"),
        (r"^(setseed|nextval|checkpoint|force_checkpoint)$",
         "it changes session or database state"),
        (r"^(duckdb_|pragma_|pg_|has_\w+_privilege$)|^(current_(setting|database|catalog"
         r"|schemas?|user|role|version|query)|session_user|user|version|txid_current"
         r"|getvariable|currval|which_secret|sql_auto_complete|database_size"
         r"|col_description|obj_description|in_search_path)$",
         "it introspects the session or catalog"),
        (r"^(list_aggregate|list_aggr|aggregate|array_aggregate|array_aggr|apply)$",
         "it calls a function chosen by name at run time; use list_sum/list_max/... "
         "or unnest + an aggregate instead"),
    )
)

# Statement-like nodes, named for messages.
_STATEMENTS: dict[type[exp.Expression], str] = {
    exp.Insert: "INSERT", exp.Update: "UPDATE", exp.Delete: "DELETE", exp.Merge: "MERGE",
    exp.Copy: "COPY", exp.Drop: "DROP", exp.Alter: "ALTER", exp.Attach: "ATTACH",
    exp.Detach: "DETACH", exp.Install: "INSTALL", exp.Pragma: "PRAGMA", exp.Set: "SET",
    exp.Use: "USE", exp.Describe: "DESCRIBE", exp.Summarize: "SUMMARIZE", exp.Show: "SHOW",
    exp.Transaction: "BEGIN", exp.Commit: "COMMIT", exp.Rollback: "ROLLBACK",
    exp.TruncateTable: "TRUNCATE", exp.Comment: "COMMENT",
    exp.Pivot: "PIVOT",  # dynamic PIVOT creates ENUM types in the catalog
}

_PATH_LIKE = re.compile(
    r"[/\\~]|://|\.(csv|tsv|txt|json|jsonl|ndjson|parquet|arrow|ipc|gz|zst|xz|db|duckdb"
    r"|sqlite3?|xlsx|log|conf)$",
    re.IGNORECASE,
)
_INTROSPECTION_SCHEMAS = frozenset({"information_schema", "pg_catalog"})
_INTROSPECTION_TABLE = re.compile(r"^(duckdb_|pragma_|pg_|sqlite_)", re.IGNORECASE)
# Control characters other than whitespace (NUL would truncate a C string, for example).
_BAD_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # sqlglot underlines the culprit in its messages
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# --- entry point -----------------------------------------------------------------------

def validate(sql: str, known_tables: Collection[str], *, max_sql_bytes: int = 64_000) -> Checked:
    """Accept one read-only SELECT over ``known_tables`` or raise QueryRejected saying why.

    A table's identity is its dotted name as written (``tp.sched.sched_switch``, whether
    written as catalog.schema.table or as one quoted identifier), matched case-insensitively
    as DuckDB does.  Execute ``Checked.sql``, not ``sql``.
    """
    if not isinstance(sql, str):
        raise QueryRejected(f"SQL must be a string, not {type(sql).__name__}")
    try:
        size = len(sql.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise QueryRejected(f"SQL text is not valid Unicode: {e.reason}") from None
    if size > max_sql_bytes:
        raise QueryRejected(f"SQL text is {size} bytes; the limit is {max_sql_bytes}")
    if m := _BAD_CHARS.search(sql):
        raise QueryRejected(f"SQL text contains control character U+{ord(m.group()):04X}")

    known = _Known(known_tables)
    normalized, tables = _check_text(sql, known)
    # The rendering must be a fixed point: re-validating it yields the same text and tables.
    # Guards against sqlglot parsing its own output differently from the tree we checked.
    again, tables2 = _check_text(normalized, known)
    if again != normalized or tables2 != tables:
        raise QueryRejected("the query does not survive normalization unchanged; rewrite it")
    _duckdb_agrees(normalized)
    return Checked(normalized, frozenset(tables))


def _fold(name: str) -> str:
    """Case-fold ASCII letters only.  DuckDB matches identifiers case-insensitively; folding
    no more than it does means a match here is always a match there (casefold() would, for
    example, equate 'ß' with 'ss' and point at a table DuckDB considers different)."""
    return name.translate(_ASCII_LOWER)


class _Known:
    """known_tables, looked up exactly first and then case-insensitively (DuckDB's rule)."""

    def __init__(self, names: Collection[str]) -> None:
        if isinstance(names, str):
            raise TypeError("known_tables must be a collection of names, not a string")
        self.exact = frozenset(names)
        self.folded = {_fold(n): n for n in sorted(self.exact)}

    def get(self, name: str) -> str | None:
        return name if name in self.exact else self.folded.get(_fold(name))

    def listing(self, limit: int = 25) -> str:
        names = sorted(self.exact)
        dotted = 0
        if len(names) > limit:  # the tracepoint tables are too many to list here
            names = [n for n in names if "." not in n]
            dotted = len(self.exact) - len(names)
        more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
        text = (", ".join(names[:limit]) + more) if names else "(none)"
        if dotted:
            text += f"; and {dotted} dotted tables such as tp.<category>.<name>"
        return text


def _check_text(sql: str, known: _Known) -> tuple[str, set[str]]:
    try:
        statements = sqlglot.parse(sql, read=DIALECT)
    except SqlglotError as e:
        raise QueryRejected(f"SQL does not parse: {_ANSI.sub('', str(e))}") from None
    except RecursionError:
        raise QueryRejected("SQL is nested too deeply") from None
    if len(statements) != 1:
        empty = sum(s is None for s in statements)
        detail = f" ({empty} empty)" if empty else ""
        raise QueryRejected(
            f"only a single SELECT statement is allowed; found {len(statements)} "
            f"statements{detail}"
        )
    root = statements[0]
    if root is None:
        raise QueryRejected("no SQL statement found")

    body = root
    while isinstance(body, exp.Subquery):
        body = body.this
    if not isinstance(body, exp.Select | exp.SetOperation):
        kind = _statement_name(body)
        after_with = " (after a WITH clause)" if body.args.get("with_") else ""
        if kind:
            raise QueryRejected(
                f"statement type {kind} is not allowed{after_with}; "
                "only a single read-only SELECT query (optionally with WITH) is accepted"
            )
        raise QueryRejected(f"expected a SELECT query, got {_snippet(body)!r}")

    tables: set[str] = set()
    try:
        for node in list(root.walk()):
            _check_node(node, known, tables)
        normalized = root.sql(dialect=DIALECT, comments=False,
                              unsupported_level=ErrorLevel.RAISE)
    except RecursionError:
        raise QueryRejected("SQL is nested too deeply") from None
    except SqlglotError as e:  # the generator could not render something faithfully
        raise QueryRejected(f"SQL cannot be rendered faithfully for DuckDB: {e}") from None
    if m := _BAD_CHARS.search(normalized):
        raise QueryRejected(f"SQL text contains control character U+{ord(m.group()):04X}")
    return normalized, tables


# --- per-node rules --------------------------------------------------------------------

def _check_node(node: exp.Expression, known: _Known, tables: set[str]) -> None:
    if isinstance(node, exp.Func):
        _check_func(node)
    elif isinstance(node, exp.Table):
        _check_table(node, known, tables)
    elif type(node) not in _NODES:
        raise QueryRejected(_construct_message(node))


def _construct_message(node: exp.Expression) -> str:
    kind = _statement_name(node)
    if kind:
        where = "inside a WITH clause" if node.find_ancestor(exp.CTE) else "nested in the query"
        return f"statement type {kind} is not allowed ({where})"
    specific = {
        exp.Into: "SELECT ... INTO is not allowed (it creates a table)",
        exp.Lock: "FOR UPDATE / FOR SHARE is not allowed",
        exp.Placeholder: "parameters and placeholders (?, $1, $name) are not allowed",
        exp.Parameter: "parameters and placeholders (?, $1, $name) are not allowed",
        exp.SessionParameter: "session variables are not allowed",
        exp.HistoricalData: "time travel (AT / BEFORE) is not allowed",
    }.get(type(node))
    return specific or f"SQL construct {type(node).__name__} is not allowed: {_snippet(node)!r}"


def _check_func(node: exp.Func) -> None:
    name = _func_name(node)
    parent, key = node.parent, node.arg_key
    if isinstance(parent, exp.Dot) and key == "expression":
        # schema.f(...) or x.f(...): the schema part could resolve to a non-builtin function.
        raise QueryRejected(
            f"function {name} is not allowed as a qualified or method-style call; "
            f"call {name}(...) directly"
        )
    in_from = key == "this" and isinstance(parent, exp.Table | exp.From | exp.Join | exp.Lateral)
    if in_from:
        ok = type(node) in _TABLE_FUNCS or (
            type(node) is exp.Anonymous and name in _TABLE_FUNC_NAMES
        )
        if not ok:
            reason = _deny_reason(name)
            if reason:
                raise QueryRejected(f"function {name} is not allowed: {reason}")
            raise QueryRejected(
                f"function {name} is not allowed as a table source; only "
                f"{', '.join(sorted(_TABLE_FUNC_NAMES))} are"
            )
        if isinstance(parent, exp.Table) and (parent.args.get("db") or parent.args.get("catalog")):
            raise QueryRejected(f"table function {name} must not be schema-qualified")
        return
    if type(node) is exp.Anonymous:
        ok = name in _ANON
    else:
        ok = type(node) in _TYPED
    if not ok:
        reason = _deny_reason(name) or "it is not on the allow-list of pure functions"
        raise QueryRejected(f"function {name} is not allowed: {reason}")


def _func_name(node: exp.Func) -> str:
    return (node.name if type(node) is exp.Anonymous else node.sql_name()).lower()


def _deny_reason(name: str) -> str | None:
    return next((why for pat, why in _DENY_REASONS if pat.search(name)), None)


def _check_table(node: exp.Table, known: _Known, tables: set[str]) -> None:
    if isinstance(node.this, exp.Func):
        return  # a table function; _check_func judges it
    parts = [p.name for p in node.parts]
    ident = ".".join(parts)
    if len(parts) > 1 and any("." in p for p in parts):
        # tp."sched.sched_switch" would join to a known name yet be a different object
        raise QueryRejected(
            f"table name {_snippet(node)!r} is ambiguous: write each part unquoted "
            "(a.b.c) or the whole name as one quoted identifier (\"a.b.c\")"
        )
    if len(parts) == 1 and _cte_visible(node, _fold(parts[0])):
        return
    if parts[0].casefold() in _INTROSPECTION_SCHEMAS or _INTROSPECTION_TABLE.match(parts[-1]):
        raise QueryRejected(f"table '{ident}' is not allowed: it introspects the catalog")
    canonical = known.get(ident)
    if canonical is None:
        if _PATH_LIKE.search(ident):
            raise QueryRejected(
                f"table '{ident}' is not allowed: it looks like a file path, and only "
                "store tables can be read"
            )
        if _fold(parts[0]) == "tp":
            raise QueryRejected(
                f"unknown table '{ident}': tracepoint tables are named "
                "tp.<category>.<name> (e.g. tp.sched.sched_switch); find them with the "
                "list_tracepoints tool or `kernsight tracepoints FILTER`"
            )
        raise QueryRejected(f"unknown table '{ident}'; known tables: {known.listing()}")
    tables.add(canonical)
    if len(parts) > 1:
        # The query runs against a view named by the whole dotted name, so a multi-part
        # reference becomes that one quoted identifier, aliased by its last part so that
        # `sched_switch.col` still binds as DuckDB would bind it.
        alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(parts[-1]))
        node.replace(exp.Table(this=exp.to_identifier(canonical, quoted=True), alias=alias))


def _cte_visible(node: exp.Table, name: str) -> bool:
    """Whether an unqualified table name resolves to a CTE in DuckDB's scoping.

    This must never claim a CTE where DuckDB would read a catalog table of that name (that
    would read an unlisted table), so it under-approximates: a query body sees all its
    WITH's CTEs, a CTE sees only the ones before it (DuckDB resolves forward references to
    the catalog), and a recursive CTE sees itself only inside its recursive term.
    """
    child: exp.Expression = node
    parent = node.parent
    while parent is not None:
        if isinstance(parent, exp.With) and isinstance(child, exp.CTE):
            ctes = parent.expressions
            idx = next(i for i, c in enumerate(ctes) if c is child)
            if any(_fold(c.alias_or_name) == name for c in ctes[:idx]):
                return True
            if (parent.args.get("recursive") and _fold(child.alias_or_name) == name
                    and _recursive_term(node, child)):
                return True
        elif not isinstance(child, exp.With):
            with_ = parent.args.get("with_")
            if isinstance(with_, exp.With) and any(
                _fold(c.alias_or_name) == name for c in with_.expressions
            ):
                return True
        child, parent = parent, parent.parent
    return False


def _recursive_term(node: exp.Expression, cte: exp.CTE) -> bool:
    """Whether node lies in the right operand of the CTE body's top-level UNION.

    Only there does DuckDB bind the CTE's own name to the working table; in the anchor, or
    with INTERSECT/EXCEPT or no set operation at all, the name means the catalog table.
    """
    body = cte.this
    if not isinstance(body, exp.Union):
        return False
    term = body.expression
    ancestor: exp.Expression | None = node
    while ancestor is not None and ancestor is not cte:
        if ancestor is term:
            return True
        ancestor = ancestor.parent
    return False


def _statement_name(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Command):  # e.g. this="CREATE", expression=" SECRET s (...)"
        words = [str(node.this)] + str(node.args.get("expression") or "").split()[:1]
        return " ".join(words).upper() if words[0].upper() == "CREATE" else words[0].upper()
    if isinstance(node, exp.Create):
        return f"CREATE {node.args.get('kind') or ''}".strip()
    if isinstance(node, exp.Pivot) and node.args.get("unpivot"):
        return "UNPIVOT"
    name = _STATEMENTS.get(type(node))
    if name is None and isinstance(node, exp.DML | exp.DDL):
        name = type(node).__name__.upper()
    return name


def _snippet(node: exp.Expression, limit: int = 60) -> str:
    try:
        text = node.sql(dialect=DIALECT, comments=False)
    except Exception:  # rendering is only for the message
        text = type(node).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- DuckDB cross-check ----------------------------------------------------------------

_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _duckdb_agrees(sql: str) -> None:
    """DuckDB's own parser must also see exactly one SELECT statement.

    Parsing only, on a private in-memory connection that never executes anything.  This is
    a coarse check (DuckDB reports DESCRIBE or a data-modifying CTE as SELECT too), but it
    catches any disagreement about statement boundaries between sqlglot and DuckDB.
    """
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:")
        try:
            statements = _parser.extract_statements(sql)
        except duckdb.Error as e:
            raise QueryRejected(f"DuckDB cannot parse the query: {e}") from None
    kinds = [s.type for s in statements]
    if kinds != [duckdb.StatementType.SELECT]:
        raise QueryRejected(
            f"DuckDB parses the query as {', '.join(k.name for k in kinds) or 'nothing'}; "
            "expected a single SELECT"
        )
