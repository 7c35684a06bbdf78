"""The rules an untrusted tar's members must pass, and the modes they are restored with.

A restore's files and code parts are untrusted input. Every member is checked
*before* anything is written for it (no absolute paths, no `..`, no links out of
the tree, no devices or fifos, one top folder — the expected one when the
caller knows it —, size and count caps), so one streaming pass can both verify
and extract (see `tarstream.py` for the parser, `extract.py` for the writer).

Modes: an archive never decides who owns a restored file (the worker creates
every file, so the worker's user owns it) nor gets setuid, setgid or sticky
bits. With the "normalise" policy files are 0644, or 0755 if the archive gave
them any execute bit, and directories 0755. With "keep" the archive's
permission bits stay, except that the owner can always read files and enter
and write directories (git objects stay readable; the tree can be discarded).
"""

from __future__ import annotations

import enum
import re
import tarfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

# Re-exported: these names lived here first.
from envrestore.pipelines.archives.naming import printable as printable
from envrestore.pipelines.archives.naming import quoted as quoted
from envrestore.pipelines.archives.naming import unsafe as unsafe
from envrestore.pipelines.errors import BadInput

if TYPE_CHECKING:
    from envrestore.pipelines.archives.tarstream import Header

ModePolicy = Literal["normalise", "keep"]

#: Default decompression-bomb cap: this many times the declared compressed size...
DEFAULT_BOMB_RATIO = 20
#: ...never above this...
DEFAULT_BOMB_CEILING = 512 * 1024**3
#: ...and never below this (a tiny archive of text files may legitimately inflate 100x).
DEFAULT_BOMB_FLOOR = 64 * 1024**2

BLOCK = 512
#: Linux follows at most 40 symlinks per lookup; a longer chain is refused.
_MAX_LINK_HOPS = 40

_FILE_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_SKIPPED_TYPES = frozenset({b"V"})  # GNU volume label: not a file, tar -x ignores it too


@dataclass(frozen=True)
class TarLimits:
    """Caps on what one archive may unpack to."""

    max_bytes: int
    max_members: int = 2_000_000
    max_name: int = 4096
    #: How restored members' permission bits are set (see the module docstring).
    mode_policy: ModePolicy = "normalise"

    @property
    def max_stream_bytes(self) -> int:
        """A cap for the decompressor in front: file bytes plus headers and padding."""
        return self.max_bytes + self.max_members * 3 * BLOCK + 20 * BLOCK


@dataclass(frozen=True)
class TarReport:
    """What an archive held: its top folder, members, regular files and their bytes."""

    top: str
    members: int
    files: int
    bytes: int


@dataclass(frozen=True)
class ArchiveRules:
    """What one particular archive must look like, beyond being safe."""

    #: How errors name the archive, e.g. "the files part".
    label: str = "the archive"
    #: The one top folder it must have; None accepts any single top folder.
    top: str | None = None
    #: Why that top folder, for the error, e.g. "this is a backup of dev".
    top_reason: str = ""
    #: Imports (names mean nothing): None keeps the single-top-folder rule above. A
    #: pattern allows any layout, judged from the archive's root; a sole top-level
    #: folder whose name fully matches it (`files_live`) is unwrapped at the end.
    unwrap: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        if self.unwrap is not None and self.top is not None:
            raise ValueError("ArchiveRules: `top` and `unwrap` exclude each other")


def limits_for(
    declared_size: int,
    settings: object | None = None,
    *,
    ratio: int | None = None,
    ceiling: int | None = None,
    max_members: int | None = None,
) -> TarLimits:
    """Caps for an archive whose compressed size is `declared_size` (from the manifest).

    Settings may carry `archive_bomb_ratio`, `archive_bomb_ceiling_bytes`,
    `archive_max_members` and `files_mode_policy`; explicit arguments win over
    settings, settings over defaults.
    """
    ratio = ratio or getattr(settings, "archive_bomb_ratio", None) or DEFAULT_BOMB_RATIO
    ceiling = (
        ceiling or getattr(settings, "archive_bomb_ceiling_bytes", None) or (DEFAULT_BOMB_CEILING)
    )
    members = max_members or getattr(settings, "archive_max_members", None) or 2_000_000
    cap = min(max(max(declared_size, 0) * ratio, DEFAULT_BOMB_FLOOR), ceiling)
    policy: ModePolicy = (
        "keep" if getattr(settings, "files_mode_policy", None) == "keep" else ("normalise")
    )
    return TarLimits(max_bytes=int(cap), max_members=int(members), mode_policy=policy)


