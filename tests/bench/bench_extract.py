"""Files extraction against `tar -x` of the same archive, same run, same filesystem.

    .venv/bin/python -m tests.bench.bench_extract        (or: make bench)

Builds an uploads tree like the restore benchmark's (`datasets.make_uploads`:
log-uniform 4-512 KB files, mostly incompressible; ENVRESTORE_BENCH_EXTRACT_GB,
default 0.25), archives it as a backup does (`files.tar_argv`, then `gzip`),
then times, in rotating order over ENVRESTORE_BENCH_EXTRACT_ROUNDS rounds (3):

The same for ENVRESTORE_BENCH_EXTRACT_SMALL_FILES (20,000; 0: none) files of
1-8 KB, where the cost per member shows rather than the bytes.

- `tar -xzf` of the `.tar.gz` and `tar -xf` of the plain `.tar` (inflate cost apart);
- envrestore's `formats.extract_archive` (the restore's entry point) on the
  `.tar.gz` stream and on the plain `.tar` stream.

Every run extracts into a fresh directory on the same filesystem. Nothing is
deleted between timed runs (journal-less ext4 creates files 3x slower for
minutes after a big delete, PERFORMANCE.md): the trees are kept until the end.
Before each run: `sync` and a settle pause (ENVRESTORE_BENCH_EXTRACT_SETTLE_SECONDS, 3).
Prints medians, files/s, MB/s and the ratio of each envrestore run to its `tar`
baseline (speed ratio: above 1.0 is faster than tar).
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from envrestore.pipelines.archives.files import tar_argv
from envrestore.pipelines.archives.formats import extract_archive
from envrestore.pipelines.archives.tarpolicy import ArchiveRules, limits_for
from tests.bench import datasets

GB = float(os.environ.get("ENVRESTORE_BENCH_EXTRACT_GB", "0.25"))
ROUNDS = int(os.environ.get("ENVRESTORE_BENCH_EXTRACT_ROUNDS", "3"))
SETTLE_SECONDS = float(os.environ.get("ENVRESTORE_BENCH_EXTRACT_SETTLE_SECONDS", "3"))
#: A second archive of this many 1-8 KB files, where the cost per member shows (0: none).
SMALL_FILES = int(os.environ.get("ENVRESTORE_BENCH_EXTRACT_SMALL_FILES", "20000"))
TOP = "files_dev"
CHUNK = 1 << 20


def settle() -> None:
    subprocess.run(["sync"], check=False)
    time.sleep(SETTLE_SECONDS)


def make_small(root: Path, count: int, *, seed: int = 3) -> tuple[int, int]:
    """`count` files of 1-8 KB (random bytes), 200 a folder; (files, bytes)."""
    rng = random.Random(seed)
    written = 0
    for index in range(count):
        folder = root / f"d{index // 200:04d}"
        if index % 200 == 0:
            folder.mkdir(parents=True)
        length = rng.randint(1 << 10, 8 << 10)
        (folder / f"f{index:06d}.txt").write_bytes(os.urandom(length))
        written += length
    return count, written


def build(work: Path, name: str, fill: Callable[[Path], tuple[int, int]]) -> Dataset:
    """A tree made by `fill`, archived as a backup does, as `.tar` and `.tar.gz`."""
    tree = work / name
    files, size = fill(tree)
    plain = work / f"{name}.tar"
    with plain.open("wb") as out:
        subprocess.run(tar_argv(tree, TOP), stdout=out, check=True)
    packed = work / f"{name}.tar.gz"
    with packed.open("wb") as out:
        subprocess.run(["gzip", "-c", str(plain)], stdout=out, check=True)
    shutil.rmtree(tree)
    return Dataset(name, plain, packed, files, size)


@dataclass(frozen=True)
class Dataset:
    name: str
    plain: Path
    packed: Path
    files: int
    size: int


async def _read(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


def envrestore_extract(archive: Path, dest: Path, spool: Path) -> None:
    codec = "gzip" if archive.suffix == ".gz" else "plain"
    asyncio.run(
        extract_archive(
            _read(archive),
            dest,
            codec=codec,
            key=archive.name,
            limits=limits_for(archive.stat().st_size),
            rules=ArchiveRules(label="the files part", top=TOP),
            spool_dir=spool,
        )
    )


def tar_extract(archive: Path, dest: Path) -> None:
    dest.mkdir()
    flags = "-xzf" if archive.suffix == ".gz" else "-xf"
    subprocess.run(["tar", flags, str(archive), "-C", str(dest)], check=True)


def cpu_seconds() -> float:
    """User + system CPU of this process (every thread) and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(work: Path) -> dict[str, dict[str, float]]:
    """Median seconds per contender, per archive (uploads, and small files)."""
    uploads = build(
        work,
        "uploads",
        lambda tree: datasets.make_uploads(tree, datasets.SiteSize(GB, 0, int(GB * (1 << 30)))),
    )
    sets = [uploads]
    if SMALL_FILES:
        sets.append(build(work, "small", lambda tree: make_small(tree, SMALL_FILES)))
    time.sleep(SETTLE_SECONDS * 3)  # the source trees were just deleted
    return {data.name: run_set(work, data) for data in sets}


