"""Untrusted text made safe: control characters escaped, length bounded, UTF-8 kept."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from envrestore.config.logging import LOG_VALUE_LIMIT, configure_logging
from envrestore.pipelines.errors import EnvrestoreError, UnsafeInput
from envrestore.pipelines.text import ascii_text, clean_data, clean_text


def test_plain_text_is_untouched():
    text = "restore of shop.dev failed at line 3: table `orders` exists"
    assert clean_text(text) == text


def test_valid_utf8_is_kept():
    text = "café ✓ 日本語 Ωμέγα 😀 naïve"
    assert clean_text(text) == text


def test_esc_is_escaped():
    assert clean_text("bad \x1b[31mred\x1b[0m") == "bad \\x1b[31mred\\x1b[0m"


def test_nul_is_escaped():
    assert clean_text("a\x00b") == "a\\x00b"


def test_cr_del_and_c1_controls_are_escaped():
    assert clean_text("ok\rFAKE") == "ok\\rFAKE"
    assert clean_text("a\x7fb") == "a\\x7fb"
    assert clean_text("csi\x9b2J osc\x9d") == "csi\\x9b2J osc\\x9d"
    assert clean_text("\x07\x08\x0b\x0c") == "\\x07\\x08\\x0b\\x0c"


@pytest.mark.parametrize("char", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e"])
def test_bidi_embeddings_and_overrides_are_escaped(char):
    assert clean_text(f"file{char}txt.exe") == f"file\\u{ord(char):04x}txt.exe"


@pytest.mark.parametrize("char", ["\u2066", "\u2067", "\u2068", "\u2069"])
def test_bidi_isolates_are_escaped(char):
    assert clean_text(f"x{char}y") == f"x\\u{ord(char):04x}y"


def test_lone_surrogates_are_escaped():
    # What os.fsdecode makes of a non-UTF-8 file name; PostgreSQL cannot store it.
    assert clean_text("name-\udcff") == "name-\\udcff"
    clean_text("name-\udcff").encode("utf-8")


def test_newlines_and_tabs_are_kept_unless_one_line_is_asked_for():
    text = "ERROR 1064:\n\tnear 'x'"
    assert clean_text(text) == text
    assert clean_text(text, newlines=False) == "ERROR 1064:\\n\\tnear 'x'"


def test_long_text_is_cut_with_a_visible_marker():
    text = "x" * 5000
    cleaned = clean_text(text, 100)
    assert cleaned == "x" * 100 + "…(4900 more characters)"


def test_short_enough_text_is_not_cut():
    assert clean_text("x" * 100, 100) == "x" * 100


def test_the_cut_never_splits_an_escape():
    cleaned = clean_text("abc" + "\x1b" * 10, 5)
    assert cleaned == "abc…(10 more characters)"
    cleaned = clean_text("ab" + "\x1b" * 10, 10)
    assert cleaned == "ab\\x1b\\x1b…(8 more characters)"


def test_cleaning_is_idempotent():
    once = clean_text("a\x00\x1b[2J\u202eb\n")
    assert clean_text(once) == once


def test_clean_data_recurses_into_dicts_and_lists():
    data = {
        "name\x1b": "evil\x00",
        "list": ["ok", "\x1b[2J", {"deep": "\u202e"}],
        "tuple": ("a\rb",),
        "n": 3,
        "f": 1.5,
        "nan": float("nan"),
        "flag": True,
        "none": None,
    }
    cleaned = clean_data(data)
    assert cleaned == {
        "name\\x1b": "evil\\x00",
        "list": ["ok", "\\x1b[2J", {"deep": "\\u202e"}],
        "tuple": ["a\\rb"],
        "n": 3,
        "f": 1.5,
        "nan": "nan",
        "flag": True,
        "none": None,
    }
    json.dumps(cleaned, allow_nan=False)


def test_clean_data_bounds_strings_and_stringifies_other_objects():
    cleaned = clean_data({"long": "y" * 50, "obj": object()}, 10)
    assert cleaned["long"] == "y" * 10 + "…(40 more characters)"
    assert isinstance(cleaned["obj"], str)


def test_ascii_text_is_pure_ascii():
    text = ascii_text("bad\x00 ✓ \u202e " + "z" * 1000, 50)
    text.encode("ascii")
    assert text.startswith("bad\\x00 \\u2713 \\u202e ")
    assert len(text) < 100


def test_an_error_message_and_data_are_cleaned_when_made():
    exc = UnsafeInput("line 3: bad \x00\x1b[31m thing", member="a\x1bb", line=3)
    assert exc.message == "line 3: bad \\x00\\x1b[31m thing"
    assert str(exc) == exc.message
    assert exc.data == {"member": "a\\x1bb", "line": 3}
    assert exc.exit_code == 1


def test_an_error_message_is_bounded():
    exc = EnvrestoreError("q" * 100_000)
    assert len(exc.message) < 5000
    assert exc.message.endswith("more characters)")


def test_an_error_without_message_still_uses_its_docstring():
    assert UnsafeInput().message.startswith("Untrusted input")


# ------------------------------------------------------------------ the log


@pytest.fixture
def restore_logging():
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


@pytest.mark.parametrize("as_json", [True, False])
def test_a_bound_value_with_escape_sequences_is_logged_escaped(restore_logging, as_json):
    stream = io.StringIO()
    configure_logging(level="INFO", stream=stream, json=as_json)
    log = structlog.get_logger("test")
    with structlog.contextvars.bound_contextvars(member="evil\x1b[2J\u202e.sql"):
        log.info("archive.member\x1b[1A", line="a\nFAKE LINE\x00")
    text = stream.getvalue()
    assert "\x1b" not in text
    assert "\x00" not in text
    assert "\u202e" not in text
    assert text.count("\n") == 1  # one event, one line
    assert "x1b[2J" in text
    assert "FAKE LINE" in text
    if as_json:
        line = json.loads(text)
        assert line["member"] == "evil\\x1b[2J\\u202e.sql"
        assert line["event"] == "archive.member\\x1b[1A"
        assert line["line"] == "a\\nFAKE LINE\\x00"


def test_a_stdlib_log_record_is_escaped_too(restore_logging):
    stream = io.StringIO()
    configure_logging(level="INFO", stream=stream, json=False)
    logging.getLogger("dramatiq").warning("message %s", "\x1b]0;title\x07")
    text = stream.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;title\\x07" in text


def test_a_traceback_keeps_its_lines_but_not_its_controls(restore_logging):
    stream = io.StringIO()
    configure_logging(level="INFO", stream=stream, json=False)
    try:
        raise ValueError("bad \x1b[31m")
    except ValueError:
        structlog.get_logger("test").exception("step.crashed")
    text = stream.getvalue()
    assert "\x1b" not in text
    assert "Traceback (most recent call last):\n" in text
    assert "ValueError: bad \\x1b[31m" in text


def test_very_long_log_values_are_bounded(restore_logging):
    stream = io.StringIO()
    configure_logging(level="INFO", stream=stream, json=True)
    structlog.get_logger("test").info("big", blob="b" * (LOG_VALUE_LIMIT * 3))
    line = json.loads(stream.getvalue())
    assert len(line["blob"]) < LOG_VALUE_LIMIT + 50
    assert line["blob"].endswith(f"…({LOG_VALUE_LIMIT * 2} more characters)")
