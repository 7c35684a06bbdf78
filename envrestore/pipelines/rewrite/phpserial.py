"""Replacing text inside PHP-serialized values without breaking them (as wp-cli does).

A serialized string carries its length in bytes (`s:5:"héllo";` is `s:6:`), so a
plain replace that changes a string's length corrupts the whole value: PHP's
unserialize() then returns false and WordPress silently loses the option. Here a
value is walked token by token, every string of a value position is rewritten
(itself walked when its content is serialized too, as wp-cli recurses into
`maybe_unserialize`d strings) and written back with its new byte length; every
other token (numbers, booleans, keys, class names, references) is copied byte
for byte, so nothing but the strings' content and lengths can change.

The input may come from an attacker's dump: the walk is iterative with a depth
cap, nesting of serialized-in-string is capped, every length is checked against
the bytes left before it is trusted, and each byte is examined a bounded number
of times. Anything that does not parse strictly is reported, never guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

#: How a value starts when it is (meant to be) PHP-serialized. Broader than
#: WordPress's is_serialized() on purpose: a truncated or tampered value must be
#: recognised as serialized so that it is left alone, not replaced naively.
_LOOKS = re.compile(
    rb"[ \t\n\r\x0b\x00]*"
    rb"(?:[aOCsSEibdrR]:|N;)"
)
#: A serialized string's header anywhere: a value holding one (a tampered header
#: such as `a:\xfb:{...`, a fragment in text) would be corrupted by a naive replace.
_STRING_HEADER = re.compile(rb's:\d+:"')
_PHP_SPACE = b" \t\n\r\x0b\x00"  # what PHP's trim() strips (WordPress trims before unserialize)

_STR = re.compile(rb's:(\d{1,10}):"')
_INT = re.compile(rb"i:[+-]?\d+;")
_DBL = re.compile(rb"d:(?:-?INF|NAN|[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?);")
_BOOL = re.compile(rb"b:[01];")
_REF = re.compile(rb"[rR]:\d{1,10};")
_ARR = re.compile(rb"a:(\d{1,10}):\{")
_CLASS_HEAD = re.compile(rb'[OCE]:(\d{1,10}):"')
_CLASS_TAIL = re.compile(rb'":(\d{1,10}):\{')
_CLASS_NAME = re.compile(rb"[A-Za-z_\x80-\xff\\][A-Za-z0-9_\x80-\xff\\]*")
_ENUM_NAME = re.compile(rb"[A-Za-z_\x80-\xff\\][A-Za-z0-9_\x80-\xff\\]*:[A-Za-z_\x80-\xff]\w*")


class Malformed(ValueError):
    """The bytes are not exactly one well-formed serialized value (or exceed a limit)."""


@dataclass
class WalkStats:
    """What a walk had to leave alone, so that callers can report it."""

    #: serialized parts (nested strings, or the value itself) that did not parse
    unserializable: int = 0
    #: `C:` payloads holding an old form that are not one serialized value
    custom_unsafe: int = 0


@dataclass(frozen=True)
class WalkLimits:
    """Bounds for hostile input; PHP's own unserialize_max_depth default is 4096."""

    max_depth: int = 512
    max_nesting: int = 16


def looks_serialized(data: bytes) -> bool:
    """Whether the value starts like a PHP-serialized value (whitespace allowed first)
    or holds a serialized string's header anywhere: such a value is walked or left
    alone, never replaced naively."""
    return _LOOKS.match(data) is not None or _STRING_HEADER.search(data) is not None


Replace = Callable[[bytes], bytes]
Found = Callable[[bytes], bool]


def rewrite_serialized(
    data: bytes,
    replace: Replace,
    found: Found,
    stats: WalkStats,
    limits: WalkLimits,
    level: int = 0,
) -> bytes | None:
    """`data` with `replace` applied inside its strings, or None if it is not exactly one
    serialized value (surrounded by optional whitespace, as WordPress trims)."""
    start = len(data) - len(data.lstrip(_PHP_SPACE))
    end = len(data.rstrip(_PHP_SPACE))
    if start >= end:
        return None
    walker = _Walker(data, start, end, replace, found, stats, limits, level)
    try:
        walker.walk()
    except Malformed:
        return None
    if walker.pos != end:
        return None
    return data[:start] + b"".join(walker.out) + data[end:]


