"""EncryptedDataset-PULL: a peer connector copies a dataset's objects as stored, still encrypted.

What it does
------------
Provider side. `copy_manifest` describes a copy of the studies a transfer may hand out (the
caller passes the consented cohort: only those studies are in it): every object's key, study,
stored size and the SHA-256 of its stored ciphertext, plus each study's data key, unwrapped from
the dataset's KEK in memory and at once re-wrapped to the consumer's X25519 public key
(`connector.crypto.peer_wrap`) for the context (transfer id, dataset, study UID). The data plane
then serves `stored_object`: the stored ciphertext of one object of that dataset, unchanged.

Manifest (version 1), JSON::

    {"version": 1, "dataset": "<provider dataset>", "transfer": "<transfer id>",
     "recipient": {"kty": "OKP", "crv": "X25519", "x": "<consumer public key>"},
     "objects": [{"key": "<provider object key>", "study": "<study UID>",
                  "size": <stored bytes>, "sha256": "<hex SHA-256 of the stored ciphertext>"}, ...],
     "keys": {"<study UID>": <peer_wrap.wrap_for output>, ...}}

``sha256`` is the digest of the *stored ciphertext*, not the index's ``plain_sha256``: the manifest
travels and is kept by the consumer, and a plaintext digest would let whoever sees it confirm a
guessed file; the ciphertext digest reveals nothing, commits the provider to exactly the bytes it
serves, and lets the consumer reject damaged or substituted bytes before using a key. To offer
only sound objects, `copy_manifest` reads every object of the copy once and verifies it
(authenticated decryption in memory, then the index's plaintext digest) before listing it; that
read is the cost of a manifest (the index has no ciphertext digest).

Consumer side. `import_copy` validates the manifest's shape (`ManifestError`, a ValueError),
checks it is addressed to this connector's key, unwraps every study key in memory, then fetches
each object and verifies it: size and ciphertext digest as the manifest says, then authenticated
decryption in memory under ObjectIdentity(provider dataset, study, provider key), the plaintext
dropped at once. A verified object is staged, unchanged, for ``peer-copies/{copy}/objects/{key}``
in the consumer's own object store. Only once every object verified are they published, and the
manifest (its keys still wrapped to this connector's key) is written *last*, to
``peer-copies/{copy}/manifest.json``. On any failure the error names the object or study, every
object this import staged or published is discarded/deleted and no manifest is written; a crash
in between can leave objects without a manifest, which no reader sees (`open_copied` and
`load_copy` need the manifest) and a later import under the same name replaces. `open_copied`
gives one copied object's plaintext, in memory, for this connector's own compute.

What it must never do
---------------------
* Never write plaintext anywhere, nor an unwrapped data key: plaintext exists only in memory,
  for verification (dropped) or for the caller of `open_copied`.
* Never log keys or put key material into a message; messages name datasets, studies, objects.
* Never serve or store by a path the index does not hold: `stored_object` serves only keys of the
  dataset's ObjectRecord rows; `import_copy` stores only validated keys under the copy's folder.
* Never keep part of a failed import visible: no manifest unless every object verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from sqlalchemy import select

from connector.crypto.dataset_secrets import validate_dataset_name
from connector.crypto.envelope import DATA_KEY_SIZE, EnvelopeError, ObjectIdentity, decrypt_bytes
from connector.crypto.peer_wrap import (
    PeerWrapError,
    exchange_key,
    public_jwk,
    public_key_from_jwk,
    unwrap_with,
    wrap_for,
)
from connector.datasets.export import UnknownDataset
from connector.datasets.models import DatasetRecord, ObjectRecord, StudyRecord
from connector.datasets.vault import DatasetVault, ObjectIntegrityError
from connector.runtime import Runtime
from connector.storage.objects import ObjectStoreError, Staged, validate_key

MANIFEST_VERSION = 1
COPIES_PREFIX = "peer-copies"
MAX_TRANSFER_ID = 256
MAX_STUDY_UID = 64
MAX_OBJECT_KEY = 400

_CONTEXT_LABEL = b"imaging-connector encrypted copy study key v1\x00"
_COPY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP_FIELDS = {"version", "dataset", "transfer", "recipient", "objects", "keys"}
_OBJECT_FIELDS = {"key", "study", "size", "sha256"}

__all__ = [
    "CopiedObject",
    "CopyExists",
    "CopyFetchError",
    "CopyManifest",
    "CopyVerificationError",
    "ImportSummary",
    "ManifestError",
    "UnknownCopy",
    "UnknownDataset",
    "UnknownObject",
    "UnknownStudy",
    "copy_manifest",
    "import_copy",
    "load_copy",
    "open_copied",
    "parse_manifest",
    "stored_object",
    "study_key_context",
]


class ManifestError(ValueError):
    """A copy manifest is malformed; the message names the field."""


class UnknownStudy(LookupError):
    """A study asked for is not a study of the dataset."""


class UnknownObject(LookupError):
    """An object key is not an object of the dataset (or of the copy, or of the allowed studies)."""


class UnknownCopy(LookupError):
    """No complete copy of that name (never imported, or its import did not finish)."""


class CopyExists(Exception):
    """A complete copy of that name exists already; it is never overwritten."""


class CopyFetchError(Exception):
    """Fetching an object from the provider failed; the message names the object."""


class CopyVerificationError(ObjectIntegrityError):
    """A key or object of a copy does not verify (wrong recipient or context, damaged, substituted)."""


@dataclass(frozen=True)
class ImportSummary:
    objects: int
    bytes: int  # ciphertext bytes stored
    studies: int


@dataclass(frozen=True)
class CopiedObject:
    key: str  # the provider's object key (bound into the envelope's identity)
    study: str
    size: int  # bytes of the stored ciphertext
    sha256: str  # hex SHA-256 of the stored ciphertext


@dataclass(frozen=True)
class CopyManifest:
    """A validated manifest; its keys are wrapped (safe to keep), so a repr holds no secret."""

    dataset: str
    transfer: str
    recipient: dict[str, str]
    objects: tuple[CopiedObject, ...]
    keys: dict[str, dict[str, str]] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "dataset": self.dataset,
            "transfer": self.transfer,
            "recipient": dict(self.recipient),
            "objects": [
                {"key": item.key, "study": item.study, "size": item.size, "sha256": item.sha256}
                for item in self.objects
            ],
            "keys": {study: dict(wrapped) for study, wrapped in self.keys.items()},
        }

    def object(self, key: str) -> CopiedObject:
        for item in self.objects:
            if item.key == key:
                return item
        raise UnknownObject(f"object {_short(key)} is not in the copy of dataset {self.dataset}")


def study_key_context(transfer_id: str, dataset: str, study_uid: str) -> bytes:
    """What a study key is wrapped for: label, then transfer id, dataset, study UID, each length-prefixed."""
    parts = [_CONTEXT_LABEL]
    for value in (transfer_id, dataset, study_uid):
        raw = value.encode("utf-8")
        parts.append(len(raw).to_bytes(4, "big"))
        parts.append(raw)
    return b"".join(parts)


# ---------------------------------------------------------------------------------- provider side


def copy_manifest(
    runtime: Runtime,
    dataset: str,
    study_uids: Iterable[str],
    recipient: X25519PublicKey,
    transfer_id: str,
) -> dict[str, Any]:
    """The manifest of a copy of `study_uids` of `dataset` for `recipient` (see the module docstring).

    UnknownDataset, UnknownStudy for a study not of the dataset, ValueError for an empty cohort or
    transfer id, ObjectIntegrityError naming a stored object or study key that does not verify.
    """
    if not isinstance(recipient, X25519PublicKey):
        raise TypeError("recipient must be an X25519PublicKey")
    _check_transfer(transfer_id, ValueError)
    wanted = sorted(set(study_uids))
    if not wanted:
        raise ValueError("a copy needs at least one study")
    with runtime.sessions() as session:
        if session.get(DatasetRecord, dataset) is None:
            raise UnknownDataset(f"no dataset {dataset!r}")
        known = set(
            session.execute(
                select(StudyRecord.study_uid).where(
                    StudyRecord.dataset == dataset, StudyRecord.study_uid.in_(wanted)
                )
            ).scalars()
        )
        missing = [uid for uid in wanted if uid not in known]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise UnknownStudy(
                f"not studies of dataset {dataset}: {', '.join(_short(uid) for uid in missing[:3])}{more}"
            )
        records = list(
            session.execute(
                select(ObjectRecord)
                .where(ObjectRecord.dataset == dataset, ObjectRecord.study_uid.in_(wanted))
                .order_by(ObjectRecord.object_key)
            ).scalars()
        )
    vault = DatasetVault(dataset, runtime.keys, runtime.sessions)
    data_keys: dict[str, bytes] = {}
    entries: list[dict[str, Any]] = []
    try:
        for record in records:
            study = record.study_uid
            if study not in data_keys:
                data_keys[study] = vault.study_key(study)
            ciphertext = _get(runtime, record.object_key)
            # Offer only sound objects: verify in memory, drop the plaintext at once.
            vault.decrypt(ciphertext, data_keys[study], study, record.object_key, record.plain_sha256)
            entries.append(
                {
                    "key": record.object_key,
                    "study": study,
                    "size": len(ciphertext),
                    "sha256": hashlib.sha256(ciphertext).hexdigest(),
                }
            )
        wrapped = {
            study: wrap_for(recipient, data_key, study_key_context(transfer_id, dataset, study))
            for study, data_key in sorted(data_keys.items())
        }
    finally:
        data_keys.clear()
    return {
        "version": MANIFEST_VERSION,
        "dataset": dataset,
        "transfer": transfer_id,
        "recipient": public_jwk(recipient),
        "objects": entries,
        "keys": wrapped,
    }


def stored_object(
    runtime: Runtime, dataset: str, object_key: str, *, studies: Collection[str] | None = None
) -> bytes:
    """The stored ciphertext of one object of `dataset`, unchanged.

    UnknownObject (a LookupError) unless `object_key` is an object of the dataset in its index,
    and, when `studies` is given (the transfer's cohort), of one of those studies.
    """
    if not isinstance(object_key, str):
        raise UnknownObject("an object key must be a string")
    with runtime.sessions() as session:
        study = session.execute(
            select(ObjectRecord.study_uid).where(
                ObjectRecord.dataset == dataset, ObjectRecord.object_key == object_key
            )
        ).scalar_one_or_none()
    if study is None or (studies is not None and study not in studies):
        raise UnknownObject(f"{_short(object_key)} is not an object of this transfer of dataset {dataset!r}")
    return _get(runtime, object_key)


# ---------------------------------------------------------------------------------- consumer side


def parse_manifest(manifest: object) -> CopyManifest:
    """A manifest's validated content, or ManifestError naming what is wrong."""
    if not isinstance(manifest, Mapping):
        raise ManifestError("the manifest must be a JSON object")
    _only(manifest, _TOP_FIELDS, "the manifest")
    version = manifest.get("version")
    if type(version) is not int or version != MANIFEST_VERSION:
        raise ManifestError(f"manifest version {_short(version)} is not {MANIFEST_VERSION}")
    dataset = manifest.get("dataset")
    try:
        if not isinstance(dataset, str):
            raise ValueError("not a string")
        validate_dataset_name(dataset)
    except ValueError:
        raise ManifestError(f"manifest dataset {_short(dataset)} is not a valid dataset name") from None
    transfer = _check_transfer(manifest.get("transfer"), ManifestError)
    recipient = manifest.get("recipient")
    try:
        public_key_from_jwk(recipient)
    except ValueError as exc:
        raise ManifestError(f"manifest recipient: {exc}") from None
    assert isinstance(recipient, Mapping)
    objects = manifest.get("objects")
    if not isinstance(objects, list):
        raise ManifestError("manifest objects must be a list")
    parsed: list[CopiedObject] = []
    seen: set[str] = set()
    for index, item in enumerate(objects):
        parsed.append(_parse_object(item, f"objects[{index}]"))
        if parsed[-1].key in seen:
            raise ManifestError(f"objects[{index}]: object {_short(parsed[-1].key)} is listed twice")
        seen.add(parsed[-1].key)
    keys = manifest.get("keys")
    if not isinstance(keys, Mapping):
        raise ManifestError("manifest keys must be an object of study UID to wrapped key")
    for study, wrapped in keys.items():
        if not isinstance(study, str):
            raise ManifestError(f"keys: {_short(study)} is not a study UID")
        if not isinstance(wrapped, Mapping) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in wrapped.items()
        ):
            raise ManifestError(f"keys[{_short(study)}] must be a wrapped key (an object of strings)")
    studies = {item.study for item in parsed}
    without_key = sorted(studies - set(keys))
    if without_key:
        raise ManifestError(f"manifest has no key for study {_short(without_key[0])}")
    unused = sorted(str(study) for study in set(keys) - studies)
    if unused:
        raise ManifestError(f"manifest has a key for study {_short(unused[0])}, which has no object")
    return CopyManifest(
        dataset=dataset,
        transfer=transfer,
        recipient={str(name): str(value) for name, value in recipient.items()},
        objects=tuple(parsed),
        keys={str(study): dict(wrapped) for study, wrapped in keys.items()},
    )