def run_set(work: Path, data: Dataset) -> dict[str, float]:
    plain, packed, files, size = data.plain, data.packed, data.files, data.size
    print(
        f"\n{data.name}: {files} files, {size / 1e6:.0f} MB "
        f"({packed.stat().st_size / 1e6:.0f} MB gz)"
    )
    spool = work / "spool"
    spool.mkdir(exist_ok=True)
    contenders: dict[str, Callable[[Path], None]] = {
        "tar -xzf (.tar.gz)": lambda dest: tar_extract(packed, dest),
        "envrestore (.tar.gz)": lambda dest: envrestore_extract(packed, dest, spool),
        "tar -xf (.tar)": lambda dest: tar_extract(plain, dest),
        "envrestore (.tar)": lambda dest: envrestore_extract(plain, dest, spool),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    trees = work / f"trees-{data.name}"
    trees.mkdir()
    count = 0
    for round_ in range(ROUNDS):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            count += 1
            dest = trees / f"run-{count}"
            settle()
            started, cpu_started = time.perf_counter(), cpu_seconds()
            contenders[name](dest)
            times[name].append(time.perf_counter() - started)
            cpu[name].append(cpu_seconds() - cpu_started)
            found = datasets.tree_fingerprint(dest / TOP if name.startswith("tar") else dest)
            assert found == (files, size), f"{name} extracted {found}, expected {(files, size)}"
    medians = {name: statistics.median(values) for name, values in times.items()}
    print_table(medians, times, cpu, files, size)
    return medians


def print_table(
    medians: dict[str, float],
    times: dict[str, list[float]],
    cpu: dict[str, list[float]],
    files: int,
    size: int,
) -> None:
    """Speed vs tar: tar's median time over this one's (above 1.0: faster than tar).
    CPU s (all threads and child processes) shows the cost where a busy machine blurs time."""
    baseline = {"(.tar.gz)": medians["tar -xzf (.tar.gz)"], "(.tar)": medians["tar -xf (.tar)"]}
    print("\n| contender | median s (runs) | files/s | MB/s | speed vs tar | CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds in medians.items():
        base = baseline[name.split(" ")[-1]]
        runs = ", ".join(f"{value:.2f}" for value in times[name])
        print(
            f"| {name} | {seconds:.2f} ({runs}) | {files / seconds:,.0f} | "
            f"{size / 1e6 / seconds:.0f} | {base / seconds:.2f} | "
            f"{statistics.median(cpu[name]):.2f} |"
        )


def test_extract_against_tar() -> None:
    work = Path(tempfile.mkdtemp(prefix="envrestore-bench-extract-", dir=_bench_parent()))
    try:
        medians = run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert all(value > 0 for table in medians.values() for value in table.values())


def _bench_parent() -> str | None:
    """Same filesystem as the restores' trees (/tmp may be a tmpfs elsewhere)."""
    return os.environ.get("ENVRESTORE_BENCH_DIR")


if __name__ == "__main__":
    test_extract_against_tar()
