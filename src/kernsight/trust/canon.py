"""RFC 8785 (JCS) canonical JSON for audit records and result digests.

Integers outside the I-JSON range (|n| > 2**53 - 1, e.g. nanosecond timestamps, 64-bit ids) are
written as decimal strings: RFC 8785 numbers are IEEE doubles and would round them. NaN and the
infinities become null (what the MCP SDK sends for them).

`canonical` takes a fast path (the stdlib encoder, whose output equals RFC 8785 for ASCII keys,
strings, integers and the floats it prints the ECMAScript way) and falls back to the `rfc8785`
package for anything else; the test suite checks the two agree. The verifier always uses
`rfc8785` itself (`is_canonical`).
"""

from __future__ import annotations

import hashlib
import json
import math
from json.encoder import c_make_encoder
from json.encoder import encode_basestring as _string
from typing import Any

import rfc8785

MAX_SAFE = 2**53 - 1


def _unsupported(o: Any) -> Any:
    raise TypeError(f"not JSON data: {type(o).__name__}")


# The stdlib's C encoder, built once (json.dumps builds one per call): compact, sorted keys,
# UTF-8 as is, no NaN. Its output is RFC 8785 for what `_prep(fast=True)` lets through.
if c_make_encoder is not None:
    _encoder = c_make_encoder(None, _unsupported, _string, None, ":", ",", True, False, False)

    def _dumps(obj: Any) -> str:
        return "".join(_encoder(obj, 0))

else:  # a Python without the _json accelerator
    _dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                              allow_nan=False, default=_unsupported).encode  # fmt: skip


class NotCanonical(ValueError):
    """A record is not the RFC 8785 encoding of its own content."""


class _Slow(Exception):
    pass


def _prep(v: Any, fast: bool) -> Any:
    """A copy of v where big integers are strings and non-finite floats null. With fast=True,
    raises _Slow for anything the stdlib encoder would not print exactly as RFC 8785."""
    t = type(v)
    if t is str or v is None or t is bool:
        return v
    if t is int:
        return v if -MAX_SAFE <= v <= MAX_SAFE else str(v)
    if t is dict:
        out = {}
        for k, x in v.items():  # the common scalar cases inline: this runs per audit entry
            if fast and not (type(k) is str and k.isascii()):
                raise _Slow
            tx = type(x)
            if tx is str or x is None or tx is bool:
                out[k] = x
            elif tx is int:
                out[k] = x if -MAX_SAFE <= x <= MAX_SAFE else str(x)
            else:
                out[k] = _prep(x, fast)
        return out
    if t is list or t is tuple:
        return [_prep(x, fast) for x in v]
    if t is float:
        if not math.isfinite(v):
            return None
        if v.is_integer() and abs(v) <= MAX_SAFE:
            return int(v)  # ECMAScript prints 2.0 as 2
        if fast and (v.is_integer() or not 1e-4 <= abs(v) < 1e16):
            raise _Slow  # exponent notation differs between repr() and ECMAScript
        return v
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return _prep(int(v), fast)
    if isinstance(v, float):
        return _prep(float(v), fast)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, dict):
        return _prep(dict(v), fast)
    if isinstance(v, list | tuple):
        return _prep(list(v), fast)
    raise TypeError(f"not JSON data: {type(v).__name__}")


def canonical(obj: Any) -> bytes:
    """The RFC 8785 bytes of obj (big integers as strings)."""
    try:
        return _dumps(_prep(obj, True)).encode()
    except (_Slow, UnicodeEncodeError):
        return rfc8785.dumps(_prep(obj, False))


def canonical_entry(type: str, index: int, prev: str, time_ns: int, data: dict) -> bytes:
    """canonical() of an audit record {"data", "index", "prev", "time", "type"} (keys in RFC 8785
    order), encoding only `data` (this runs on every append; index and prev are ours)."""
    try:
        body = _dumps(_prep(data, True))
        return (f'{{"data":{body},"index":{index},"prev":"{prev}","time":"{time_ns}",'
                f'"type":{_string(type)}}}').encode()  # fmt: skip
    except (_Slow, UnicodeEncodeError):
        return canonical({"data": data, "index": index, "prev": prev, "time": time_ns,
                          "type": type})  # fmt: skip


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise NotCanonical(f"duplicate key {k!r}")
        out[k] = v
    return out


def _number(text: str) -> int | float:
    """JSON numbers are IEEE doubles (RFC 8785): 1e16 printed as 10000000000000000 is one."""
    n = int(text)
    return n if -MAX_SAFE <= n <= MAX_SAFE else float(text)


def parse_strict(data: bytes) -> Any:
    """Parse JSON, refusing duplicate keys (two parsers could read different values)."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_int=_number)  # fmt: skip
    except NotCanonical:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        raise NotCanonical(f"not JSON: {e}") from None


def check_canonical(data: bytes) -> Any:
    """Parse a record and check it is exactly its own RFC 8785 encoding; return the object."""
    obj = parse_strict(data)
    try:
        again = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as e:
        raise NotCanonical(f"not canonicalizable ({type(e).__name__}: {e})") from None
    if again != data:
        raise NotCanonical("bytes differ from the RFC 8785 encoding of the same content")
    return obj
