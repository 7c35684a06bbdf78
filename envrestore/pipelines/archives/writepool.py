"""Writing extracted files of up to 1 MiB on a few threads, bounded in bytes.

Why: one thread pays every syscall (open, write, utime, close) one after the
other, beside the parsing. Here the parser hands finished files, in batches,
to `threads` writers; the os calls release the GIL, so their copies overlap
the parsing and each other. Each syscall's return waits for the GIL, though:
for files of a few KB that hand-off costs more than the syscall, so the
writer (`extract.TreeWriter`) keeps those in its own thread. Only data
already checked by the guard reaches this module.

Memory: at most `max_bytes` of file data wait (`flush_batch` blocks the
parser beyond it). Each file is created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW)
relative to its directory's fd, so no path is resolved twice and no symlink
is followed. The writer (`extract.TreeWriter`) guarantees that no two jobs in
flight name the same path, nor a path below another in-flight job.
"""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from envrestore.pipelines.archives.naming import unsafe

OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: File data waiting for a writer thread, at most (the parser waits beyond it).
MAX_PENDING_BYTES = 32 << 20
#: A batch goes to a thread once it holds this many files or bytes.
BATCH_FILES = 64
BATCH_BYTES = 1 << 20


@dataclass(slots=True)
class FileJob:
    """One regular file to create in `dir_fd` and fill with `pieces`."""

    dir_fd: int
    name: str
    member: str  # the archive's name for it, for errors
    path: tuple[str, ...]
    mode: int
    mtime_ns: int
    pieces: list[memoryview | bytes] = field(default_factory=list)
    size: int = 0


def create_file(dir_fd: int, name: str, member: str, mode: int) -> int:
    """Create `name` in `dir_fd` exclusively; a non-directory there is replaced (tar -x)."""
    for _ in range(3):
        try:
            return os.open(name, OPEN_NEW, mode, dir_fd=dir_fd)
        except FileExistsError:
            if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
                raise unsafe(
                    member,
                    "replaces_directory",
                    "would replace a directory extracted earlier from this archive",
                ) from None
            os.unlink(name, dir_fd=dir_fd)  # a later member replaces an earlier one
    raise unsafe(member, "replaces_directory", "could not be created")


def write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def finish_file(fd: int, mode: int, mtime_ns: int, umask: int) -> None:
    """Mode (when the umask cut it at creation) and mtime, then close."""
    try:
        if mode & umask:
            os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


class WritePool:
    """Batches of `FileJob`s written by `threads` threads; errors come back in order."""

    def __init__(self, threads: int, umask: int, max_bytes: int = MAX_PENDING_BYTES) -> None:
        self._executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="extract-write")
        self._umask = umask
        self._max_bytes = max_bytes
        self._pending_bytes = 0
        self._pending_batches = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._cancelled = False
        #: Paths of files submitted and not yet written (read by the writer to order work).
        self.in_flight: set[tuple[str, ...]] = set()
        self._batch: list[FileJob] = []
        self._batch_bytes = 0

    def add(self, job: FileJob) -> None:
        """Queue one complete file; a full batch goes to a thread."""
        self.in_flight.add(job.path)
        self._batch.append(job)
        self._batch_bytes += job.size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self.flush_batch()

    def flush_batch(self) -> None:
        """Hand the open batch to a thread, waiting while too many bytes are queued."""
        batch, size = self._batch, self._batch_bytes
        if not batch:
            return
        self._batch, self._batch_bytes = [], 0
        with self._cond:
            while self._pending_bytes and self._pending_bytes + size > self._max_bytes:
                self._raise_error()
                self._cond.wait()
            self._raise_error()
            self._pending_bytes += size
            self._pending_batches += 1
        self._executor.submit(self._run, batch, size)

    def drain(self) -> None:
        """Every queued file written (or the first error raised)."""
        self.flush_batch()
        with self._cond:
            while self._pending_batches:
                self._raise_error()
                self._cond.wait()
            self._raise_error()

    def close(self, *, cancel: bool) -> None:
        """Stop the threads; `cancel` skips files not yet started. Returns once all stopped."""
        if cancel:
            self._cancelled = True
            self._batch.clear()
        self._executor.shutdown(wait=True)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self, batch: list[FileJob], size: int) -> None:
        try:
            if self._error is None and not self._cancelled:
                self._write(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the parser's thread
            if self._error is None:
                self._error = exc
        finally:
            with self._cond:
                self._pending_bytes -= size
                self._pending_batches -= 1
                self._cond.notify_all()

    def _write(self, batch: list[FileJob]) -> None:
        """The hot loop (one pass per small file): os calls inline, helpers only when rare."""
        umask = self._umask
        discard = self.in_flight.discard
        open_, write, utime, close = os.open, os.write, os.utime, os.close
        for job in batch:
            if self._cancelled or self._error is not None:
                return
            try:
                fd = open_(job.name, OPEN_NEW, job.mode, dir_fd=job.dir_fd)
            except FileExistsError:  # an earlier member of that name: replaced, or refused
                fd = create_file(job.dir_fd, job.name, job.member, job.mode)
            try:
                for piece in job.pieces:
                    done = write(fd, piece)
                    if done != len(piece):  # a short write: the rest, in a loop
                        write_all(fd, memoryview(piece)[done:])
                if job.mode & umask:
                    os.fchmod(fd, job.mode)
                utime(fd, ns=(job.mtime_ns, job.mtime_ns))
            finally:
                close(fd)
            job.pieces = []
            discard(job.path)
