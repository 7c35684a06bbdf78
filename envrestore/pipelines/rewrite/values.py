"""Which strings to replace when a site moves address, and replacing them in one value.

Pure (no I/O): `pipelines/rewrite/database.py` feeds it the database's values.

The rules of `expand_url_pairs(old_url, new_url)`:

1. Both URLs are `http://` or `https://` with a host, an optional port and path,
   no query or fragment, and none of `" ' \\ < >`, whitespace or control
   characters (they would break the JSON and HTML the URL is written into).
   Trailing slashes are stripped: `https://dev.example.com/` is
   `https://dev.example.com`.
2. For each URL these forms are made, old form → new form:
   the URL itself (`https://dev.example.com`); scheme-less (`//dev.example.com`,
   protocol-relative links, and with it the old host under the *other* scheme,
   whose scheme is kept); JSON-escaped (`https:\\/\\/dev.example.com`,
   `\\/\\/dev.example.com`, as PHP's json_encode writes slashes); URL-encoded
   with upper- and lower-case escapes (`https%3A%2F%2Fdev.example.com`,
   `%2F%2Fdev.example.com`, `https%3a%2f%2fdev.example.com`, ...).
3. A pair whose old and new forms are equal is dropped: when the URLs differ
   only in scheme, only occurrences under the old scheme change
   (`http://example.com` → `https://example.com`, `//example.com` left as is).
4. Pairs are ordered longest old form first, and `rewrite_value` replaces them
   in ONE left-to-right pass (a regex alternation in that order), so the
   longest form wins at each position and replaced text is never scanned again.
5. An old form only matches where it ends: not when followed by a letter,
   digit, `-`, `_`, or by `.` and one of those (`https://dev.example.com.au`,
   `https://example.com/wp-content` for old `https://example.com/wp` are not
   rewritten).
6. A new URL that contains the old one (`https://example.com` →
   `https://example.com/site`) is refused: a retried step would rewrite its
   own output again (`/site/site`). Rewriting twice is the same as once.

Bare hosts (`dev.example.com` in an e-mail address) are not rewritten.

A value (or a serialized string's content) that starts like PHP-serialized data
(`a:`, `O:`, `C:`, `s:`, `S:`, `E:`, `i:`, `d:`, `b:`, `r:`, `R:`, `N;`, after
whitespace) or holds a serialized string header (`s:N:"`) anywhere is walked by
`phpserial` and rewritten with recomputed byte lengths, or, if it does not parse,
left unchanged and counted. Array keys and class names are never rewritten
(as wp-cli). Serialized data inside a JSON string is not recognised (its quotes
are escaped) and is replaced as plain text, as wp-cli does.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, overload
from urllib.parse import quote, urlsplit

from envrestore.pipelines.rewrite.phpserial import (
    WalkLimits,
    WalkStats,
    looks_serialized,
    rewrite_serialized,
)

_FORBIDDEN = re.compile(r"[\"'\\<>\s\x00-\x1f\x7f]")
_END = rb"(?![A-Za-z0-9_-])(?!\.[A-Za-z0-9_-])"


class Replacement(NamedTuple):
    """One old form and what it becomes (a `tuple[str, str]`)."""

    old: str
    new: str


def _check_url(url: str, which: str) -> tuple[str, str]:
    """(scheme, rest after `//`) of a URL the rules accept, trailing slashes stripped."""
    text = url.strip().rstrip("/")
    if _FORBIDDEN.search(text):
        raise ValueError(f"the {which} URL {url!r} holds quotes, spaces or control characters")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the {which} URL {url!r} must be http:// or https:// with a host")
    if parts.query or parts.fragment or "?" in text or "#" in text or "@" in parts.netloc:
        raise ValueError(f"the {which} URL {url!r} must not have a query, fragment or user")
    return parts.scheme, text[len(parts.scheme) + 3 :]


def _forms(scheme: str, rest: str) -> list[str]:
    """The spellings of one URL, in the order of `expand_url_pairs`'s rule 2."""
    full, bare = f"{scheme}://{rest}", f"//{rest}"
    forms = [full, bare, full.replace("/", "\\/"), bare.replace("/", "\\/")]
    for text in (full, bare):
        encoded = quote(text, safe="")
        forms += [encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)]
    return forms


