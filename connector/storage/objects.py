"""The object store interface and its local-folder implementation.

What it does: stores, reads and deletes objects by key, two ways.
- `put` writes one object atomically (temporary file, fsync, rename): a crash leaves the old
  object or the new one, never half of one.
- `stage`, then `publish` for a whole batch, is the bulk path of ingest: a worker stages each
  object (its bytes written where no key names them yet), and the process that keeps the index
  publishes a batch before indexing it. `publish` returns only once every object of the batch is
  durable under its key, and still no key ever names half an object: the staged bytes are made
  durable first, then renamed into place, then the renames are made durable. On Linux each of
  those two barriers is one syncfs(2) per filesystem (one journal commit and one disk flush for
  the batch) instead of an fsync per object and per folder; elsewhere, files and folders are
  fsynced one by one. `discard` drops a staged object instead.

Staged bytes wait in `.staging/` under the store's root, named by a hash of their key, so staging
a key again (the next run after a crash) replaces what a crash left there.

What it must never do: accept a key that could escape the store's folder (keys are relative POSIX
paths, checked by `validate_key`); let a key name an object that is not complete; decide what
may be stored (it stores the bytes it is given).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from connector.atomic_files import write_atomically

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
STAGING = ".staging"


class ObjectStoreError(Exception):
    """The store cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class Staged:
    """An object `stage` wrote and `publish` has not yet put under its key (small, picklable)."""

    key: str
    token: str  # where the store keeps the bytes meanwhile ("" where staging wrote the object)


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically (replacing any object there)."""

    def stage(self, key: str, data: bytes) -> Staged:
        """Write `data` for `key`, to be made durable and final by `publish` (or dropped by `discard`)."""

    def publish(self, staged: Iterable[Staged]) -> None:
        """Return once every staged object is durable under its key (each one whole or absent)."""

    def discard(self, staged: Staged) -> None:
        """Drop a staged object that will not be published (a store without staging deletes it)."""

    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def check(self) -> None:
        """Raise ObjectStoreError unless a write, read and delete round trip works."""


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2) from the C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


# An fsync on a journaling filesystem forces a journal commit and a disk cache flush: per object,
# that cost more CPU than sealing it, and milliseconds of waiting. One syncfs pays once for a batch.
_SYNCFS = _load_syncfs()


def validate_key(key: str) -> str:
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ObjectStoreError(f"invalid object key {key!r}")
    return key


class LocalObjectStore:
    """Objects as files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: set[str] = set()  # folders this process knows exist (skips a mkdir each)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)

    # -- bulk: stage, publish ----------------------------------------------------------------------

    def stage(self, key: str, data: bytes) -> Staged:
        validate_key(key)
        token = hashlib.sha256(key.encode()).hexdigest()[:40]
        staging = os.path.join(self.root, STAGING)
        path = os.path.join(staging, token)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self._make_folder(staging)
        # Not fsynced here: `publish` makes a whole batch durable at once, before any rename.
        try:
            descriptor = os.open(path, flags, 0o600)
        except FileNotFoundError:  # the folder went away since this process made it
            self._folders.discard(staging)
            self._make_folder(staging)
            descriptor = os.open(path, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
        finally:
            os.close(descriptor)
        return Staged(key, token)

    def publish(self, staged: Iterable[Staged]) -> None:
        batch = list(staged)
        if not batch:
            return
        staging = os.path.join(self.root, STAGING)
        sources = [os.path.join(staging, item.token) for item in batch]
        targets = [os.path.join(self.root, validate_key(item.key)) for item in batch]
        try:
            # 1. the staged bytes are durable before any key names them,
            self._make_durable(files=sources, folders={staging})
            # 2. each object appears under its key whole, by a rename,
            folders = set()
            for source, target in zip(sources, targets, strict=True):
                folder = os.path.dirname(target)
                self._make_folder(folder)
                folders.add(folder)
                try:
                    os.replace(source, target)
                except FileNotFoundError:  # the folder went away since this process made it
                    self._folders.discard(folder)
                    self._make_folder(folder)
                    os.replace(source, target)
            # 3. and the renames, and any folder made for them, are durable before we return.
            self._make_durable(files=[], folders=self._with_parents(folders))
        except OSError as exc:
            raise ObjectStoreError(f"objects in {self.root} cannot be published: {exc.strerror}") from None

    def discard(self, staged: Staged) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, STAGING, staged.token))

    def _make_folder(self, folder: str) -> None:
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)

    def _with_parents(self, folders: set[str]) -> set[str]:
        """The folders and every folder above them up to the root (root included)."""
        root = os.path.normpath(self.root)
        chain: set[str] = set()
        for folder in folders:
            while folder not in chain:
                chain.add(folder)
                if folder == root or not folder.startswith(root + os.sep):
                    break
                folder = os.path.dirname(folder)
        return chain

    def _make_durable(self, files: list[str], folders: set[str]) -> None:
        if _SYNCFS is not None:
            # syncfs commits a whole filesystem: once per filesystem involved (a folder of the
            # store may be a mount point).
            by_device: dict[int, str] = {}
            for folder in folders:
                by_device.setdefault(os.stat(folder).st_dev, folder)
            for folder in by_device.values():
                descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    if _SYNCFS(descriptor) != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, os.strerror(error))
                finally:
                    os.close(descriptor)
            return
        for path in [*files, *folders]:
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    # -- one object at a time ----------------------------------------------------------------------

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
