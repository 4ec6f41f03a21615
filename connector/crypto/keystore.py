"""Key-encryption keys (KEKs) per dataset, behind one interface: the embedded sealed key file now,
a KMS or HSM (PKCS#11, cloud KMS) later without touching callers.

What it does
------------
Each dataset has one or more KEK versions; the newest is *current*. A study's data key (see
`connector.crypto.envelope`) is stored only wrapped by the current KEK, as a `WrappedKey` (the
KEK's key id plus the wrapped bytes). `rotate` adds a new KEK version; old versions stay to unwrap
existing wrapped keys until `rewrap` has moved them to the current version (no object is
re-encrypted), after which `retire` can remove an old version. `destroy` deletes every KEK of a
dataset (crypto-shredding): its data keys, and with them its objects, can never be recovered.

Callers depend on the `KeyStore` protocol only. The embedded `SealedFileKeyStore` keeps all KEKs
in one file, which as a whole is a single AES-256-GCM sealed JSON document under a 256-bit master
key (`load_master_key`: environment variable or a 0600 file). The file is replaced atomically
(temporary file, fsync, rename, mode 0600) under an advisory lock, so several connector processes
can share it. Opening with a wrong master key or a damaged file fails at once with a clear error
and never writes anything.

Wrapping: AES-256-GCM, not AES-KW. The wrapped key is ``nonce (12 random bytes) | GCM(KEK, data
key, associated data = dataset and key id)``. GCM takes associated data, so a wrapped key is
explicitly bound to its dataset and KEK version even for a backend where several datasets share
one KEK (a KMS/HSM key with an encryption context); AES-KW (RFC 3394) has no associated data.
Random nonces are safe here: one wrap per study per KEK version is far below GCM's 2**32 limit.

Crypto-shredding caveat: `destroy` rewrites the key file without the dataset's KEKs, but copies
of older key files (backups, snapshots, unrotated filesystem blocks) still hold them sealed under
the master key; shredding is complete only once those copies are gone or the master key is
changed (`change_master_key`) and old copies are destroyed with the old master key.

What it must never do
---------------------
* Never log key material or put it (master key, KEK, data key) into an exception message.
* Never overwrite a key file it could not open (wrong master key, damage): that would destroy
  every dataset's keys; a person must look at it.
* Never hand out a KEK: callers get wrap/unwrap only, as a KMS/HSM would offer.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector.atomic_files import write_atomically
from connector.crypto.dataset_secrets import validate_dataset_name
from connector.crypto.keyfile import KeyFileError, write_private_file

MASTER_KEY_ENV = "CONNECTOR_MASTER_KEY"
KEY_SIZE = 32
_NONCE_SIZE = 12

_FILE_MAGIC = b"ICKS"
_FILE_VERSION = 1
_KCV_SIZE = 16
_KCV_LABEL = b"imaging-connector key store master key check v1"
_FILE_HEADER_SIZE = len(_FILE_MAGIC) + 1 + _KCV_SIZE + _NONCE_SIZE
_WRAP_DOMAIN = b"ICWRAP1"
_KEY_ID = re.compile(r"^(?P<dataset>[a-z0-9][a-z0-9._-]{0,63})/v(?P<version>[1-9][0-9]{0,8})$")

T = TypeVar("T")


class KeyStoreError(Exception):
    """Base class of key store errors; messages name files, datasets and key ids, never keys."""


class MasterKeyError(KeyStoreError):
    """The master key is missing, malformed, badly protected, or does not open the key store."""


class KeyStoreCorruptError(KeyStoreError):
    """The key store file is damaged or tampered with; it was left untouched."""


class UnknownKeyError(KeyStoreError):
    """No such dataset or key version (never created, or retired)."""


class KeyDestroyedError(KeyStoreError):
    """The dataset's keys were destroyed (crypto-shredded); its data cannot be decrypted anymore."""


