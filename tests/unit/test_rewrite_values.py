"""URL rewriting of single values: pairs, PHP-serialized data, JSON, hostile input.

PHP is not installed here, so the values are built with a small PHP serializer
written below and checked with a strict unserializer that is independent of the
code under test (recursive, byte lengths, exact counts, nothing left over).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from envrestore.pipelines.rewrite.values import (
    Limits,
    Replacement,
    ValueStats,
    expand_url_pairs,
    rewrite_value,
)

OLD = "https://dev.example.com"
NEW = "https://live.example.com"
PAIRS = expand_url_pairs(OLD, NEW)


# ---------------------------------------------------------------- a PHP serializer for tests


@dataclass
class PhpObject:
    cls: str
    props: dict[Any, Any] = field(default_factory=dict)


@dataclass
class PhpCustom:
    cls: str
    payload: bytes


@dataclass(frozen=True)
class PhpRef:
    kind: str
    index: int


def php_serialize(value: Any) -> bytes:
    """PHP's serialize() for the shapes WordPress stores."""
    if value is None:
        return b"N;"
    if isinstance(value, bool):
        return b"b:1;" if value else b"b:0;"
    if isinstance(value, int):
        return b"i:%d;" % value
    if isinstance(value, float):
        return b"d:" + repr(value).encode() + b";"
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b's:%d:"%b";' % (len(value), value)
    if isinstance(value, PhpRef):
        return b"%b:%d;" % (value.kind.encode(), value.index)
    if isinstance(value, PhpCustom):
        name = value.cls.encode()
        return b'C:%d:"%b":%d:{%b}' % (len(name), name, len(value.payload), value.payload)
    if isinstance(value, PhpObject):
        name = value.cls.encode()
        body = b"".join(php_serialize(k) + php_serialize(v) for k, v in value.props.items())
        return b'O:%d:"%b":%d:{%b}' % (len(name), name, len(value.props), body)
    if isinstance(value, list):
        value = dict(enumerate(value))
    if isinstance(value, dict):
        body = b"".join(php_serialize(k) + php_serialize(v) for k, v in value.items())
        return b"a:%d:{%b}" % (len(value), body)
    raise TypeError(type(value))


def php_unserialize(data: bytes | str) -> Any:
    """A strict unserialize(): raises ValueError on anything PHP would refuse."""
    if isinstance(data, str):
        data = data.encode()
    value, end = _unser(data, 0)
    if end != len(data):
        raise ValueError(f"trailing bytes at {end}")
    return value


def _num(data: bytes, pos: int, stop: bytes) -> tuple[bytes, int]:
    end = data.index(stop, pos)
    return data[pos:end], end + len(stop)


def _unser(data: bytes, pos: int) -> tuple[Any, int]:
    kind = data[pos : pos + 2]
    if data[pos : pos + 2] == b"N;":
        return None, pos + 2
    if kind == b"b:":
        text, end = _num(data, pos + 2, b";")
        if text not in (b"0", b"1"):
            raise ValueError("bool")
        return text == b"1", end
    if kind == b"i:":
        text, end = _num(data, pos + 2, b";")
        return int(text), end
    if kind == b"d:":
        text, end = _num(data, pos + 2, b";")
        return float(text), end
    if kind in (b"r:", b"R:"):
        text, end = _num(data, pos + 2, b";")
        return PhpRef(kind[:1].decode(), int(text)), end
    if kind == b"s:":
        text, start = _num(data, pos + 2, b':"')
        size = int(text)
        if data[start + size : start + size + 2] != b'";':
            raise ValueError(f"string length {size} wrong at {pos}")
        return data[start : start + size], start + size + 2
    if kind == b"a:":
        text, pos = _num(data, pos + 2, b":{")
        out: dict[Any, Any] = {}
        for _ in range(int(text)):
            key, pos = _unser(data, pos)
            if not isinstance(key, int | bytes):
                raise ValueError("key")
            out[key], pos = _unser(data, pos)
        if data[pos : pos + 1] != b"}":
            raise ValueError("array end")
        return out, pos + 1
    if kind in (b"O:", b"C:"):
        text, start = _num(data, pos + 2, b':"')
        name = data[start : start + int(text)].decode()
        if data[start + int(text) : start + int(text) + 2] != b'":':
            raise ValueError("class name length")
        count, pos = _num(data, start + int(text) + 2, b":{")
        if kind == b"C:":
            payload = data[pos : pos + int(count)]
            if data[pos + int(count) : pos + int(count) + 1] != b"}":
                raise ValueError("custom length")
            return PhpCustom(name, payload), pos + int(count) + 1
        props: dict[Any, Any] = {}
        for _ in range(int(count)):
            key, pos = _unser(data, pos)
            props[key], pos = _unser(data, pos)
        if data[pos : pos + 1] != b"}":
            raise ValueError("object end")
        return PhpObject(name, props), pos + 1
    raise ValueError(f"unknown token {kind!r} at {pos}")


