"""The tracepoints the kernel offers (tracefs `available_events`) and their record layouts
(each `events/<category>/<name>/format`): field types, offsets, sizes, signedness, print format.

Nothing here interprets a record; it only says where each field is and what kind it is, so
that a decoder can view whole batches of raw records at once.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import TracefsError
from .system import tracefs_root

_FIELD = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>-?\d+);"
)
_ARRAY = re.compile(r"^(?P<name>\w+)\s*\[(?P<n>[^\]]*)\]$")
_NAME = re.compile(r"^[a-z0-9_]+$", re.IGNORECASE)
_CHAR_TYPES = {"char", "signed char", "const char"}
_INT_SIZES = (1, 2, 4, 8)

# Field kinds a decoder handles; anything else is RAW (the field's bytes, with a note).
INT, POINTER, CHARS, ARRAY, STRING, DYN_ARRAY, RAW = (
    "int", "pointer", "chars", "array", "string", "dyn_array", "raw",
)  # fmt: skip


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str  # the C type as the format file states it (e.g. "__data_loc char[]")
    offset: int
    size: int
    signed: bool
    kind: str
    elem_size: int = 0  # ARRAY / DYN_ARRAY: bytes per element
    count: int = 0  # ARRAY: number of elements
    rel: bool = False  # STRING / DYN_ARRAY stored as __rel_loc (offset from the field's end)
    note: str = ""  # why a field is RAW, or what to know about it

    def as_dict(self) -> dict:
        d = {"name": self.name, "c_type": self.ctype, "offset": self.offset, "size": self.size,
             "signed": self.signed, "kind": self.kind}  # fmt: skip
        if self.kind in (ARRAY, DYN_ARRAY):
            d["element_size"] = self.elem_size
        if self.kind == ARRAY:
            d["count"] = self.count
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class Format:
    category: str
    name: str
    id: int
    fields: tuple[Field, ...]  # the tracepoint's own fields (common_* excluded)
    print_fmt: str
    fixed_size: int  # bytes of the fixed part of a record, common fields included

    @property
    def dynamic(self) -> tuple[Field, ...]:
        """Fields whose data follows the fixed part (__data_loc / __rel_loc)."""
        return tuple(f for f in self.fields if f.kind in (STRING, DYN_ARRAY)
                     or f.ctype.startswith(("__data_loc", "__rel_loc")))  # fmt: skip

    def description(self) -> str:
        """What the kernel prints for one event, with %-conversions named by their fields:
        the closest thing a format file has to a description."""
        return describe_print_fmt(self.print_fmt)


def _events_dir() -> Path:
    return tracefs_root() / "events"


@functools.cache
def available() -> tuple[tuple[str, str], ...]:
    """Every (category, name) in available_events, sorted."""
    path = tracefs_root() / "available_events"
    try:
        text = path.read_text()
    except OSError as e:
        raise TracefsError(f"cannot read {path}: {e.strerror}", fix="run as root") from e
    out = set()
    for line in text.splitlines():
        cat, sep, name = line.strip().partition(":")
        if sep and _NAME.match(cat) and _NAME.match(name):
            out.add((cat, name))
    return tuple(sorted(out))


def exists(category: str, name: str) -> bool:
    return (category, name) in set(available())


@functools.cache
def read_format(category: str, name: str) -> Format:
    if not (_NAME.match(category) and _NAME.match(name)):
        raise TracefsError(f"not a tracepoint name: {category!r}:{name!r}")
    path = _events_dir() / category / name / "format"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TracefsError(f"no tracepoint {category}:{name} (no {path})") from None
    except OSError as e:
        raise TracefsError(f"cannot read {path}: {e.strerror}", fix="run as root") from e
    return parse_format(category, name, text)


def parse_format(category: str, name: str, text: str) -> Format:
    tp_id, print_fmt, fields, fixed = -1, "", [], 0
    for line in text.splitlines():
        if line.startswith("ID:"):
            tp_id = int(line.split(":", 1)[1])
        elif line.startswith("print fmt:"):
            print_fmt = line.split(":", 1)[1].strip()
        elif m := _FIELD.match(line):
            f = parse_field(m["decl"].strip(), int(m["off"]), int(m["size"]), m["signed"] == "1")
            fixed = max(fixed, f.offset + f.size)
            if not f.name.startswith("common_"):
                fields.append(f)
    return Format(category, name, tp_id, tuple(fields), print_fmt, fixed)


def parse_field(decl: str, offset: int, size: int, signed: bool) -> Field:
    """One `field:` line's declaration (`char prev_comm[16]`, `__data_loc char[] filename`,
    `const char * filename`, ...) -> a Field saying how to decode it."""
    ctype, _, last = decl.rpartition(" ")
    ctype, last = ctype.strip(), last.strip()
    while last.startswith("*"):  # `char *name` written without a space
        ctype, last = ctype + " *", last[1:]

    def mk(kind: str, **kw) -> Field:
        return Field(name, ctype, offset, size, signed, kind, **kw)

    if m := _ARRAY.match(last):
        name, n = m["name"], m["n"]
        if ctype in _CHAR_TYPES and n.isdigit() and int(n):
            return Field(name, f"{ctype}[{n}]", offset, size, signed, CHARS)
        ctype = f"{ctype}[{n}]"
        if not n.isdigit() or int(n) == 0:
            note = "flexible array: its length is not in the record's format; not decoded"
            return mk(RAW, note=note)
        count = int(n)
        elem = size // count if size % count == 0 else 0
        if elem in _INT_SIZES and "*" not in ctype and not ctype.startswith(("struct ", "union ")):
            return mk(ARRAY, elem_size=elem, count=count)
        return mk(RAW, note=f"array of {ctype} ({size} bytes) kept as bytes")
    name = last
    for loc in ("__data_loc", "__rel_loc"):
        if ctype.startswith(loc):
            inner = ctype[len(loc) :].strip()
            rel = loc == "__rel_loc"
            if size != 4:
                return mk(RAW, note=f"{loc} field of {size} bytes (expected 4)")
            if inner.endswith("[]"):
                base = inner[:-2].strip()
                if base in _CHAR_TYPES:
                    return mk(STRING, rel=rel)
                esize = _int_type_size(base)
                if esize:
                    return mk(DYN_ARRAY, elem_size=esize, rel=rel)
            return mk(RAW, rel=rel, note=f"{inner} is not an integer array: data kept as bytes")
    if "*" in ctype:
        return mk(POINTER) if size == 8 else mk(RAW, note=f"{size}-byte pointer")
    if size in _INT_SIZES and not ctype.startswith(("struct ", "union ")):
        return mk(INT)
    return mk(RAW, note=f"{ctype} ({size} bytes) kept as bytes")


_FIXED_INT = re.compile(r"^(__)?([us])(8|16|32|64)$")
_C_INT = {
    "char": 1, "unsigned char": 1, "short": 2, "unsigned short": 2, "int": 4, "unsigned int": 4,
    "unsigned": 4, "long": 8, "unsigned long": 8, "long long": 8, "unsigned long long": 8,
    "bool": 1, "pid_t": 4, "size_t": 8,
}  # fmt: skip


def _int_type_size(ctype: str) -> int:
    if m := _FIXED_INT.match(ctype):
        return int(m[3]) // 8
    return _C_INT.get(ctype, 0)


_CONV = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|L)?[a-zA-Z]+")
_ARG_FIELD = re.compile(r"REC->(\w+)|__get_\w+\((\w+)\)")


def describe_print_fmt(print_fmt: str, limit: int = 300) -> str:
    """`"pid=%d comm=%s", REC->pid, REC->comm` -> `pid={pid} comm={comm}`.

    Only when every conversion maps to one plain field reference; otherwise the format
    string as the kernel wrote it (conversions left as they are). Capped at `limit`."""
    m = re.match(r'^"((?:[^"\\]|\\.)*)"\s*(?:,(.*))?$', print_fmt, re.S)
    if not m:
        return ""
    fmt, args = m[1], m[2] or ""
    convs = _CONV.findall(fmt)
    parts = _split_args(args)
    if convs and len(parts) == len(convs):
        names = []
        for p in parts:
            refs = _ARG_FIELD.findall(p)
            names.append(next(a or b for a, b in refs) if len(refs) == 1 else None)
        if all(names):
            it = iter(names)
            fmt = _CONV.sub(lambda _: "{" + next(it) + "}", fmt)
    text = fmt.replace("\\n", " ").replace('\\"', '"').strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _split_args(args: str) -> list[str]:
    """Top-level comma split (commas inside (), {} or strings do not split)."""
    out, depth, cur, quote = [], 0, [], False
    prev = ""
    for ch in args:
        if ch == '"' and prev != "\\":
            quote = not quote
        elif not quote and ch in "({[":
            depth += 1
        elif not quote and ch in ")}]":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        prev = ch
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out
