"""The small parts the service stands on: the embedded OPA engine, the object folder, key files, logs."""

from __future__ import annotations

import importlib.metadata
import os
import stat
from pathlib import Path

import pytest

from connector.crypto.keyfile import KeyFileError, load_or_create_ed25519
from connector.crypto.signing import ConnectorSigningKey
from connector.observability.logging import redact
from connector.policy.engine import EmbeddedOpaBackend
from connector.storage.objects import LocalObjectStore, ObjectStoreError


def test_embedded_opa_engine_evaluates_rego_on_this_python() -> None:
    # Its wheel claims Python >= 3.14; `make setup` installs it with --ignore-requires-python.
    metadata = importlib.metadata.metadata("opa-golib-python-bindings")
    assert metadata["Version"] == "0.4.4"
    EmbeddedOpaBackend().check()


def test_object_store_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put("datasets/ds-1/a.bin", b"first")
    store.put("datasets/ds-1/a.bin", b"second")
    assert store.get("datasets/ds-1/a.bin") == b"second"
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.name.startswith(".")]  # no temp file left
    store.delete("datasets/ds-1/a.bin")
    assert not store.exists("datasets/ds-1/a.bin")
    with pytest.raises(ObjectStoreError, match="no object"):
        store.get("datasets/ds-1/a.bin")
    store.check()


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a/../../b", "a//b", "", "a\\b", "spaced key"])
def test_object_store_refuses_keys_that_escape(tmp_path: Path, key: str) -> None:
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        LocalObjectStore(tmp_path).put(key, b"x")


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "k.pem"
    first = ConnectorSigningKey(load_or_create_ed25519(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    again = ConnectorSigningKey(load_or_create_ed25519(path))
    assert first.key_id == again.key_id
    signature = first.sign(b"message")
    assert again.verify(b"message", signature)
    assert not again.verify(b"other message", signature)


def test_corrupt_key_file_is_an_error_and_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(KeyFileError, match="corrupt"):
        load_or_create_ed25519(path)
    assert path.read_bytes() == b"-----BEGIN PRIVATE KEY-----\ngarbage\n"


def test_redaction_covers_tokens_keys_and_secrets() -> None:
    text = (
        "auth Bearer abc.def.ghi and eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl "
        "url?access_token=zzz&x=1 password=hunter2 "
        "-----BEGIN PRIVATE KEY-----\nMC4CAQ\n-----END PRIVATE KEY-----"
    )
    cleaned = redact(text)
    for secret in ("abc.def.ghi", "eyJhbGciOiJFZERTQSJ9", "zzz", "hunter2", "MC4CAQ"):
        assert secret not in cleaned