class MemberKind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(frozen=True, slots=True)
class Member:
    """One admitted member: `path` is relative to the stripped top folder (() is the top)."""

    name: str
    path: tuple[str, ...]
    kind: MemberKind
    size: int
    mode: int
    mtime_ns: int
    #: Symlink: the target as stored. Hardlink: "/".join(link_path).
    link: str = ""
    link_path: tuple[str, ...] = ()


def restored_mode(kind: MemberKind, mode: int, policy: ModePolicy) -> int:
    """The permission bits a member is restored with; never setuid, setgid or sticky."""
    if policy == "keep":
        return (mode & 0o777) | (0o700 if kind is MemberKind.DIR else 0o400)
    if kind is MemberKind.DIR:
        return 0o755
    return 0o755 if mode & 0o111 else 0o644


@dataclass
class TarGuard:
    """The rules every member must pass, in archive order; keeps what later rules need."""

    limits: TarLimits
    rules: ArchiveRules = field(default_factory=ArchiveRules)
    top: str | None = None
    members: int = 0
    files: int = 0
    dirs: int = 0  # below the top folder
    bytes: int = 0
    #: Unwrap mode: the one name at the root so far ("" once there are several),
    #: whether it is a folder, and the files and folders inside it.
    root_name: str | None = None
    root_is_dir: bool = False
    nested: int = 0
    #: Symlinks admitted so far (path → target), to check chains and writes through them.
    links: dict[tuple[str, ...], str] = field(default_factory=dict)
    link_names: dict[tuple[str, ...], str] = field(default_factory=dict)

    def admit(self, info: Header) -> Member | None:
        """Check one header; return the member to write, or None for one to skip."""
        name = info.name
        kind_code = info.type
        self._check_name(name, name)
        if kind_code in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            raise unsafe(name, "device", "is a device node")
        if kind_code == tarfile.FIFOTYPE:
            raise unsafe(name, "fifo", "is a fifo (named pipe)")
        if kind_code == tarfile.GNUTYPE_SPARSE or info.sparse:
            raise unsafe(name, "sparse", "is a GNU sparse file, which is not supported")
        kind = _kind_of(kind_code)
        if kind is None:
            if kind_code in _SKIPPED_TYPES:
                return None
            raise unsafe(name, "unsupported_type", f"has unsupported type {kind_code!r}")
        if name.startswith("/"):
            raise unsafe(name, "absolute_path", "has an absolute path")
        parts = _parts(name)
        if ".." in parts:
            raise unsafe(name, "parent_reference", "has a '..' component")
        if not parts:
            if kind is MemberKind.DIR:  # "./": the archive's own root
                return None
            raise unsafe(name, "outside_top", "is not under the archive's top folder")
        if self.rules.unwrap is None:
            path = self._below_top(name, parts, kind)
        else:
            path = parts
            self._note_root(parts, kind)
        self.members += 1
        if self.members > self.limits.max_members:
            raise unsafe(
                name,
                "too_many_members",
                f"exceeds the cap of {self.limits.max_members} members",
            )
        self._check_not_through_link(name, path)
        link = ""
        link_path: tuple[str, ...] = ()
        size = 0
        if kind is MemberKind.DIR and path:
            self.dirs += 1
        elif kind is MemberKind.FILE:
            size = info.size
            self.files += 1
            self.bytes += size
            if self.bytes > self.limits.max_bytes:
                raise unsafe(
                    name,
                    "too_large",
                    f"takes the extracted size over the cap of {self.limits.max_bytes} bytes "
                    "(a possible decompression bomb; raise the cap if the archive is genuine)",
                )
        elif kind is MemberKind.SYMLINK:
            link = info.linkname
            self._check_symlink(name, path, link)
        elif kind is MemberKind.HARDLINK:
            link_path = self._check_hardlink(name, info.linkname)
            link = "/".join(link_path)
        if path in self.links and kind is not MemberKind.SYMLINK:
            del self.links[path]  # a later member replaces the symlink
            del self.link_names[path]
        return Member(
            name=name,
            path=path,
            kind=kind,
            size=size,
            mode=restored_mode(kind, info.mode, self.limits.mode_policy),
            mtime_ns=info.mtime_ns,
            link=link,
            link_path=link_path,
        )

    def finish(self) -> TarReport:
        """Final checks once the whole archive is known; the report."""
        # A symlink admitted early may escape through one admitted later
        # (`l -> d/x/../..` before `d/x -> ..`): resolve all of them again.
        for path, target in self.links.items():
            if _escapes(path, target, self.links):
                raise unsafe(
                    self.link_names[path],
                    "link_escapes",
                    f"is a symlink to {quoted(target)}, which resolves outside the archive root "
                    "through other symlinks",
                )
        if self.rules.unwrap is not None:
            return self._finish_unwrap(self.rules.unwrap)
        if self.top is None or not (self.files or self.dirs):
            raise self._empty(
                "no members" if self.top is None else "no file or folder in its top folder"
            )
        return TarReport(top=self.top, members=self.members, files=self.files, bytes=self.bytes)

    def _empty(self, detail: str) -> BadInput:
        # Restoring nothing over an environment would delete every file in it.
        return BadInput(
            f"{self.rules.label} is empty: restoring it would delete every file ({detail}); "
            "check that the right part was uploaded",
            problem="empty",
        )

    def _below_top(self, name: str, parts: tuple[str, ...], kind: MemberKind) -> tuple[str, ...]:
        """The member's path below the single top folder, which is stripped."""
        if self.top is None:
            self._check_top(name, parts, kind)
            self.top = parts[0]
        elif parts[0] != self.top:
            raise unsafe(
                name,
                "outside_top",
                f"is not under the top folder {quoted(self.top)} (an archive must hold exactly "
                "one top-level folder)",
            )
        path = parts[1:]
        if not path and kind is not MemberKind.DIR:
            raise unsafe(name, "top_not_folder", "is the top-level entry but not a folder")
        return path

    def _note_root(self, parts: tuple[str, ...], kind: MemberKind) -> None:
        """Unwrap mode: keep what decides the unwrap (never the list of root names)."""
        if self.root_name is None:
            self.root_name = parts[0]
        elif parts[0] != self.root_name:
            self.root_name = ""  # several entries at the root: taken as they are
        if not self.root_name:
            return
        # The last member of that name decides (tar: a later one replaces it); one
        # below it means a folder (a file there would refuse the member on writing).
        self.root_is_dir = len(parts) > 1 or kind is MemberKind.DIR
        if len(parts) > 1 and kind in (MemberKind.FILE, MemberKind.DIR):
            self.nested += 1

    def _finish_unwrap(self, pattern: re.Pattern[str]) -> TarReport:
        top = self.root_name or ""
        if not (self.root_is_dir and pattern.fullmatch(top)):
            top = ""
        if not (self.nested if top else self.files + self.dirs):
            if top:
                raise self._empty(f"no file or folder in its folder {printable(top)}/")
            raise self._empty("no file or folder" if self.members else "no members")
        if top:  # links must stay inside the folder that becomes the tree
            inner = {path[1:]: target for path, target in self.links.items() if path[1:]}
            for path, target in inner.items():
                if _escapes(path, target, inner):
                    raise unsafe(
                        self.link_names[(top, *path)],
                        "link_escapes",
                        f"is a symlink to {quoted(target)}, which resolves outside the folder "
                        f"{quoted(top)} that is unwrapped to become the tree",
                    )
        return TarReport(top=top, members=self.members, files=self.files, bytes=self.bytes)

    def _check_top(self, name: str, parts: tuple[str, ...], kind: MemberKind) -> None:
        """The first member fixes the top folder: it must be the expected one, if any."""
        expected = self.rules.top
        if expected is None or parts[0] == expected:
            return
        label = self.rules.label
        reason = f"{self.rules.top_reason}: " if self.rules.top_reason else ""
        if len(parts) == 1 and kind is not MemberKind.DIR:
            raise BadInput(
                f"{label} has no top folder: its members sit at the archive's root (found "
                f"{quoted(name)}), but {reason}expected every member under {expected}/; "
                f"make it with `tar -czf files.tar.gz {expected}`",
                member=name,
                problem="no_top",
                expected=expected,
            )
        raise BadInput(
            f"{label}'s top folder is {printable(parts[0])}/, but {reason}expected "
            f"{expected}/ (check that the right backup or part was uploaded)",
            member=name,
            problem="wrong_top",
            found=parts[0],
            expected=expected,
        )

    def _check_name(self, name: str, shown: str, what: str = "name") -> None:
        if "\0" in name:
            raise unsafe(shown, "nul_in_name", f"has a NUL byte in its {what}")
        # At most 4 bytes a character: short names need no encoding to be measured.
        if len(name) * 4 > self.limits.max_name and (
            len(name.encode("utf-8", "surrogateescape")) > self.limits.max_name
        ):
            raise unsafe(
                shown,
                "name_too_long",
                f"has a {what} longer than {self.limits.max_name} bytes",
            )

    def _check_not_through_link(self, name: str, path: tuple[str, ...]) -> None:
        if not self.links:
            return
        for depth in range(1, len(path)):
            if path[:depth] in self.links:
                raise unsafe(
                    name,
                    "through_symlink",
                    f"would be written through the symlink {quoted('/'.join(path[:depth]))} "
                    "created earlier in the archive",
                )

    def _check_symlink(self, name: str, path: tuple[str, ...], target: str) -> None:
        self._check_name(target, name, "link target")
        if not target:
            raise unsafe(name, "link_escapes", "is a symlink with an empty target")
        if target.startswith("/"):
            raise unsafe(
                name, "absolute_link", f"is a symlink to the absolute path {quoted(target)}"
            )
        if _escapes(path, target, self.links):
            raise unsafe(
                name,
                "link_escapes",
                f"is a symlink to {quoted(target)}, which resolves outside the archive root",
            )
        self.links[path] = target
        self.link_names[path] = name

    def _check_hardlink(self, name: str, target: str) -> tuple[str, ...]:
        self._check_name(target, name, "link target")
        if target.startswith("/"):
            raise unsafe(
                name, "absolute_link", f"is a hardlink to the absolute path {quoted(target)}"
            )
        parts = _parts(target)
        if self.rules.unwrap is not None:  # judged from the archive's root
            if ".." in parts or not parts:
                raise unsafe(
                    name, "link_escapes", f"is a hardlink to {quoted(target)}, outside the archive"
                )
            link_path = parts
        elif ".." in parts or not parts or parts[0] != self.top or len(parts) < 2:
            raise unsafe(
                name,
                "link_escapes",
                f"is a hardlink to {quoted(target)}, which is outside the archive's top folder",
            )
        else:
            link_path = parts[1:]
        if link_path in self.links:
            raise unsafe(name, "link_escapes", f"is a hardlink to the symlink {quoted(target)}")
        self._check_not_through_link(name, link_path)
        return link_path