def import_copy(
    runtime: Runtime, manifest: Mapping[str, Any], fetch: Callable[[str], bytes], copy_name: str
) -> ImportSummary:
    """Fetch, verify and store a provider's encrypted copy (see the module docstring).

    ManifestError for a malformed manifest, CopyExists, CopyVerificationError or CopyFetchError
    naming the study or object; on any failure nothing of the copy is left visible.
    """
    name = _check_copy_name(copy_name)
    parsed = parse_manifest(manifest)
    store = runtime.objects
    manifest_key = _manifest_key(name)
    if store.exists(manifest_key):
        raise CopyExists(f"a copy named {name} exists already; choose another name")
    data_keys = _unwrap_keys(runtime, parsed, parsed.keys)
    staged: list[Staged] = []
    stored_bytes = 0
    try:
        for item in parsed.objects:
            try:
                ciphertext = fetch(item.key)
            except Exception as exc:
                raise CopyFetchError(f"object {item.key}: fetching failed: {exc}") from exc
            if not isinstance(ciphertext, bytes):
                raise CopyFetchError(
                    f"object {item.key}: fetching gave {type(ciphertext).__name__}, not bytes"
                )
            _verify(parsed, item, ciphertext, data_keys[item.study])
            staged.append(store.stage(_object_key(name, item.key), ciphertext))
            stored_bytes += len(ciphertext)
        store.publish(staged)
        document = json.dumps(parsed.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8")
        store.put(manifest_key, document)  # last: the copy exists only once this is written
    except BaseException:
        for done in staged:
            with contextlib.suppress(Exception):
                store.discard(done)
            with contextlib.suppress(Exception):
                store.delete(done.key)
        raise
    finally:
        data_keys.clear()
    return ImportSummary(objects=len(parsed.objects), bytes=stored_bytes, studies=len(parsed.keys))


def load_copy(runtime: Runtime, copy_name: str) -> CopyManifest:
    """The manifest of a complete copy (UnknownCopy when there is none of that name)."""
    name = _check_copy_name(copy_name)
    try:
        raw = runtime.objects.get(_manifest_key(name))
    except ObjectStoreError:
        raise UnknownCopy(f"no complete copy named {name}") from None
    try:
        document = json.loads(raw)
    except ValueError:
        raise ManifestError(f"the stored manifest of copy {name} is not JSON (damaged)") from None
    return parse_manifest(document)


def open_copied(runtime: Runtime, copy_name: str, object_key: str) -> bytes:
    """The plaintext of one copied object, in memory only (for this connector's own compute).

    UnknownCopy, UnknownObject, or CopyVerificationError naming the object.
    """
    copy = load_copy(runtime, copy_name)
    item = copy.object(object_key)
    data_key = _unwrap_keys(runtime, copy, {item.study: copy.keys[item.study]})[item.study]
    try:
        ciphertext = runtime.objects.get(_object_key(_check_copy_name(copy_name), item.key))
    except ObjectStoreError as exc:
        raise ObjectStoreError(f"copied object {item.key}: {exc}") from None
    return _verify(copy, item, ciphertext, data_key)


# ---------------------------------------------------------------------------------- internals


def _verify(copy: CopyManifest, item: CopiedObject, ciphertext: bytes, data_key: bytes) -> bytes:
    """The plaintext of a fetched or stored object once size, digest and authentication all hold."""
    if len(ciphertext) != item.size:
        raise CopyVerificationError(
            f"object {item.key}: {len(ciphertext)} bytes, the manifest says {item.size} "
            "(damaged or substituted)"
        )
    if hashlib.sha256(ciphertext).hexdigest() != item.sha256:
        raise CopyVerificationError(
            f"object {item.key}: its SHA-256 differs from the manifest's (damaged or substituted)"
        )
    try:
        return decrypt_bytes(ciphertext, data_key, ObjectIdentity(copy.dataset, item.study, item.key))
    except EnvelopeError as exc:
        raise CopyVerificationError(f"object {item.key} failed verification: {exc}") from None


def _unwrap_keys(
    runtime: Runtime, copy: CopyManifest, wrapped: Mapping[str, Mapping[str, str]]
) -> dict[str, bytes]:
    private = exchange_key(runtime.keys)
    own = public_jwk(private.public_key())
    if copy.recipient.get("x") != own["x"]:
        raise CopyVerificationError(
            f"the copy's study keys are wrapped for another connector's key "
            f"(x {copy.recipient.get('x')!s:.12}…), not this connector's (x {own['x']:.12}…)"
        )
    keys: dict[str, bytes] = {}
    for study, blob in wrapped.items():
        try:
            data_key = unwrap_with(private, blob, study_key_context(copy.transfer, copy.dataset, study))
        except PeerWrapError as exc:
            keys.clear()
            raise CopyVerificationError(f"study {study}: its key cannot be unwrapped: {exc}") from None
        if len(data_key) != DATA_KEY_SIZE:
            keys.clear()
            raise CopyVerificationError(f"study {study}: its wrapped key is not a {DATA_KEY_SIZE}-byte key")
        keys[study] = data_key
    return keys


def _parse_object(item: object, where: str) -> CopiedObject:
    if not isinstance(item, Mapping):
        raise ManifestError(f"{where} must be an object")
    _only(item, _OBJECT_FIELDS, where)
    key, study, size, digest = (item.get(name) for name in ("key", "study", "size", "sha256"))
    if not isinstance(key, str) or not key or len(key) > MAX_OBJECT_KEY:
        raise ManifestError(f"{where}.key must be an object key of 1 to {MAX_OBJECT_KEY} characters")
    try:
        validate_key(key)
    except ObjectStoreError:
        raise ManifestError(f"{where}.key {_short(key)} is not a valid object key") from None
    if not isinstance(study, str) or not study or len(study) > MAX_STUDY_UID:
        raise ManifestError(f"{where}.study must be a study UID of 1 to {MAX_STUDY_UID} characters")
    if type(size) is not int or size < 0:
        raise ManifestError(f"{where}.size must be a non-negative integer")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ManifestError(f"{where}.sha256 must be 64 lower-case hex digits")
    return CopiedObject(key, study, size, digest)


def _only(mapping: Mapping[Any, Any], allowed: set[str], where: str) -> None:
    missing = sorted(allowed - set(mapping))
    if missing:
        raise ManifestError(f"{where} lacks {', '.join(missing)}")
    extra = sorted(str(name) for name in set(mapping) - allowed)
    if extra:
        raise ManifestError(f"{where} has unexpected fields {', '.join(_short(n) for n in extra[:3])}")


def _check_transfer(transfer_id: object, error: type[Exception]) -> str:
    if not isinstance(transfer_id, str) or not transfer_id or len(transfer_id) > MAX_TRANSFER_ID:
        raise error(f"a transfer id must be a string of 1 to {MAX_TRANSFER_ID} characters")
    return transfer_id


def _check_copy_name(copy_name: str) -> str:
    if not isinstance(copy_name, str) or not _COPY_NAME.match(copy_name):
        raise ValueError(
            f"invalid copy name {_short(copy_name)}: use 1-64 lower-case letters, digits, '.', '_' or '-'"
        )
    return copy_name


def _manifest_key(copy_name: str) -> str:
    return f"{COPIES_PREFIX}/{copy_name}/manifest.json"


def _object_key(copy_name: str, object_key: str) -> str:
    return validate_key(f"{COPIES_PREFIX}/{copy_name}/objects/{object_key}")


def _get(runtime: Runtime, key: str) -> bytes:
    try:
        return runtime.objects.get(key)
    except ObjectStoreError as exc:
        raise ObjectStoreError(f"object {key}: {exc}") from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
