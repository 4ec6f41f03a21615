"""Study data keys and object encryption for one dataset: the one place that turns keys into bytes.

What it does: each study has one 256-bit data key, stored only wrapped by the dataset's
key-encryption key (KEK); each object is sealed with the streamed AES-256-GCM envelope, its
identity bound as associated data.

Data keys of studies that an ingest run meets for the first time are drawn by `run_keys`: the run
draws one fresh random 256-bit secret and each new study's key is HMAC-SHA256(secret, dataset,
study UID), a pseudo-random function of a random secret, so every key is as good as random and
independent of every other. The point is consistency without coordination: parallel ingest
workers that meet the same new study (each in its own process) derive the same key without
asking anyone, and the parent process wraps that key when it indexes the study. The secret is
held in memory for the run only and never written anywhere, so once the run is over a study key
exists only wrapped, and crypto-shredding (destroying or rotating the KEK) works as for any key.

What it must never do: write plaintext or an unwrapped key anywhere but into the caller's hands;
put key material into a message or a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connector.crypto.envelope import (
    DATA_KEY_SIZE,
    EnvelopeError,
    ObjectIdentity,
    decrypt_bytes,
    encrypt_bytes,
)
from connector.crypto.keystore import KeyStore, KeyStoreError, WrappedKey
from connector.datasets.models import StudyRecord

_RUN_KEY_DOMAIN = b"imaging-connector study data key v1\x00"


class ObjectIntegrityError(Exception):
    """A stored object failed authentication (tampered, truncated, swapped) or cannot be decrypted."""


def object_key_for(dataset: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"datasets/{dataset}/{study_uid}/{series_uid}/{sop_uid}.enc"


def study_key_id(dataset: str, study_uid: str) -> str:
    # The object header names the study key, not the KEK: rotation re-wraps without re-encrypting.
    return f"{dataset}/{study_uid}"


@dataclass(frozen=True)
class RunKeys:
    """The data keys one ingest run seals with, the same in every worker process of the run.

    `known` holds the unwrapped keys of the studies the dataset already had when the run began,
    `broken` why a stored key of one of them could not be unwrapped (sealing an object of that
    study fails, naming it, as it would have without the run); any other study's key is derived
    from the run's secret (see the module docstring).
    """

    dataset: str
    known: Mapping[str, bytes] = field(repr=False)
    _secret: bytes = field(repr=False)
    broken: Mapping[str, str] = field(default_factory=dict)

    def is_new(self, study_uid: str) -> bool:
        """True for a study the dataset did not have when the run began (its key is not stored yet)."""
        return study_uid not in self.known and study_uid not in self.broken

    def data_key(self, study_uid: str) -> bytes:
        known = self.known.get(study_uid)
        if known is not None:
            return known
        if study_uid in self.broken:
            raise ObjectIntegrityError(self.broken[study_uid])
        message = _RUN_KEY_DOMAIN + self.dataset.encode() + b"\x00" + study_uid.encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def seal(self, plaintext: bytes, study_uid: str, object_key: str) -> bytes:
        identity = ObjectIdentity(self.dataset, study_uid, object_key)
        key_id = study_key_id(self.dataset, study_uid)
        return encrypt_bytes(plaintext, self.data_key(study_uid), identity, key_id)


@dataclass
class DatasetVault:
    dataset: str
    keys: KeyStore
    sessions: sessionmaker[Session]

    def run_keys(self) -> RunKeys:
        """Keys for one ingest run: every stored study key unwrapped, and a fresh run secret."""
        with self.sessions() as session:
            rows = list(
                session.execute(select(StudyRecord).where(StudyRecord.dataset == self.dataset)).scalars()
            )
        known: dict[str, bytes] = {}
        broken: dict[str, str] = {}
        for row in rows:
            try:
                known[row.study_uid] = self._unwrap(row)
            except ObjectIntegrityError as exc:
                broken[row.study_uid] = str(exc)
        return RunKeys(self.dataset, known, secrets.token_bytes(DATA_KEY_SIZE), broken)

    def add_studies(
        self, session: Session, run: RunKeys, studies: Mapping[str, tuple[str, Mapping[str, str]]]
    ) -> None:
        """Store new studies with their run-derived keys, wrapped, in the caller's transaction.

        `studies` maps a study UID to its patient pseudonym and cohort attributes. The caller
        adds each study once, in the same transaction as (or before) the first index row of an
        object sealed with its key, so no indexed object is ever without its wrapped key.
        """
        for study_uid, (pseudonym, attributes) in studies.items():
            wrapped = self.keys.wrap(self.dataset, run.data_key(study_uid))
            session.add(
                StudyRecord(
                    dataset=self.dataset,
                    study_uid=study_uid,
                    patient_pseudonym=pseudonym,
                    wrapped_key=json.dumps(wrapped.to_dict()),
                    key_id=wrapped.key_id,
                    **attributes,
                )
            )

    def _unwrap(self, row: StudyRecord) -> bytes:
        try:
            return self.keys.unwrap(self.dataset, WrappedKey.from_dict(json.loads(row.wrapped_key)))
        except (KeyStoreError, ValueError) as exc:
            raise ObjectIntegrityError(
                f"the data key of study {row.study_uid} cannot be unwrapped: {exc}"
            ) from None

    def study_key(self, study_uid: str) -> bytes:
        """The unwrapped data key of one study (ObjectIntegrityError when it is gone or unusable)."""
        with self.sessions() as session:
            row = session.execute(
                select(StudyRecord).where(
                    StudyRecord.dataset == self.dataset, StudyRecord.study_uid == study_uid
                )
            ).scalar_one_or_none()
        if row is None:
            raise ObjectIntegrityError(f"study {study_uid}: its key is gone (shredded)")
        return self._unwrap(row)

    def decrypt(
        self,
        ciphertext: bytes,
        data_key: bytes,
        study_uid: str,
        object_key: str,
        expected_sha256: str | None = None,
    ) -> bytes:
        """The plaintext of a stored object under its study's key, or ObjectIntegrityError naming it."""
        try:
            plaintext = decrypt_bytes(
                ciphertext, data_key, ObjectIdentity(self.dataset, study_uid, object_key)
            )
        except EnvelopeError as exc:
            raise ObjectIntegrityError(f"object {object_key} failed verification: {exc}") from None
        if expected_sha256 and hashlib.sha256(plaintext).hexdigest() != expected_sha256:
            raise ObjectIntegrityError(f"object {object_key} decrypts to other bytes than were stored")
        return plaintext

    def open(
        self, ciphertext: bytes, study_uid: str, object_key: str, expected_sha256: str | None = None
    ) -> bytes:
        """The plaintext of a stored object, or ObjectIntegrityError naming the object."""
        try:
            data_key = self.study_key(study_uid)
        except ObjectIntegrityError:
            raise ObjectIntegrityError(f"object {object_key}: its study key is gone (shredded)") from None
        return self.decrypt(ciphertext, data_key, study_uid, object_key, expected_sha256)