def _kind_of(code: bytes) -> MemberKind | None:
    if code in _FILE_TYPES:
        return MemberKind.FILE
    if code in (tarfile.DIRTYPE, b"D"):  # "D": a GNU dumpdir, a directory with a listing
        return MemberKind.DIR
    if code == tarfile.SYMTYPE:
        return MemberKind.SYMLINK
    if code == tarfile.LNKTYPE:
        return MemberKind.HARDLINK
    return None


def _parts(name: str) -> tuple[str, ...]:
    parts = name.split("/")
    if "" in parts or "." in parts:
        return tuple(part for part in parts if part not in ("", "."))
    return tuple(parts)


def _escapes(path: tuple[str, ...], target: str, links: dict[tuple[str, ...], str]) -> bool:
    """Would the symlink at `path` → `target` resolve outside the root, given `links`?

    The kernel's walk, on the tree the archive describes: `..` climbs from the
    directory a symlink lives in, not from where its name lexically points.
    """
    current = list(path[:-1])
    pending = list(reversed(target.split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return True
            current.pop()
            continue
        current.append(part)
        nested = links.get(tuple(current))
        if nested is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS or nested.startswith("/"):
                return True  # a loop or an absolute hop: refuse rather than guess
            current.pop()
            pending.extend(reversed(nested.split("/")))
    return False
