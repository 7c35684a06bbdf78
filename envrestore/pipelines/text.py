"""Text from untrusted input made safe to store, log and print.

Backups are untrusted: an archive member's name, a dump's line, an engine's
error about that line can hold any character. Such text reaches the job's
error, its events, the worker log and the user's terminal. `clean_text`
escapes every character that could act on a terminal (ESC, NUL, CR, DEL, C1
controls, bidi overrides) or that PostgreSQL cannot store (NUL, lone
surrogates) as a visible `\\xNN` / `\\uNNNN`, and bounds the length with a
visible marker. It is idempotent on text within its limit; valid UTF-8 is
kept as it is.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Default bound for one piece of text (an error, an event value).
DEFAULT_LIMIT = 2000
#: Bound for an error's message.
ERROR_LIMIT = 4000
#: Bound for a string in step outputs (read back by later steps: generous).
OUTPUT_LIMIT = 65536
#: How deep `clean_data` follows nested containers before it stringifies.
MAX_DEPTH = 32

# C0 controls but \t and \n, DEL, C1 controls, bidi marks/embeddings/overrides/
# isolates (Trojan Source), line/paragraph separators, lone surrogates.
_UNSAFE_CHARS = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
    "\ud800-\udfff"
)
_UNSAFE = re.compile(f"[{_UNSAFE_CHARS}]")
_UNSAFE_ONE_LINE = re.compile(f"[{_UNSAFE_CHARS}\t\n]")


def _escape(char: str) -> str:
    if char == "\n":
        return "\\n"
    if char == "\t":
        return "\\t"
    if char == "\r":
        return "\\r"
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _marker(remaining: int) -> str:
    return f"…({remaining} more characters)"


def clean_text(text: str, limit: int = DEFAULT_LIMIT, *, newlines: bool = True) -> str:
    """`text` with control characters escaped, cut to about `limit` characters.

    Escaped: C0 controls (NUL, ESC, CR, ...), DEL, C1 controls (0x80-0x9f),
    bidi controls (U+202A-U+202E, U+2066-U+2069, U+200E/F, U+061C),
    U+2028/U+2029 and lone surrogates. `\\n` and `\\t` are kept unless
    `newlines` is false (single-line output such as log lines); they move the
    cursor but change no terminal state.

    Longer text is cut to `limit` characters (an escape is never split) and
    ends with `…(N more characters)`, N counted in the original text.
    """
    if not isinstance(text, str):
        text = str(text)
    limit = max(limit, 0)
    pattern = _UNSAFE if newlines else _UNSAFE_ONE_LINE
    if len(text) <= limit and pattern.search(text) is None:
        return text
    out: list[str] = []
    used = 0  # characters written
    consumed = 0  # characters of `text` written (escaped or not)
    position = 0
    for match in pattern.finditer(text):
        plain = text[position : match.start()]
        if plain:
            room = limit - used
            if len(plain) > room:
                out.append(plain[:room])
                consumed += room
                return "".join(out) + _marker(len(text) - consumed)
            out.append(plain)
            used += len(plain)
            consumed += len(plain)
        escaped = _escape(match.group())
        if used + len(escaped) > limit:
            return "".join(out) + _marker(len(text) - consumed)
        out.append(escaped)
        used += len(escaped)
        consumed += 1
        position = match.end()
    plain = text[position:]
    room = limit - used
    if len(plain) > room:
        out.append(plain[:room])
        consumed += room
        return "".join(out) + _marker(len(text) - consumed)
    out.append(plain)
    return "".join(out)


def clean_data(
    value: Any, limit: int = DEFAULT_LIMIT, *, newlines: bool = True, _depth: int = 0
) -> Any:
    """A JSON-able copy of `value` whose strings (keys too) went through `clean_text`.

    Dicts, lists and tuples are followed; None, bools and ints are kept; a
    float that JSON cannot hold (NaN, infinities) and any other object become
    their (cleaned) text, so the result always encodes and always stores.
    """
    if isinstance(value, str):
        return clean_text(value, limit, newlines=newlines)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth >= MAX_DEPTH:
        return clean_text(repr(value), limit, newlines=newlines)
    if isinstance(value, dict):
        return {
            clean_text(str(k), limit, newlines=newlines): clean_data(
                v, limit, newlines=newlines, _depth=_depth + 1
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [clean_data(v, limit, newlines=newlines, _depth=_depth + 1) for v in value]
    return clean_text(str(value), limit, newlines=newlines)


def ascii_text(text: str, limit: int = 500) -> str:
    """The last-resort form of a reason: cleaned, short, and pure ASCII."""
    cleaned = clean_text(str(text), limit, newlines=False)
    return cleaned.encode("ascii", "backslashreplace").decode("ascii")