class UnwrapError(KeyStoreError):
    """A wrapped key does not authenticate: it belongs to another dataset or is damaged."""


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by a KEK: safe to store beside the data (in the database, object metadata)."""

    key_id: str
    ciphertext: bytes

    def to_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "ciphertext": base64.b64encode(self.ciphertext).decode("ascii")}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> WrappedKey:
        try:
            return cls(str(data["key_id"]), base64.b64decode(data["ciphertext"], validate=True))
        except (KeyError, binascii.Error, TypeError) as exc:
            raise ValueError("not a wrapped key record") from exc


@dataclass(frozen=True)
class DatasetKeyStatus:
    """Public facts about a dataset's KEKs (no key material)."""

    dataset: str
    current_key_id: str | None
    key_ids: tuple[str, ...]
    created: datetime
    destroyed: datetime | None = None


@runtime_checkable
class KeyStore(Protocol):
    """What callers may do with dataset KEKs; implemented by the sealed file and, later, a KMS/HSM."""

    def create_dataset_key(self, dataset: str) -> str:
        """Create the dataset's first KEK; returns its key id (the current one if it already exists)."""
        ...

    def wrap(self, dataset: str, data_key: bytes) -> WrappedKey:
        """Wrap a data key with the dataset's current KEK."""
        ...

    def unwrap(self, dataset: str, wrapped: WrappedKey) -> bytes:
        """The data key inside `wrapped`, using whichever KEK version wrapped it."""
        ...

    def rotate(self, dataset: str) -> str:
        """Add a new current KEK version; older versions still unwrap. Returns the new key id."""
        ...

    def rewrap(self, dataset: str, wrapped: WrappedKey) -> WrappedKey:
        """Re-wrap a data key under the current KEK version (the data itself is untouched)."""
        ...

    def retire(self, dataset: str, key_id: str) -> None:
        """Remove an old KEK version once nothing wrapped under it remains (never the current one)."""
        ...

    def destroy(self, dataset: str) -> None:
        """Crypto-shredding: remove every KEK of the dataset for good."""
        ...

    def status(self) -> list[DatasetKeyStatus]:
        """Each dataset with its key ids and dates, including destroyed ones."""
        ...


# --------------------------------------------------------------------------------------- master key


def decode_master_key(text: str | bytes) -> bytes:
    """A 32-byte master key from 64 hex digits or base64 (standard or URL-safe, padding optional)."""
    value = text.decode("ascii", errors="replace") if isinstance(text, bytes) else text
    value = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return bytes.fromhex(value)
    if re.fullmatch(r"[A-Za-z0-9+/_-]{43}={0,1}", value):
        normalized = value.replace("-", "+").replace("_", "/").rstrip("=") + "="
        try:
            key = base64.b64decode(normalized, validate=True)
        except binascii.Error:
            key = b""
        if len(key) == KEY_SIZE:
            return key
    raise MasterKeyError("master key must be 32 bytes written as 64 hex digits or base64")