def deep_unserialize(value: Any) -> Any:
    """Unserialize strings that are themselves serialized, as WordPress's maybe_unserialize."""
    if isinstance(value, bytes) and re.match(rb"[aOsCbidN][:;]", value):
        try:
            return deep_unserialize(php_unserialize(value))
        except (ValueError, IndexError):
            return value
    if isinstance(value, dict):
        return {k: deep_unserialize(v) for k, v in value.items()}
    if isinstance(value, PhpObject):
        return PhpObject(value.cls, {k: deep_unserialize(v) for k, v in value.props.items()})
    return value


def strings(value: Any) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, PhpObject):
        return [s for v in value.props.values() for s in strings(v)]
    if isinstance(value, PhpCustom):
        return [value.payload]
    return []


def no_old_host(data: bytes | str) -> bool:
    raw = data.encode() if isinstance(data, str) else data
    return b"dev.example.com" not in raw


# ---------------------------------------------------------------- WordPress values

MULTI = "Café 日本 🎉"

WIDGET_TEXT = {
    2: {
        "title": "About",
        "text": f'<a href="{OLD}/about/">About {MULTI}</a> <img src="//dev.example.com/x.png">',
        "filter": True,
        "visual": True,
    },
    3: {"title": "", "text": "no links here", "filter": False, "visual": False},
    "_multiwidget": 1,
}

USER_ROLES = {
    "administrator": {
        "name": "Administrator",
        "capabilities": {"switch_themes": True, "edit_posts": True, "level_10": True},
    },
    "editor": {"name": "Editor", "capabilities": {"edit_posts": True, "level_7": True}},
}

THEME_MODS = {
    0: False,
    "nav_menu_locations": {"primary": 2, "footer": 3},
    "custom_css_post_id": -1,
    "header_image": f"{OLD}/wp-content/uploads/2024/01/header-{MULTI}.jpg",
    "header_image_data": PhpObject(
        "stdClass",
        {
            "attachment_id": 12,
            "url": f"{OLD}/wp-content/uploads/2024/01/header.jpg",
            "thumbnail_url": f"{OLD}/wp-content/uploads/2024/01/header-150x150.jpg",
            "height": 400,
            "width": 1200.5,
            "alt": None,
        },
    ),
    "background_image": f"{OLD}/bg.png",
    "sidebars_widgets": {
        "time": 1700000000,
        "data": {"wp_inactive_widgets": [], "sidebar-1": ["text-2", "text-3"]},
    },
}

ATTACHMENT_METADATA = {
    "width": 1920,
    "height": 1080,
    "file": "2024/01/photo.jpg",
    "sizes": {
        "thumbnail": {"file": "photo-150x150.jpg", "width": 150, "mime-type": "image/jpeg"},
    },
    "image_meta": {
        "caption": f"{MULTI} — taken at {OLD}/events/ ✓",
        "credit": "José Ñandú",
        "keywords": [],
        "aperture": "2.8",
    },
}

#: A plugin that stores serialize(array(... serialize(...) ...)): serialized inside serialized.
NESTED_SETTINGS = {
    "version": "3.1",
    "payload": php_serialize({"redirect": f"{OLD}/thanks/", "label": MULTI}).decode(),
    "deeper": php_serialize(
        {"inner": php_serialize([f"{OLD}/a", "https:\\/\\/dev.example.com\\/b"]).decode()}
    ).decode(),
}

GUTENBERG = (
    f'<!-- wp:image {{"id":5,"sizeSlug":"large","url":"https:\\/\\/dev.example.com\\/wp-content\\/a.jpg"}} -->\n'
    f'<figure class="wp-block-image"><img src="{OLD}/wp-content/a.jpg" alt="{MULTI}"/></figure>\n'
    "<!-- /wp:image -->\n"
    f'<!-- wp:cover {{"url":"{OLD}/wp-content/c.jpg","dimRatio":50}} /-->\n'
    f'<!-- wp:embed {{"url":"//dev.example.com/video","type":"rich"}} /-->\n'
    f'<a href="/login?redirect_to=https%3A%2F%2Fdev.example.com%2Fwp-admin%2F">log in</a>'
)

