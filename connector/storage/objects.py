"""The object store interface and its local-folder implementation.

Writes are atomic (temporary file, fsync, rename): a crash leaves the old object or the new one,
never half of one. Keys are relative POSIX paths; this module refuses any key that could escape
the store's folder. It stores bytes as given: it never decides what may be stored.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Protocol

from connector.atomic_files import write_atomically

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class ObjectStoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)

    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def check(self) -> None:
        """Raise ObjectStoreError unless a write, read and delete round trip works."""


def validate_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ObjectStoreError(f"invalid object key {key!r}")
    return key


class LocalObjectStore:
    """Objects as files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectStoreError(f"no object {key!r}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        probe = f".health/{secrets.token_hex(8)}"
        try:
            self.put(probe, b"ok")
            if self.get(probe) != b"ok":
                raise ObjectStoreError("object store returned different bytes than written")
            self.delete(probe)
        except OSError as exc:
            raise ObjectStoreError(f"object folder {self.root} is not usable: {exc.strerror}") from None
