"""How untrusted member names appear in errors: escaped, cut, and in one shape.

A member name or link target comes from the archive: it may hold control
characters (terminal escapes), undecodable bytes or megabytes of text. Every
message that names one goes through `printable`.
"""

from __future__ import annotations

from envrestore.pipelines.errors import UnsafeInput

#: Member names and link targets quoted in errors are cut to this many characters.
SHOWN_CHARS = 200


def printable(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` safe to put in a message or a terminal: control characters, backslashes
    and undecodable bytes escaped as repr() does, cut to `limit` characters."""
    out: list[str] = []
    for char in text[:limit]:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}" if code >= 0xDC80 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out) + ("…" if len(text) > limit else "")


def quoted(text: str) -> str:
    """`printable(text)` in quotes, for a member name or link target in a message."""
    return f"'{printable(text)}'"


def unsafe(name: str, problem: str, what: str) -> UnsafeInput:
    """The one error shape for a refused member: names the member and the problem."""
    return UnsafeInput(
        f"archive member {quoted(name)} {what}; refusing the archive (it is unsafe or damaged: "
        "check where it came from)",
        member=name,
        problem=problem,
    )
