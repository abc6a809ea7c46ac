"""Files the verifier reads and writes: size-capped reads, atomic writes (never half-written)."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


class FileTooLarge(Exception):
    """A file exceeds the size the verifier reads."""


def read_capped(path: Path, cap: int) -> bytes:
    """A file's bytes; FileTooLarge past `cap` bytes (OSError when unreadable)."""
    with path.open("rb") as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise FileTooLarge(f"{path} exceeds {cap} bytes")
    return data


def read_regular_file(path: Path, cap: int) -> bytes:
    """A regular file's bytes, never following a symbolic link and never blocking on a FIFO or
    device; OSError when it is anything else or unreadable, FileTooLarge past `cap` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise FileTooLarge(f"{path} exceeds {cap} bytes")
    return data


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and a rename; OSError on I/O problems."""
    directory = path.parent if str(path.parent) else Path()
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
