"""Atomic file writes: a temporary file beside the target, fsync, then rename (or link).

A crash leaves the old file or the new one, never half of one, and no temporary file behind
on an error. The one way the connector writes a file that must not be torn.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(
    path: Path, data: bytes, *, mode: int | None = None, exclusive: bool = False, sync_dir: bool = False
) -> None:
    """Write `data` to `path` atomically.

    `mode` sets the permissions before any byte is written; without it the file is 0600 (the
    temporary file's mode, whatever the umask): nothing the connector writes is readable by
    other users unless a caller asks for it. `exclusive`
    refuses to replace an existing file (FileExistsError), atomically, via link(); `sync_dir`
    also makes the rename itself durable.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temp, path)
        else:
            os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    if sync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
