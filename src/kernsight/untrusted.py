"""Strings from the traced system (comm, paths, argv, packet bytes) are attacker-controlled:
wherever they are shown, to a terminal or to a model, they pass through `safe`."""

from __future__ import annotations

# C0/C1 controls, line/paragraph separators and bidi overrides (text that displays reordered)
_CTRL_CODES = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F),
               *range(0x2066, 0x206A)]  # fmt: skip
_CTRL = str.maketrans(dict.fromkeys(_CTRL_CODES, "?"))


def safe(value: object, width: int | None = None) -> str:
    """No control characters; at most `width` characters (an ellipsis marks the cut)."""
    text = str(value).translate(_CTRL)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"