def expand_url_pairs(old_url: str, new_url: str) -> list[Replacement]:
    """Every (old form, new form) to replace when a site moves from old_url to new_url."""
    old_scheme, old_rest = _check_url(old_url, "old")
    new_scheme, new_rest = _check_url(new_url, "new")
    pairs: dict[str, str] = {}
    for old, new in zip(_forms(old_scheme, old_rest), _forms(new_scheme, new_rest), strict=True):
        if old != new:
            pairs.setdefault(old, new)
    result = [Replacement(old, new) for old, new in pairs.items()]
    result.sort(key=lambda pair: (-len(pair.old.encode()), pair.old))
    replacer = Replacer.of(result)
    for pair in result:
        if replacer.found(pair.new.encode()):
            raise ValueError(
                f"the new URL {new_url!r} contains the old one {old_url!r}: rewriting would "
                "not be idempotent (a retry would rewrite its own output); move in two steps"
            )
    return result


@dataclass(frozen=True)
class Limits:
    """Bounds on one value: larger values are reported, never parsed."""

    max_bytes: int = 64 * 1024 * 1024
    walk: WalkLimits = field(default_factory=WalkLimits)


DEFAULT_LIMITS = Limits()


@dataclass
class ValueStats:
    """What rewriting left alone, summed over the values it was given."""

    #: serialized values or parts of values that did not parse: left unchanged
    skipped_unserializable: int = 0
    #: `C:` custom-serialized payloads holding an old form that could not be rewritten safely
    skipped_custom: int = 0
    #: values holding an old form but larger than `Limits.max_bytes`
    skipped_too_large: int = 0

    @property
    def skipped(self) -> int:
        return self.skipped_unserializable + self.skipped_custom + self.skipped_too_large


class Replacer:
    """Pairs compiled into one bytes regex; `Replacer.of` caches by the pairs."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        encoded = sorted(
            ((old.encode(), new.encode()) for old, new in pairs if old),
            key=lambda pair: (-len(pair[0]), pair[0]),
        )
        self.table = dict(encoded)
        alternatives = b"|".join(re.escape(old) for old, _ in encoded) or b"(?!)"
        self.pattern = re.compile(b"(?:" + alternatives + b")" + _END)

    @classmethod
    def of(cls, pairs: Replacer | Iterable[tuple[str, str]]) -> Replacer:
        if isinstance(pairs, Replacer):
            return pairs
        return _compiled(tuple((str(old), str(new)) for old, new in pairs))

    def found(self, data: bytes) -> bool:
        return self.pattern.search(data) is not None

    def replace(self, data: bytes) -> bytes:
        return self.pattern.sub(lambda match: self.table[match.group()], data)


@functools.lru_cache(maxsize=32)
def _compiled(pairs: tuple[tuple[str, str], ...]) -> Replacer:
    return Replacer(pairs)


@overload
def rewrite_value(
    value: str,
    pairs: Replacer | Iterable[tuple[str, str]],
    *,
    stats: ValueStats | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[str, bool]: ...
@overload
def rewrite_value(
    value: bytes,
    pairs: Replacer | Iterable[tuple[str, str]],
    *,
    stats: ValueStats | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[bytes, bool]: ...
def rewrite_value(
    value: str | bytes,
    pairs: Replacer | Iterable[tuple[str, str]],
    *,
    stats: ValueStats | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[str | bytes, bool]:
    """(the value with every old form replaced, whether it changed).

    A value that starts like PHP-serialized data is walked (`phpserial`) so every
    string keeps a correct byte length; if it does not parse it is returned
    unchanged and counted in `stats.skipped_unserializable` — never replaced
    naively. Text is handled as UTF-8 bytes, so `s:N:` counts bytes.
    """
    replacer = Replacer.of(pairs)
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    if not replacer.found(raw):
        return value, False
    counts = stats if stats is not None else ValueStats()
    if len(raw) > limits.max_bytes:
        counts.skipped_too_large += 1
        return value, False
    if looks_serialized(raw):
        walk = WalkStats()
        result = rewrite_serialized(raw, replacer.replace, replacer.found, walk, limits.walk)
        counts.skipped_custom += walk.custom_unsafe
        if result is None:
            counts.skipped_unserializable += 1
            return value, False
        counts.skipped_unserializable += walk.unserializable
    else:
        result = replacer.replace(raw)
    if result == raw:
        return value, False
    if isinstance(value, str):
        return result.decode("utf-8", "surrogateescape"), True
    return result, True
