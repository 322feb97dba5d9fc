"""Writing files so that a kill at any moment leaves the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temp_name(path: Path) -> Path:
    """The hidden temporary name a file is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], durable: bool = True
) -> None:
    """Call ``write(handle)`` on a temporary file, fsync it (unless it need not be
    ``durable``: a file made again at will) and rename it over ``path``.

    On any error the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    tmp = temp_name(path)
    handle = None
    try:
        with open(tmp, "w+b") as raw:  # readable too: model.pt is filled in place
            handle = FirstErrorWriter(raw)
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.is_file() else 0
        with contextlib.suppress(OSError):  # the first error is the one to report
            tmp.unlink(missing_ok=True)
        cause = handle.error if handle is not None and handle.error else err
        if isinstance(cause, OSError) and not isinstance(cause, WriteError):
            raise WriteError(path, cause, written) from err
        raise


class FirstErrorWriter:
    """A binary file that remembers the first OSError of its writes: torch.save's archive
    writer turns a full disk into "unexpected pos" and loses the cause."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name):
        return getattr(self.raw, name)


NEEDS_SOMEONE = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
}
"""Write failures that stay until someone frees space, changes permissions or moves a file."""


class WriteError(OSError):
    """A file could not be written where it goes (a full disk or quota, a read-only file
    system, a folder in its place): running again does not help until someone acts, and
    the message says what on."""

    def __init__(self, path: Path, cause: OSError, written: int = 0):
        super().__init__(cause.errno, cause.strerror, str(path))
        self.path, self.cause = path, cause
        self.message = f"cannot write {path}: {cause.strerror or cause}"
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            free = free_mb(path.parent)
            self.message += (
                f" after {written / 1e6:,.1f} MB of it ({free:,.0f} MB free there): make "
                "room, then run again"
            )
        elif cause.errno == errno.EFBIG:
            self.message += f" after {written / 1e6:,.1f} MB of it (see ulimit -f)"

    @property
    def permanent(self) -> bool:
        """Whether running again, unchanged, fails again (not so for an I/O hiccup)."""
        return self.cause.errno in NEEDS_SOMEONE

    def __str__(self) -> str:
        return self.message


def write_failure(folder: Path, size: int) -> WriteError | None:
    """Why ``folder`` cannot take ``size`` more bytes (a full disk or quota, a file size
    limit, a read-only file system), found by reserving the space without writing it; None
    if it can. For writers that do not say (torch.distributed.checkpoint's hides the
    error of its writes)."""
    probe = temp_name(folder / "space")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, max(size, 1))
        finally:
            os.close(fd)
    except OSError as err:
        written = sum(f.stat().st_size for f in folder.glob("*") if f.is_file())
        return WriteError(folder, err, written)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def free_mb(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 1e6
    except OSError:
        return float("nan")


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), durable)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files a killed writer left behind in ``folder``."""
    for stale in folder.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)


class LockedError(RuntimeError):
    """Another process holds the lock; the message names it."""


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block: one writer of ``what`` at a time.

    The lock is the kernel's (flock), so it dies with its holder, SIGKILL included; the
    file only says who holds it. Raises LockedError at once if another process does.
    """
    handle = open(path, "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LockedError(
                f"{what} is being written by {holder} (lock {path}); wait for it to end, "
                "or stop it, then run again"
            ) from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
