"""Writing files so that a kill at any moment leaves the old file or the new one, never half."""

from __future__ import annotations

import fcntl
import os
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
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
