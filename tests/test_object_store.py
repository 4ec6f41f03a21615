"""The local object folder: atomic puts, and the bulk path (stage, then publish a batch durably)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from connector.storage import objects
from connector.storage.objects import STAGING, LocalObjectStore, ObjectStoreError, Staged

KEYS = [f"datasets/ds/{folder}/{n}.enc" for n, folder in enumerate(["s1/a", "s1/a", "s1/b", "s2/c"])]


def _opened(fd: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def _stage_all(store: LocalObjectStore) -> list[Staged]:
    staged = [store.stage(key, f"sealed {key}".encode()) for key in KEYS]
    assert not any(store.exists(key) for key in KEYS)  # staged: no key names them yet
    return staged


def _watch(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, Path]]) -> None:
    real_replace = os.replace

    def replace(source: str, target: str) -> None:
        events.append(("rename", Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.skipif(objects._SYNCFS is None, reason="no syncfs(2) on this system")
def test_publish_makes_a_batch_durable_before_and_after_its_renames(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = _stage_all(store)
    real_syncfs = objects._SYNCFS
    assert real_syncfs is not None
    events: list[tuple[str, Path]] = []

    def syncfs(fd: int) -> int:
        events.append(("syncfs", _opened(fd)))
        return real_syncfs(fd)

    monkeypatch.setattr(objects, "_SYNCFS", syncfs)
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("no object is fsynced one by one"))
    _watch(monkeypatch, events)
    store.publish(staged)
    # one commit for the staged bytes, the renames, one commit for the renames: 2 syncfs, not 4+7 fsyncs
    assert [kind for kind, _ in events] == ["syncfs", "rename", "rename", "rename", "rename", "syncfs"]
    assert all(path.is_relative_to(store.root.resolve()) for kind, path in events if kind == "syncfs")
    assert [store.get(key) for key in KEYS] == [f"sealed {key}".encode() for key in KEYS]
    assert not list((store.root / STAGING).iterdir())
    store.publish([])  # an empty batch costs nothing
    assert len(events) == 6


def test_without_syncfs_files_then_folders_are_fsynced(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "_SYNCFS", None)
    staged = _stage_all(store)
    events: list[tuple[str, Path]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append(("fsync", _opened(fd)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _watch(monkeypatch, events)
    store.publish(staged)
    root = store.root.resolve()
    kinds = [kind for kind, _ in events]
    first_rename = kinds.index("rename")
    before = {path for kind, path in events[:first_rename]}
    after = {path for kind, path in events[first_rename:] if kind == "fsync"}
    assert {root / STAGING / item.token for item in staged} <= before  # every staged file, first
    assert kinds[first_rename : first_rename + 4] == ["rename"] * 4
    folders = ["datasets/ds/s1/a", "datasets/ds/s1/b", "datasets/ds/s2/c", "datasets/ds/s1", "datasets/ds/s2"]
    # then every folder whose entries changed, up to the root, each once, nothing above it
    assert after == {*(root / folder for folder in folders), root / "datasets/ds", root / "datasets", root}
    assert len(kinds) - first_rename - 4 == len(after)


def test_a_failing_barrier_publishes_nothing(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = _stage_all(store)

    def failing(fd: int) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(objects, "_SYNCFS", failing if objects._SYNCFS is not None else None)
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(ObjectStoreError, match="cannot be published: Input/output error"):
        store.publish(staged)
    assert not any(store.exists(key) for key in KEYS)  # the bytes were never durable: no key names them


def test_discard_and_staging_again_leave_nothing_behind(store: LocalObjectStore) -> None:
    first = store.stage(KEYS[0], b"from a run that crashed")
    again = store.stage(KEYS[0], b"from the next run")  # replaces what the crash left
    assert again == first
    other = store.stage(KEYS[1], b"a duplicate")
    store.discard(other)
    store.discard(other)  # twice is fine
    store.publish([again])
    assert store.get(KEYS[0]) == b"from the next run"
    assert not store.exists(KEYS[1])
    assert not list((store.root / STAGING).iterdir())
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        store.stage("../escape", b"x")


def test_put_is_atomic(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put("a/b/x.enc", b"first")
    store.put("a/b/x.enc", b"second")
    assert store.get("a/b/x.enc") == b"second"
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.name.startswith(".")]  # no temp file


def test_folders_removed_behind_the_stores_back_are_made_again(store: LocalObjectStore) -> None:
    store.publish([store.stage(KEYS[0], b"first")])
    shutil.rmtree(store.root)  # another tool cleaned up: the store's memory of its folders is stale
    store.publish([store.stage(KEYS[0], b"again")])
    assert store.get(KEYS[0]) == b"again"