SERIALIZED_SAMPLES = {
    "widget_text": WIDGET_TEXT,
    "wp_user_roles": USER_ROLES,
    "theme_mods": THEME_MODS,
    "_wp_attachment_metadata": ATTACHMENT_METADATA,
    "nested_settings": NESTED_SETTINGS,
    "plain_string": f"{OLD}/only-a-string/",
    "list_of_urls": [OLD, f"{OLD}/", f"{OLD}/{MULTI}", "http://dev.example.com/insecure"],
}


# ---------------------------------------------------------------- pairs


def test_pairs_for_a_host_change_in_their_order() -> None:
    assert [
        Replacement("https%3A%2F%2Fdev.example.com", "https%3A%2F%2Flive.example.com"),
        Replacement("https%3a%2f%2fdev.example.com", "https%3a%2f%2flive.example.com"),
        Replacement("https:\\/\\/dev.example.com", "https:\\/\\/live.example.com"),
        Replacement("https://dev.example.com", "https://live.example.com"),
        Replacement("%2F%2Fdev.example.com", "%2F%2Flive.example.com"),
        Replacement("%2f%2fdev.example.com", "%2f%2flive.example.com"),
        Replacement("\\/\\/dev.example.com", "\\/\\/live.example.com"),
        Replacement("//dev.example.com", "//live.example.com"),
    ] == PAIRS
    assert expand_url_pairs(OLD + "//", NEW + "/") == PAIRS


def test_pairs_when_only_the_scheme_changes() -> None:
    pairs = expand_url_pairs("http://example.com", "https://example.com")
    assert {p.old for p in pairs} == {
        "http://example.com",
        "http:\\/\\/example.com",
        "http%3A%2F%2Fexample.com",
        "http%3a%2f%2fexample.com",
    }
    value, changed = rewrite_value(
        "http://example.com/a //example.com/b https://example.com/c", pairs
    )
    assert changed
    assert value == "https://example.com/a //example.com/b https://example.com/c"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("https://example.com", "https://example.com/site"),  # new contains old: not idempotent
        ("ftp://dev.example.com", NEW),
        ("dev.example.com", NEW),
        (OLD, 'https://live.example.com/"><script>'),
        (OLD, "https://live.example.com/a b"),
        (OLD, "https://live.example.com/?x=1"),
        (OLD, "https://user@live.example.com"),
    ],
)
def test_pairs_refused(old: str, new: str) -> None:
    with pytest.raises(ValueError):
        expand_url_pairs(old, new)


def test_same_url_gives_no_pairs() -> None:
    assert expand_url_pairs(OLD, OLD + "/") == []
    assert rewrite_value(OLD, []) == (OLD, False)


def test_an_old_url_matches_only_where_it_ends() -> None:
    text = f"{OLD}.au {OLD}-staging {OLD}s {OLD}. {OLD}:8080/x {OLD}/wp"
    value, _ = rewrite_value(text, PAIRS)
    assert value == (f"{OLD}.au {OLD}-staging {OLD}s {NEW}. {NEW}:8080/x {NEW}/wp")
    pairs = expand_url_pairs("https://example.com/wp", "https://example.com/blog")
    assert rewrite_value("https://example.com/wp-content https://example.com/wp/", pairs)[0] == (
        "https://example.com/wp-content https://example.com/blog/"
    )


# ---------------------------------------------------------------- serialized values


@pytest.mark.parametrize("name", sorted(SERIALIZED_SAMPLES))
def test_serialized_option_stays_valid_and_loses_the_old_host(name: str) -> None:
    original = php_serialize(SERIALIZED_SAMPLES[name])
    stats = ValueStats()
    value, changed = rewrite_value(original, PAIRS, stats=stats)
    assert changed == (name != "wp_user_roles")
    assert stats.skipped == 0
    assert no_old_host(value)
    before = deep_unserialize(php_unserialize(original))
    after = deep_unserialize(php_unserialize(value))
    # Same shape, every string equal to its plain replacement (lengths recomputed).
    expected = [s.replace(b"dev.example.com", b"live.example.com") for s in strings(before)]
    assert strings(after) == expected
    text, text_changed = rewrite_value(original.decode(), PAIRS)
    assert text.encode() == value and text_changed == changed