class _Walker:
    def __init__(
        self,
        data: bytes,
        start: int,
        end: int,
        replace: Replace,
        found: Found,
        stats: WalkStats,
        limits: WalkLimits,
        level: int,
    ) -> None:
        self.data = data
        self.pos = start
        self.end = end
        self.replace = replace
        self.found = found
        self.stats = stats
        self.limits = limits
        self.level = level
        self.out: list[bytes] = []

    def walk(self) -> None:
        """One value; containers are kept on an explicit stack (no recursion)."""
        # Each entry: tokens (keys and values) still expected by an open container.
        stack: list[int] = []
        while True:
            opened = self._token(key=bool(stack) and stack[-1] % 2 == 0)
            if opened:
                if len(stack) >= self.limits.max_depth:
                    raise Malformed("nested too deep")
                stack.append(2 * opened)
                continue
            while stack:  # a token is complete: close every container it completes
                stack[-1] -= 1
                if stack[-1]:
                    break
                self._close()
                stack.pop()
            else:
                return

    def _close(self) -> None:
        if self.pos >= self.end or self.data[self.pos] != ord("}"):
            raise Malformed("container does not end where its count says")
        self.out.append(b"}")
        self.pos += 1

    def _copy(self, match: re.Match[bytes] | None) -> int:
        if match is None or match.end() > self.end:
            raise Malformed("bad token")
        self.out.append(match.group())
        self.pos = match.end()
        return 0

    def _counted(self, head: re.Match[bytes] | None) -> tuple[int, int]:
        """(start, end) of the `N` bytes that a header `x:N:"` announces, checked."""
        if head is None:
            raise Malformed("bad header")
        size = int(head.group(1))
        begin = head.end()
        if size > self.end - begin:
            raise Malformed("length beyond the value")
        return begin, begin + size

    def _token(self, *, key: bool) -> int:
        """Copy or rewrite one token at `pos`; the pair count of a container it opens."""
        data, pos = self.data, self.pos
        kind = data[pos : pos + 1]
        if kind == b"s":
            begin, stop = self._counted(_STR.match(data, pos, self.end))
            if stop + 2 > self.end or data[stop : stop + 2] != b'";':
                raise Malformed("string does not end where its length says")
            content = data[begin:stop]
            new = content if key else self._string(content)
            if new is content:
                self.out.append(data[pos : stop + 2])
            else:
                self.out.append(b's:%d:"%b";' % (len(new), new))
            self.pos = stop + 2
            return 0
        if kind == b"i":
            return self._copy(_INT.match(data, pos, self.end))
        if key:
            raise Malformed("array keys are integers or strings")
        if kind == b"N" and pos + 2 <= self.end and data[pos : pos + 2] == b"N;":
            self.out.append(b"N;")
            self.pos = pos + 2
            return 0
        if kind == b"b":
            return self._copy(_BOOL.match(data, pos, self.end))
        if kind == b"d":
            return self._copy(_DBL.match(data, pos, self.end))
        if kind in (b"r", b"R"):
            return self._copy(_REF.match(data, pos, self.end))
        if kind == b"a":
            head = _ARR.match(data, pos, self.end)
            if head is None:
                raise Malformed("bad array header")
            return self._open(head.group(), int(head.group(1)))
        if kind in (b"O", b"C", b"E"):
            return self._classed(kind)
        raise Malformed("unknown token")

    def _open(self, header: bytes, count: int) -> int:
        self.out.append(header)
        self.pos += len(header)
        if count == 0:
            self._close()
        return count

    def _classed(self, kind: bytes) -> int:
        """`O:` objects, `C:` custom payloads and `E:` enum cases."""
        data = self.data
        begin, stop = self._counted(_CLASS_HEAD.match(data, self.pos, self.end))
        name = data[begin:stop]
        if kind == b"E":
            if stop + 2 > self.end or data[stop : stop + 2] != b'";':
                raise Malformed("enum does not end where its length says")
            if not _ENUM_NAME.fullmatch(name):
                raise Malformed("bad enum")
            self.out.append(data[self.pos : stop + 2])
            self.pos = stop + 2
            return 0
        if not _CLASS_NAME.fullmatch(name):
            raise Malformed("bad class name")
        tail = _CLASS_TAIL.match(data, stop, self.end)
        if tail is None:
            raise Malformed("bad object header")
        count = int(tail.group(1))
        if kind == b"O":
            self.out.append(data[self.pos : stop])
            self.pos = stop
            return self._open(tail.group(), count)
        # C:N:"Class":M:{<M bytes the class's own unserialize() reads>}
        payload_start = tail.end()
        payload_end = payload_start + count
        if payload_end >= self.end or data[payload_end] != ord("}"):
            raise Malformed("custom payload does not end where its length says")
        payload = data[payload_start:payload_end]
        new = self._custom(payload)
        self.out.append(data[self.pos : stop])
        self.out.append(b'":%d:{%b}' % (len(new), new))
        self.pos = payload_end + 1
        return 0

    def _custom(self, payload: bytes) -> bytes:
        """Rewrite a custom payload only when it is itself one serialized value."""
        if not self.found(payload):
            return payload
        result = None
        if self.level + 1 <= self.limits.max_nesting and looks_serialized(payload):
            result = self._nested(payload)
        if result is None:
            self.stats.custom_unsafe += 1
            return payload
        return result

    def _string(self, content: bytes) -> bytes:
        if not self.found(content):
            return content
        if not looks_serialized(content):
            return self.replace(content)
        result = self._nested(content) if self.level + 1 <= self.limits.max_nesting else None
        if result is None:
            self.stats.unserializable += 1
            return content
        return result

    def _nested(self, content: bytes) -> bytes | None:
        return rewrite_serialized(
            content, self.replace, self.found, self.stats, self.limits, self.level + 1
        )
