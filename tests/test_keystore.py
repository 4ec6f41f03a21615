"""The sealed-file key store and master key loading, with real AES-256-GCM and real files."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector.crypto.envelope import ObjectIdentity, decrypt_bytes, encrypt_bytes, generate_data_key
from connector.crypto.keystore import (
    MASTER_KEY_ENV,
    DatasetKeyStatus,
    KeyDestroyedError,
    KeyStore,
    KeyStoreCorruptError,
    KeyStoreError,
    MasterKeyError,
    SealedFileKeyStore,
    UnknownKeyError,
    UnwrapError,
    WrappedKey,
    decode_master_key,
    load_master_key,
)

MASTER = bytes(range(32))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keystore.sealed"


@pytest.fixture
def store(key_file: Path) -> SealedFileKeyStore:
    return SealedFileKeyStore(key_file, MASTER)


def _open_document(path: Path, master: bytes = MASTER) -> dict:
    """Decrypt the key file independently of the store (layout documented in the class docstring)."""
    blob = path.read_bytes()
    header = blob[:33]
    return json.loads(AESGCM(master).decrypt(header[-12:], blob[33:], header))


def test_is_a_key_store(store: SealedFileKeyStore) -> None:
    assert isinstance(store, KeyStore)


def test_create_wrap_unwrap(store: SealedFileKeyStore) -> None:
    key_id = store.create_dataset_key("lung-ct")
    assert key_id == "lung-ct/v1"
    assert store.create_dataset_key("lung-ct") == key_id  # idempotent
    data_key = generate_data_key()
    wrapped = store.wrap("lung-ct", data_key)
    assert wrapped.key_id == key_id
    assert data_key not in wrapped.ciphertext
    assert store.unwrap("lung-ct", wrapped) == data_key
    assert WrappedKey.from_dict(json.loads(json.dumps(wrapped.to_dict()))) == wrapped


def test_wrapped_key_is_bound_to_its_dataset_and_intact(store: SealedFileKeyStore) -> None:
    store.create_dataset_key("a")
    store.create_dataset_key("b")
    wrapped = store.wrap("a", generate_data_key())
    with pytest.raises(UnknownKeyError, match="does not belong to dataset b"):
        store.unwrap("b", wrapped)
    # Relabelled as dataset b's key: the KEK differs and the associated data names dataset a.
    with pytest.raises(UnwrapError, match="another dataset or is damaged"):
        store.unwrap("b", WrappedKey("b/v1", wrapped.ciphertext))
    damaged = bytearray(wrapped.ciphertext)
    damaged[-1] ^= 1
    with pytest.raises(UnwrapError):
        store.unwrap("a", WrappedKey(wrapped.key_id, bytes(damaged)))
    with pytest.raises(UnknownKeyError, match="unknown or was retired"):
        store.unwrap("a", WrappedKey("a/v7", wrapped.ciphertext))
    with pytest.raises(UnknownKeyError, match="create_dataset_key first"):
        store.wrap("never-made", generate_data_key())


def test_persistence_across_reopen(key_file: Path, store: SealedFileKeyStore) -> None:
    store.create_dataset_key("lung-ct")
    data_key = generate_data_key()
    wrapped = store.wrap("lung-ct", data_key)
    reopened = SealedFileKeyStore(key_file, MASTER)
    assert reopened.unwrap("lung-ct", wrapped) == data_key
    assert [s.dataset for s in reopened.status()] == ["lung-ct"]


def test_file_is_0600_sealed_and_holds_no_plain_key(key_file: Path, store: SealedFileKeyStore) -> None:
    store.create_dataset_key("lung-ct")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    blob = key_file.read_bytes()
    assert b"lung-ct" not in blob
    kek = base64.b64decode(_open_document(key_file)["datasets"]["lung-ct"]["versions"]["1"]["key"])
    assert kek not in blob and base64.b64encode(kek) not in blob
    # No temporary files left behind beside it.
    assert sorted(p.name for p in key_file.parent.iterdir()) == [".keystore.sealed.lock", "keystore.sealed"]


def test_wrong_master_key_is_refused_and_file_untouched(key_file: Path, store: SealedFileKeyStore) -> None:
    store.create_dataset_key("lung-ct")
    before = key_file.read_bytes()
    mtime = key_file.stat().st_mtime_ns
    with pytest.raises(MasterKeyError, match="master key does not open key store") as info:
        SealedFileKeyStore(key_file, bytes(32))
    assert bytes(32).hex() not in str(info.value) and MASTER.hex() not in str(info.value)
    assert key_file.read_bytes() == before
    assert key_file.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:],  # flipped ciphertext bit
        lambda b: b"",  # emptied
        lambda b: b"not a key store at all",
        lambda b: b[:4] + b"\x09" + b[5:],  # unknown file version
    ],
)
def test_corrupt_file_is_refused_and_untouched(key_file: Path, store: SealedFileKeyStore, damage) -> None:
    store.create_dataset_key("lung-ct")
    broken = damage(key_file.read_bytes())
    key_file.write_bytes(broken)
    with pytest.raises(KeyStoreCorruptError, match=r"damaged|format version"):
        SealedFileKeyStore(key_file, MASTER)
    assert key_file.read_bytes() == broken


def test_open_store_detects_a_file_damaged_later(key_file: Path, store: SealedFileKeyStore) -> None:
    store.create_dataset_key("lung-ct")
    key_file.write_bytes(key_file.read_bytes()[:-3])
    with pytest.raises(KeyStoreCorruptError):
        store.wrap("lung-ct", generate_data_key())
    with pytest.raises(KeyStoreCorruptError):
        store.rotate("lung-ct")  # a mutation never overwrites a file it cannot read


def test_rotate_keeps_old_versions_and_rewrap_moves_keys(key_file: Path, store: SealedFileKeyStore) -> None:
    store.create_dataset_key("lung-ct")
    data_key = generate_data_key()
    identity = ObjectIdentity("lung-ct", "study-1", "image.dcm")
    old = store.wrap("lung-ct", data_key)
    stored_object = encrypt_bytes(b"pixels", data_key, identity, old.key_id)

    assert store.rotate("lung-ct") == "lung-ct/v2"
    assert store.wrap("lung-ct", generate_data_key()).key_id == "lung-ct/v2"
    assert store.unwrap("lung-ct", old) == data_key  # old version still unwraps

    moved = store.rewrap("lung-ct", old)
    assert moved.key_id == "lung-ct/v2" and moved.ciphertext != old.ciphertext
    assert store.rewrap("lung-ct", moved) == moved  # already current
    # The object itself was not touched: it still decrypts with the re-wrapped key.
    assert decrypt_bytes(stored_object, store.unwrap("lung-ct", moved), identity) == b"pixels"

    (status,) = store.status()
    assert status.current_key_id == "lung-ct/v2"
    assert status.key_ids == ("lung-ct/v1", "lung-ct/v2")

    with pytest.raises(KeyStoreError, match="current key"):
        store.retire("lung-ct", "lung-ct/v2")
    store.retire("lung-ct", "lung-ct/v1")
    with pytest.raises(UnknownKeyError, match="retired"):
        store.unwrap("lung-ct", old)
    assert list(_open_document(key_file)["datasets"]["lung-ct"]["versions"]) == ["2"]
    assert SealedFileKeyStore(key_file, MASTER).unwrap("lung-ct", moved) == data_key


def test_destroy_is_crypto_shredding(key_file: Path, store: SealedFileKeyStore) -> None:
    store.create_dataset_key("lung-ct")
    store.create_dataset_key("keep")
    wrapped = store.wrap("lung-ct", generate_data_key())
    kept = store.wrap("keep", data_key := generate_data_key())
    store.rotate("lung-ct")
    keks = [v["key"] for v in _open_document(key_file)["datasets"]["lung-ct"]["versions"].values()]

    store.destroy("lung-ct")
    store.destroy("lung-ct")  # idempotent
    with pytest.raises(KeyDestroyedError, match=r"destroyed at .* \(crypto-shredded\)"):
        store.unwrap("lung-ct", wrapped)
    with pytest.raises(KeyDestroyedError):
        store.create_dataset_key("lung-ct")  # the name cannot silently come back
    with pytest.raises(KeyDestroyedError):
        SealedFileKeyStore(key_file, MASTER).unwrap("lung-ct", wrapped)

    document = json.dumps(_open_document(key_file))
    assert all(kek not in document for kek in keks)
    assert "lung-ct" not in _open_document(key_file)["datasets"]
    assert store.unwrap("keep", kept) == data_key
    statuses = {s.dataset: s for s in store.status()}
    assert statuses["lung-ct"].destroyed is not None and statuses["lung-ct"].key_ids == ()
    assert statuses["keep"].destroyed is None
    with pytest.raises(UnknownKeyError):
        store.destroy("never-made")


def test_changes_by_another_instance_are_seen(key_file: Path, store: SealedFileKeyStore) -> None:
    # Two processes sharing the file behave like two instances: each sees the other's changes.
    other = SealedFileKeyStore(key_file, MASTER)
    store.create_dataset_key("lung-ct")
    wrapped = other.wrap("lung-ct", data_key := generate_data_key())
    assert other.rotate("lung-ct") == "lung-ct/v2"
    assert store.wrap("lung-ct", generate_data_key()).key_id == "lung-ct/v2"
    store.create_dataset_key("second")
    assert {s.dataset for s in other.status()} == {"lung-ct", "second"}
    other.destroy("lung-ct")
    with pytest.raises(KeyDestroyedError):
        store.unwrap("lung-ct", wrapped)
    del data_key


def test_status_lists_key_ids_and_dates(store: SealedFileKeyStore) -> None:
    store.create_dataset_key("b-set")
    store.create_dataset_key("a-set")
    statuses = store.status()
    assert [s.dataset for s in statuses] == ["a-set", "b-set"]
    assert all(isinstance(s, DatasetKeyStatus) and s.created.tzinfo is not None for s in statuses)
    assert "key" not in repr(statuses).replace("key_ids", "").replace("current_key_id", "")


def test_change_master_key(key_file: Path, store: SealedFileKeyStore) -> None:
    store.create_dataset_key("lung-ct")
    wrapped = store.wrap("lung-ct", data_key := generate_data_key())
    new_master = os.urandom(32)
    store.change_master_key(new_master)
    with pytest.raises(MasterKeyError):
        SealedFileKeyStore(key_file, MASTER)
    assert SealedFileKeyStore(key_file, new_master).unwrap("lung-ct", wrapped) == data_key


def test_invalid_inputs(store: SealedFileKeyStore, key_file: Path) -> None:
    with pytest.raises(MasterKeyError):
        SealedFileKeyStore(key_file, b"short")
    with pytest.raises(ValueError, match="invalid dataset name"):
        store.create_dataset_key("../etc")
    store.create_dataset_key("lung-ct")
    with pytest.raises(ValueError, match="32 bytes"):
        store.wrap("lung-ct", b"too short")
    with pytest.raises(KeyStoreError, match="does not exist"):
        SealedFileKeyStore(key_file.with_name("missing"), MASTER, create=False)


# ------------------------------------------------------------------------------------ master key


def test_master_key_from_environment_hex_and_base64() -> None:
    key = os.urandom(32)
    assert load_master_key(environ={MASTER_KEY_ENV: key.hex()}) == key
    assert load_master_key(environ={MASTER_KEY_ENV: base64.b64encode(key).decode()}) == key
    unpadded = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert load_master_key(environ={MASTER_KEY_ENV: unpadded}) == key
    assert load_master_key("OTHER_VAR", environ={"OTHER_VAR": f"  {key.hex()}\n"}) == key


def test_master_key_from_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(MASTER_KEY_ENV, key.hex())
    assert load_master_key() == key


@pytest.mark.parametrize("value", ["abc", "00" * 31, "zz" * 32, base64.b64encode(b"x" * 31).decode()])
def test_malformed_master_key_in_environment(value: str) -> None:
    with pytest.raises(MasterKeyError, match=f"{MASTER_KEY_ENV} does not hold a valid master key") as info:
        load_master_key(environ={MASTER_KEY_ENV: value})
    assert value not in str(info.value)


def test_master_key_from_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(0o600)
    assert load_master_key(file=path, environ={}) == key
    path.chmod(0o400)
    assert load_master_key(file=path, environ={}) == key
    # The environment variable wins when both are there.
    other = os.urandom(32)
    assert load_master_key(file=path, environ={MASTER_KEY_ENV: other.hex()}) == other


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_master_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    path.write_text(os.urandom(32).hex())
    path.chmod(mode)
    expected = rf"accessible by group or others \(mode {mode:04o}\).*chmod 600"
    with pytest.raises(MasterKeyError, match=expected):
        load_master_key(file=path, environ={})


def test_master_key_file_missing_or_malformed(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    with pytest.raises(MasterKeyError, match="does not exist"):
        load_master_key(file=path, environ={})
    assert not path.exists()
    with pytest.raises(MasterKeyError, match=f"set {MASTER_KEY_ENV}"):
        load_master_key(environ={})
    path.write_text("secret-but-not-a-key")
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match="does not hold a valid master key") as info:
        load_master_key(file=path, environ={})
    assert "secret-but-not-a-key" not in str(info.value)


def test_master_key_created_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "master.key"
    key = load_master_key(file=path, create_if_missing=True, environ={})
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert decode_master_key(path.read_text()) == key
    # Never regenerated: the same key comes back, and a store opened with it stays readable.
    assert load_master_key(file=path, create_if_missing=True, environ={}) == key
    SealedFileKeyStore(tmp_path / "ks", key).create_dataset_key("lung-ct")
    again = load_master_key(file=path, environ={})
    assert SealedFileKeyStore(tmp_path / "ks", again).status()[0].dataset == "lung-ct"


def _create_many(path: str, prefix: str) -> None:
    keystore = SealedFileKeyStore(Path(path), MASTER)
    for number in range(15):
        keystore.create_dataset_key(f"{prefix}-{number}")


def test_concurrent_processes_lose_no_update(key_file: Path, store: SealedFileKeyStore) -> None:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_create_many, args=(str(key_file), name)) for name in ("p", "q", "r")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(store.status()) == 45