def test_multibyte_lengths_are_bytes() -> None:
    original = php_serialize({"caption": f"{MULTI} {OLD}/é"})
    value, _ = rewrite_value(original.decode(), PAIRS)
    expected = f"{MULTI} {NEW}/é".encode()
    assert value.encode() == b'a:1:{s:7:"caption";s:%d:"%b";}' % (len(expected), expected)
    assert len(expected) != len(f"{MULTI} {NEW}/é")


def test_serialized_inside_serialized_is_recursed_into() -> None:
    inner = php_serialize({"url": f"{OLD}/x"})
    outer = php_serialize({"blob": inner, "n": 1})
    value, changed = rewrite_value(outer, PAIRS)
    assert changed
    new_inner = php_unserialize(value)[b"blob"]
    assert php_unserialize(new_inner) == {b"url": f"{NEW}/x".encode()}


def test_array_keys_and_class_names_are_left_as_they_are() -> None:
    original = php_serialize({OLD: PhpObject("Dev_Example", {"u": OLD})})
    value, changed = rewrite_value(original, PAIRS)
    assert changed
    parsed = php_unserialize(value)
    assert list(parsed) == [OLD.encode()]
    assert parsed[OLD.encode()] == PhpObject("Dev_Example", {b"u": NEW.encode()})


def test_references_and_scalars_are_copied_byte_for_byte() -> None:
    original = (
        b'a:6:{i:0;s:23:"https://dev.example.com";i:1;R:2;i:2;r:2;i:3;d:0.1000000000000000055511;'
        b'i:4;d:-INF;i:5;E:11:"Suit:Hearts";}'
    )
    value, changed = rewrite_value(original, PAIRS)
    assert changed
    assert value == original.replace(b'23:"https://dev', b'24:"https://live')


def test_custom_serialized_payload() -> None:
    safe = PhpCustom("My_Thing", php_serialize({"u": f"{OLD}/p"}))
    unsafe = PhpCustom("ArrayObject", b"x:i:0;" + php_serialize([f"{OLD}/q"]) + b";m:a:0:{}")
    stats = ValueStats()
    value, changed = rewrite_value(php_serialize([safe, unsafe]), PAIRS, stats=stats)
    assert changed
    assert stats.skipped_custom == 1
    parsed = php_unserialize(value)
    assert php_unserialize(parsed[0].payload) == {b"u": f"{NEW}/p".encode()}
    assert parsed[1] == unsafe


# ---------------------------------------------------------------- JSON and HTML


def test_gutenberg_post_content() -> None:
    value, changed = rewrite_value(GUTENBERG, PAIRS)
    assert changed
    assert no_old_host(value)
    assert '"url":"https:\\/\\/live.example.com\\/wp-content\\/a.jpg"' in value
    assert '"url":"//live.example.com/video"' in value
    assert "redirect_to=https%3A%2F%2Flive.example.com%2Fwp-admin%2F" in value


def test_scheme_less_and_http_forms_of_the_old_host() -> None:
    value, _ = rewrite_value(
        "src=//dev.example.com/a http://dev.example.com/b \\/\\/dev.example.com\\/c", PAIRS
    )
    assert value == "src=//live.example.com/a http://live.example.com/b \\/\\/live.example.com\\/c"


# ---------------------------------------------------------------- idempotence


@pytest.mark.parametrize("name", sorted(SERIALIZED_SAMPLES))
def test_rewriting_twice_is_rewriting_once(name: str) -> None:
    once, _ = rewrite_value(php_serialize(SERIALIZED_SAMPLES[name]), PAIRS)
    twice, changed = rewrite_value(once, PAIRS)
    assert twice == once and not changed
    content, _ = rewrite_value(GUTENBERG, PAIRS)
    assert rewrite_value(content, PAIRS) == (content, False)


# ---------------------------------------------------------------- hostile input