def encode_master_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def load_master_key(
    env_var: str = MASTER_KEY_ENV,
    file: Path | None = None,
    *,
    create_if_missing: bool = False,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The master key from the environment variable `env_var` if set, else from `file`.

    The file must belong to the current user and be readable by it alone (0600 or 0400); a
    group- or world-accessible file is refused. Only with `create_if_missing=True` is a new random
    key written to a missing `file` (mode 0600, never replacing an existing file).
    """
    env = os.environ if environ is None else environ
    value = env.get(env_var, "")
    if value.strip():
        try:
            return decode_master_key(value)
        except MasterKeyError:
            raise MasterKeyError(
                f"environment variable {env_var} does not hold a valid master key "
                "(32 bytes as 64 hex digits or base64)"
            ) from None
    if file is None:
        raise MasterKeyError(f"no master key: set {env_var} or configure a master key file")
    if not file.exists():
        if not create_if_missing:
            raise MasterKeyError(
                f"no master key: {env_var} is not set and the master key file {file} does not exist"
            )
        with contextlib.suppress(KeyFileError):  # another process created it first: use theirs
            write_private_file(file, (encode_master_key(secrets.token_bytes(KEY_SIZE)) + "\n").encode())
    info = file.stat()
    if not stat.S_ISREG(info.st_mode):
        raise MasterKeyError(f"master key file {file} is not a regular file")
    if info.st_mode & 0o077:
        raise MasterKeyError(
            f"master key file {file} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {file}"
        )
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise MasterKeyError(f"master key file {file} is not owned by the user running the connector")
    try:
        return decode_master_key(file.read_bytes())
    except MasterKeyError:
        raise MasterKeyError(
            f"master key file {file} does not hold a valid master key (32 bytes as 64 hex digits or base64)"
        ) from None


# ---------------------------------------------------------------------------------- sealed key file


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _key_id(dataset: str, version: int) -> str:
    return f"{dataset}/v{version}"


def _wrap_aad(dataset: str, key_id: str) -> bytes:
    parts = [_WRAP_DOMAIN]
    for value in (dataset, key_id):
        raw = value.encode("utf-8")
        parts += [len(raw).to_bytes(4, "big"), raw]
    return b"".join(parts)


def _check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, bytes | bytearray) or len(data_key) != KEY_SIZE:
        raise ValueError(f"data key must be {KEY_SIZE} bytes")


class SealedFileKeyStore:
    """The embedded `KeyStore`: every KEK in one file sealed with AES-256-GCM under the master key.

    File layout: ``b"ICKS" | version (1) | key check value (16) | nonce (12) | GCM(master key, JSON)``,
    the first 33 bytes authenticated as associated data. The key check value, an HMAC of a fixed
    label under the master key, tells a wrong master key apart from a damaged file.
    """

    def __init__(self, path: Path, master_key: bytes, *, create: bool = True) -> None:
        if not isinstance(master_key, bytes | bytearray) or len(master_key) != KEY_SIZE:
            raise MasterKeyError(f"master key must be {KEY_SIZE} bytes")
        self.path = Path(path)
        self._master = bytes(master_key)
        self._mutex = threading.RLock()
        self._state: dict[str, Any] = {}
        self._signature: tuple[int, int, int] | None = None
        with self._locked():
            if self.path.exists():
                self._load()
            elif create:
                self._state = {"format": 1, "datasets": {}, "destroyed": {}}
                self._save()
            else:
                raise KeyStoreError(f"key store file {self.path} does not exist")

    # ---------------------------------------------------------------- signing keys

    def signing_seed(self, name: str = "connector") -> bytes:
        """The 32-byte Ed25519 seed of a signing key kept in this store, generated on first use.

        The connector's own key pair (audit checkpoints, agreements, results) lives here, sealed
        by the same master key as the KEKs, rather than in a file of its own.
        """
        with self._mutex:
            self._refresh()
            stored = self._state.get("signing", {}).get(name)
        if stored is None:

            def change(state: dict[str, Any]) -> str:
                keys = state.setdefault("signing", {})
                return keys.setdefault(name, base64.b64encode(os.urandom(KEY_SIZE)).decode("ascii"))

            stored = self._mutate(change)
        return base64.b64decode(stored)

    # ---------------------------------------------------------------- KeyStore

    def create_dataset_key(self, dataset: str) -> str:
        validate_dataset_name(dataset)

        def change(state: dict[str, Any]) -> str:
            self._refuse_destroyed(state, dataset)
            entry = state["datasets"].get(dataset)
            if entry is not None:
                return _key_id(dataset, entry["current"])
            state["datasets"][dataset] = {"current": 1, "versions": {"1": self._new_version()}}
            return _key_id(dataset, 1)

        return self._mutate(change)

    def wrap(self, dataset: str, data_key: bytes) -> WrappedKey:
        _check_data_key(data_key)
        with self._mutex:
            self._refresh()
            entry = self._entry(self._state, dataset)
            key_id = _key_id(dataset, entry["current"])
            kek = self._kek(entry, str(entry["current"]))
        nonce = secrets.token_bytes(_NONCE_SIZE)
        sealed = AESGCM(kek).encrypt(nonce, bytes(data_key), _wrap_aad(dataset, key_id))
        return WrappedKey(key_id, nonce + sealed)

    def unwrap(self, dataset: str, wrapped: WrappedKey) -> bytes:
        version = self._version_of(dataset, wrapped.key_id)
        with self._mutex:
            self._refresh()
            entry = self._entry(self._state, dataset)
            if version not in entry["versions"]:
                raise UnknownKeyError(f"key {wrapped.key_id} of dataset {dataset} is unknown or was retired")
            kek = self._kek(entry, version)
        blob = wrapped.ciphertext
        try:
            if len(blob) < _NONCE_SIZE + 16:
                raise InvalidTag
            data_key = AESGCM(kek).decrypt(
                blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], _wrap_aad(dataset, wrapped.key_id)
            )
        except InvalidTag:
            raise UnwrapError(
                f"wrapped key under {wrapped.key_id} does not authenticate for dataset {dataset}: "
                "it belongs to another dataset or is damaged"
            ) from None
        if len(data_key) != KEY_SIZE:
            raise UnwrapError(f"wrapped key under {wrapped.key_id} does not hold a {KEY_SIZE}-byte data key")
        return data_key

    def rotate(self, dataset: str) -> str:
        def change(state: dict[str, Any]) -> str:
            entry = self._entry(state, dataset)
            version = max(int(v) for v in entry["versions"]) + 1
            entry["versions"][str(version)] = self._new_version()
            entry["current"] = version
            return _key_id(dataset, version)

        return self._mutate(change)

    def rewrap(self, dataset: str, wrapped: WrappedKey) -> WrappedKey:
        data_key = self.unwrap(dataset, wrapped)
        with self._mutex:
            self._refresh()
            current = _key_id(dataset, self._entry(self._state, dataset)["current"])
        if wrapped.key_id == current:
            return wrapped
        return self.wrap(dataset, data_key)

    def retire(self, dataset: str, key_id: str) -> None:
        version = self._version_of(dataset, key_id)

        def change(state: dict[str, Any]) -> None:
            entry = self._entry(state, dataset)
            if str(entry["current"]) == version:
                raise KeyStoreError(f"key {key_id} is the current key of dataset {dataset}; rotate first")
            if entry["versions"].pop(version, None) is None:
                raise UnknownKeyError(f"key {key_id} of dataset {dataset} is unknown or was retired")

        self._mutate(change)

    def destroy(self, dataset: str) -> None:
        validate_dataset_name(dataset)

        def change(state: dict[str, Any]) -> None:
            if dataset in state["destroyed"]:
                return
            if state["datasets"].pop(dataset, None) is None:
                raise UnknownKeyError(f"dataset {dataset} has no keys in {self.path}")
            state["destroyed"][dataset] = _now()

        self._mutate(change)

    def status(self) -> list[DatasetKeyStatus]:
        with self._mutex:
            self._refresh()
            state = self._state
        result = []
        for dataset, entry in state["datasets"].items():
            versions = sorted(int(v) for v in entry["versions"])
            created = min(entry["versions"][str(v)]["created"] for v in versions)
            result.append(
                DatasetKeyStatus(
                    dataset,
                    _key_id(dataset, entry["current"]),
                    tuple(_key_id(dataset, v) for v in versions),
                    datetime.fromisoformat(created),
                )
            )
        for dataset, when in state["destroyed"].items():
            moment = datetime.fromisoformat(when)
            result.append(DatasetKeyStatus(dataset, None, (), moment, destroyed=moment))
        return sorted(result, key=lambda item: item.dataset)

    # ---------------------------------------------------------------- administration

    def change_master_key(self, new_master_key: bytes) -> None:
        """Re-seal the key file under a new master key (the KEKs themselves do not change)."""
        if not isinstance(new_master_key, bytes | bytearray) or len(new_master_key) != KEY_SIZE:
            raise MasterKeyError(f"master key must be {KEY_SIZE} bytes")
        with self._locked():
            self._load()
            self._master = bytes(new_master_key)
            self._save()

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _new_version() -> dict[str, str]:
        return {"key": base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii"), "created": _now()}

    @staticmethod
    def _kek(entry: dict[str, Any], version: str) -> bytes:
        return base64.b64decode(entry["versions"][version]["key"])

    @staticmethod
    def _version_of(dataset: str, key_id: str) -> str:
        validate_dataset_name(dataset)
        match = _KEY_ID.match(key_id)
        if not match or match["dataset"] != dataset:
            raise UnknownKeyError(f"key id {key_id[:100]!r} does not belong to dataset {dataset}")
        return match["version"]

    def _entry(self, state: dict[str, Any], dataset: str) -> dict[str, Any]:
        validate_dataset_name(dataset)
        self._refuse_destroyed(state, dataset)
        entry = state["datasets"].get(dataset)
        if entry is None:
            raise UnknownKeyError(f"dataset {dataset} has no keys (create_dataset_key first)")
        return entry

    @staticmethod
    def _refuse_destroyed(state: dict[str, Any], dataset: str) -> None:
        when = state["destroyed"].get(dataset)
        if when is not None:
            raise KeyDestroyedError(
                f"the keys of dataset {dataset} were destroyed at {when} (crypto-shredded); "
                "its data can no longer be decrypted and the name cannot be reused"
            )

    def _mutate(self, change: Callable[[dict[str, Any]], T]) -> T:
        with self._locked():
            self._load()
            state = copy.deepcopy(self._state)
            result = change(state)
            self._state = state
            self._save()
            return result

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's mutex plus an advisory lock shared with other processes on the same file."""
        with self._mutex:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock_path = self.path.with_name(f".{self.path.name}.lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _stat_signature(self) -> tuple[int, int, int]:
        info = self.path.stat()
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def _refresh(self) -> None:
        """Reload if another process (or instance) replaced the file since it was last read."""
        try:
            signature = self._stat_signature()
        except FileNotFoundError:
            raise KeyStoreError(f"key store file {self.path} disappeared") from None
        if signature != self._signature:
            self._load()

    def _kcv(self) -> bytes:
        return hmac.new(self._master, _KCV_LABEL, hashlib.sha256).digest()[:_KCV_SIZE]

    def _load(self) -> None:
        try:
            signature = self._stat_signature()
            blob = self.path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"key store file {self.path} disappeared") from None
        damaged = f"key store file {self.path} is damaged or was tampered with; restore it from backup"
        if len(blob) < _FILE_HEADER_SIZE + 16 or not blob.startswith(_FILE_MAGIC):
            raise KeyStoreCorruptError(damaged)
        version = blob[len(_FILE_MAGIC)]
        if version != _FILE_VERSION:
            raise KeyStoreCorruptError(
                f"key store file {self.path} has format version {version}, not {_FILE_VERSION}"
            )
        kcv_start = len(_FILE_MAGIC) + 1
        if not hmac.compare_digest(blob[kcv_start : kcv_start + _KCV_SIZE], self._kcv()):
            raise MasterKeyError(
                f"the master key does not open key store {self.path} (wrong master key, or the file's "
                "header is damaged); the file was left untouched"
            )
        nonce = blob[kcv_start + _KCV_SIZE : _FILE_HEADER_SIZE]
        try:
            plain = AESGCM(self._master).decrypt(nonce, blob[_FILE_HEADER_SIZE:], blob[:_FILE_HEADER_SIZE])
            state = json.loads(plain)
            if not (
                isinstance(state, dict)
                and state.get("format") == 1
                and isinstance(state.get("datasets"), dict)
                and isinstance(state.get("destroyed"), dict)
            ):
                raise ValueError("unexpected structure")
        except (InvalidTag, ValueError):
            raise KeyStoreCorruptError(damaged) from None
        self._state = state
        self._signature = signature

    def _save(self) -> None:
        plain = json.dumps(self._state, sort_keys=True, separators=(",", ":")).encode("utf-8")
        header = _FILE_MAGIC + bytes([_FILE_VERSION]) + self._kcv() + secrets.token_bytes(_NONCE_SIZE)
        blob = header + AESGCM(self._master).encrypt(header[-_NONCE_SIZE:], plain, header)
        write_atomically(self.path, blob, mode=0o600, sync_dir=True)
        self._signature = self._stat_signature()
