"""Imported archives may have any layout; a sole `files/` or `files_<env>/` is unwrapped.

Every case runs on tar, tar.gz, tar.zst, tar.bz2 and zip, through both the
extractor and the check-only pass (the in-place pre-wipe verify).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from envrestore.pipelines.archives.formats import check_archive, extract_archive
from envrestore.pipelines.archives.tarpolicy import ArchiveRules, TarLimits, TarReport
from envrestore.pipelines.errors import BadInput, UnsafeInput
from tests.support import archive_formats as af
from tests.support.archive_formats import file, folder, hardlink, symlink

IMPORT = ArchiveRules(
    label="the imported files part", unwrap=re.compile(r"files(_[A-Za-z0-9][A-Za-z0-9._-]*)?")
)
LIMITS = TarLimits(max_bytes=1 << 20, max_members=50)
UPLOADS = [
    folder("2024"),
    file("2024/a.jpg", b"jpeg"),
    folder("styles"),
    file("2025/b.png", b"png"),
]


def under(top: str) -> list[af.Entry]:
    return [folder(top)] + [
        af.Entry(f"{top}/{e.name}", e.kind, e.data, e.target, e.mode) for e in UPLOADS
    ]


def tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = f"-> {path.readlink()}"
        else:
            out[str(path.relative_to(root))] = "dir" if path.is_dir() else path.read_text()
    return out


UPLOADS_TREE = {
    "2024": "dir",
    "2024/a.jpg": "jpeg",
    "2025": "dir",
    "2025/b.png": "png",
    "styles": "dir",
}


async def both(fmt: str, entries: list[af.Entry], dest: Path, spool: Path) -> TarReport:
    """Extract, and check that the check-only pass says exactly the same."""
    data = af.pack(fmt, entries)
    checked = await check_archive(
        af.stream(data), codec="auto", key="upload", limits=LIMITS, rules=IMPORT, spool_dir=spool
    )
    report = await extract_archive(
        af.stream(data),
        dest,
        codec="auto",
        key="upload",
        limits=LIMITS,
        rules=IMPORT,
        spool_dir=spool,
    )
    assert checked == report
    return report


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    (tmp_path / "spool").mkdir()
    return tmp_path / "spool"


@pytest.mark.parametrize("top", ["files_live", "files", "files_my-site.2"])
@pytest.mark.parametrize("fmt", af.FORMATS)
async def test_a_sole_files_folder_is_unwrapped(
    fmt: str, top: str, tmp_path: Path, spool: Path
) -> None:
    dest = tmp_path / "staging" / "files"
    dest.parent.mkdir()
    report = await both(fmt, under(top), dest, spool)
    assert report.top == top
    assert tree(dest) == UPLOADS_TREE
    assert dest.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in dest.parent.iterdir()] == ["files"]  # nothing left beside it


@pytest.mark.parametrize("fmt", af.FORMATS)
async def test_without_an_entry_for_the_folder_it_is_still_unwrapped(
    fmt: str, tmp_path: Path, spool: Path
) -> None:
    report = await both(fmt, under("files_dev")[1:], tmp_path / "d", spool)
    assert report.top == "files_dev"
    assert tree(tmp_path / "d") == UPLOADS_TREE
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("fmt", af.FORMATS)
async def test_a_child_named_like_its_folder_survives_the_unwrap(
    fmt: str, tmp_path: Path, spool: Path
) -> None:
    entries = [folder("files"), folder("files/files"), file("files/files/x.txt", b"x")]
    entries.append(file("files/y.txt", b"y"))
    report = await both(fmt, entries, tmp_path / "d", spool)
    assert report.top == "files"
    assert tree(tmp_path / "d") == {"files": "dir", "files/x.txt": "x", "y.txt": "y"}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (UPLOADS, UPLOADS_TREE),
        (
            [file("sites/default/files/a.txt", b"a")],
            {
                "sites": "dir",
                "sites/default": "dir",
                "sites/default/files": "dir",
                "sites/default/files/a.txt": "a",
            },
        ),
        (
            [folder("files_dev"), file("files_dev/a.txt", b"a"), file("readme.txt", b"r")],
            {
                "files_dev": "dir",
                "files_dev/a.txt": "a",
                "readme.txt": "r",
            },
        ),
        ([file("files", b"just a file")], {"files": "just a file"}),
        (
            [folder("files-live/"), file("files-live/a", b"a"), folder("./")],
            {
                "files-live": "dir",
                "files-live/a": "a",
            },
        ),
    ],
    ids=[
        "root-members",
        "single-sites-folder",
        "files-folder-and-a-root-file",
        "a-file-named-files",
        "pattern-not-matched",
    ],
)
@pytest.mark.parametrize("fmt", af.FORMATS)
async def test_other_layouts_are_taken_as_they_are(
    fmt: str, entries: list[af.Entry], expected: dict[str, str], tmp_path: Path, spool: Path
) -> None:
    if fmt == "zip" and any(e.name.startswith("./") for e in entries):
        entries = [e for e in entries if not e.name.startswith("./")]
    report = await both(fmt, entries, tmp_path / "d", spool)
    assert report.top == ""
    assert tree(tmp_path / "d") == expected


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([folder("files"), file("files/../../outside/x")], "parent_reference"),
        ([file("../outside/x")], "parent_reference"),
        ([file("/tmp/envrestore-unwrap-evil/x")], "absolute_path"),
        ([folder("files_live"), symlink("files_live/l", "../../outside")], "link_escapes"),
        ([file("a.txt"), symlink("l", "../outside")], "link_escapes"),
        # Inside the archive's root, but outside the folder that becomes the tree:
        (
            [
                folder("files_live"),
                file("files_live/a", b"a"),
                symlink("files_live/l", "../files_live/a"),
            ],
            "link_escapes",
        ),
        ([folder("files"), symlink("files/l", "x"), file("files/l/y.txt")], "through_symlink"),
    ],
    ids=[
        "parent-in-folder",
        "parent-at-root",
        "absolute",
        "symlink-out",
        "symlink-out-at-root",
        "symlink-out-of-unwrapped",
        "through-symlink",
    ],
)
@pytest.mark.parametrize("fmt", af.FORMATS)
async def test_escapes_are_still_refused_in_unwrap_mode(
    fmt: str, entries: list[af.Entry], problem: str, tmp_path: Path, spool: Path
) -> None:
    (tmp_path / "outside").mkdir()
    with pytest.raises(UnsafeInput) as caught:
        await both(fmt, entries, tmp_path / "d", spool)
    assert caught.value.data["problem"] == problem
    assert not list((tmp_path / "outside").iterdir())
    assert not Path("/tmp/envrestore-unwrap-evil").exists()
    assert not [p for p in (tmp_path / "d").rglob("*") if p.is_symlink()]


@pytest.mark.parametrize("fmt", af.TAR_FORMATS)
async def test_hardlinks_are_judged_from_the_root(fmt: str, tmp_path: Path, spool: Path) -> None:
    good = [folder("files"), file("files/a", b"a"), hardlink("files/b", "files/a")]
    await both(fmt, good, tmp_path / "ok", spool)
    assert (tmp_path / "ok" / "b").read_text() == "a"
    assert (tmp_path / "ok" / "b").stat().st_ino == (tmp_path / "ok" / "a").stat().st_ino
    for target in ("../outside/x", "/etc/passwd", "files/../../x"):
        with pytest.raises(UnsafeInput) as caught:
            await both(fmt, [file("a", b"a"), hardlink("h", target)], tmp_path / "bad", spool)
        assert caught.value.data["problem"] in ("link_escapes", "absolute_link")


@pytest.mark.parametrize(
    ("entries", "detail"),
    [
        ([folder("files_live")], "no file or folder in its folder files_live/"),
        ([symlink("l", "x")], "no file or folder"),
        ([], "no members"),
    ],
    ids=["folder-only", "symlink-only", "nothing"],
)
@pytest.mark.parametrize("fmt", af.FORMATS)
async def test_an_archive_with_nothing_in_it_is_still_refused(
    fmt: str, entries: list[af.Entry], detail: str, tmp_path: Path, spool: Path
) -> None:
    with pytest.raises(BadInput) as caught:
        await both(fmt, entries, tmp_path / "d", spool)
    assert caught.value.data["problem"] == "empty"
    assert str(caught.value).startswith("the imported files part is empty")
    assert detail in str(caught.value)


async def test_a_folder_left_by_a_killed_unwrap_is_replaced(tmp_path: Path, spool: Path) -> None:
    """An attempt killed between the renames leaves its folder aside; the next one copes."""
    dest = tmp_path / "d"
    aside = tmp_path / f".envrestore-unwrap-{hashlib.sha256(b'd').hexdigest()[:16]}"
    aside.mkdir()
    (aside / "stale.txt").write_text("old")
    report = await both("zip", under("files_live"), dest, spool)
    assert report.top == "files_live"
    assert tree(dest) == UPLOADS_TREE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "spool"]