URL = OLD.encode()
MALFORMED = {
    "length too short": b'a:1:{i:0;s:5:"' + URL + b'";}',
    "length too long": b'a:1:{i:0;s:99:"' + URL + b'";}',
    "truncated": php_serialize({"u": OLD, "v": [1, 2]})[:-3],
    "count too high": b'a:3:{i:0;s:23:"' + URL + b'";}',
    "count too low": b'a:0:{i:0;s:23:"' + URL + b'";}',
    "huge length": b's:99999999999999999999:"' + URL + b'";',
    "huge count": b'a:4294967295:{i:0;s:23:"' + URL + b'";',
    "trailing garbage": php_serialize([OLD]) + b"garbage",
    "bad key": b'a:1:{a:0:{}s:23:"' + URL + b'";}',
    "bad class": b'O:3:"a b":1:{s:1:"u";s:23:"' + URL + b'";}',
    "escaped string format": b'S:23:"' + URL + b'";',
    "custom short": b'C:3:"Foo":99:{' + URL + b"}",
    "deep 10000": b"a:1:{i:0;" * 10_000 + b's:23:"' + URL + b'";' + b"}" * 10_000,
    "unclosed 100000": b"a:1:{i:0;" * 100_000 + b's:23:"' + URL + b'";',
    "long number": b"a:2:{i:0;i:" + b"9" * 1_000_000 + b's:23:"' + URL + b'";}',
    "many strings": b"a:200000:{" + b's:1:"x";' * 100_000 + URL,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_serialized_is_left_unchanged(name: str) -> None:
    data = MALFORMED[name]
    stats = ValueStats()
    started = time.monotonic()
    value, changed = rewrite_value(data, PAIRS, stats=stats)
    assert time.monotonic() - started < 2
    assert (value, changed) == (data, False)
    assert stats.skipped_unserializable + stats.skipped_custom == 1


def test_malformed_string_nested_in_a_good_value_is_skipped_alone() -> None:
    bad_inner = b'a:1:{i:0;s:5:"' + URL + b'";}'
    original = php_serialize({"bad": bad_inner, "good": f"{OLD}/x"})
    stats = ValueStats()
    value, changed = rewrite_value(original, PAIRS, stats=stats)
    assert changed and stats.skipped_unserializable == 1
    parsed = php_unserialize(value)
    assert parsed == {b"bad": bad_inner, b"good": f"{NEW}/x".encode()}


def test_strings_nested_deeper_than_the_limit_are_skipped() -> None:
    value = php_serialize(OLD)
    for _ in range(2000):
        value = php_serialize(value)
    stats = ValueStats()
    started = time.monotonic()
    result, changed = rewrite_value(value, PAIRS, stats=stats)
    assert time.monotonic() - started < 2
    assert (result, changed) == (value, False)
    assert stats.skipped_unserializable == 1


def test_too_large_values_are_reported_not_parsed() -> None:
    value = php_serialize([OLD, "x" * 1000])
    stats = ValueStats()
    assert rewrite_value(value, PAIRS, stats=stats, limits=Limits(max_bytes=100)) == (value, False)
    assert stats.skipped_too_large == 1


def test_values_without_the_old_url_are_not_even_parsed() -> None:
    stats = ValueStats()
    assert rewrite_value(b"a:1:{garbage", PAIRS, stats=stats) == (b"a:1:{garbage", False)
    assert stats.skipped == 0


def test_mutated_values_never_crash_and_never_produce_broken_data() -> None:
    rng = random.Random(20240601)
    seeds = [php_serialize(v) for v in SERIALIZED_SAMPLES.values()]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(data))
            match rng.randrange(4):
                case 0:
                    data[where] = rng.randrange(256)
                case 1:
                    del data[where:]
                case 2:
                    data[where:where] = bytes([rng.choice(b'0123456789:;{}"sai')])
                case _:
                    del data[where]
            if not data:
                break
        original = bytes(data)
        value, changed = rewrite_value(original, PAIRS)
        if changed and re.match(rb"\s*[aOCsSEibdNrR]:", original):
            # Serialized data is only changed when it was well-formed, and stays so.
            php_unserialize(original.strip())
            php_unserialize(value.strip())


def test_whitespace_around_a_serialized_value_is_kept() -> None:
    original = b"\n " + php_serialize([OLD]) + b" \n"
    value, changed = rewrite_value(original, PAIRS)
    assert changed
    assert value == b"\n " + php_serialize([NEW]) + b" \n"


def test_text_holding_a_serialized_fragment_is_not_replaced_naively() -> None:
    # A serialized string header anywhere means a plain replace could break lengths.
    text = f'<p>see {OLD}</p> stored as s:23:"{OLD}";'
    stats = ValueStats()
    assert rewrite_value(text, PAIRS, stats=stats) == (text, False)
    assert stats.skipped_unserializable == 1
