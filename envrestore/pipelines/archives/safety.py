"""Reading untrusted tar streams safely: the public names, from where they now live.

`tarpolicy` holds the rules each member must pass (limits, top folder, modes);
`tarstream` the streaming parser and `check_tar`; `sniff` names data that is
not a tar. Existing imports from here keep working.
"""

from __future__ import annotations

from envrestore.pipelines.archives.naming import printable, quoted, unsafe
from envrestore.pipelines.archives.sniff import decompress_archive, describe, not_a_tar
from envrestore.pipelines.archives.tarpolicy import (
    BLOCK,
    DEFAULT_BOMB_CEILING,
    DEFAULT_BOMB_FLOOR,
    DEFAULT_BOMB_RATIO,
    ArchiveRules,
    Member,
    MemberKind,
    ModePolicy,
    TarGuard,
    TarLimits,
    TarReport,
    limits_for,
    restored_mode,
)
from envrestore.pipelines.archives.tarstream import (
    CheckOnly,
    Header,
    MemberSink,
    TarParser,
    check_tar,
    decode_header,
    run_parser,
)

__all__ = [
    "BLOCK",
    "DEFAULT_BOMB_CEILING",
    "DEFAULT_BOMB_FLOOR",
    "DEFAULT_BOMB_RATIO",
    "ArchiveRules",
    "CheckOnly",
    "Header",
    "Member",
    "MemberKind",
    "MemberSink",
    "ModePolicy",
    "TarGuard",
    "TarLimits",
    "TarParser",
    "TarReport",
    "check_tar",
    "decode_header",
    "decompress_archive",
    "describe",
    "limits_for",
    "not_a_tar",
    "printable",
    "quoted",
    "restored_mode",
    "run_parser",
    "unsafe",
]
