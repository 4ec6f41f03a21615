"""Study data keys and object encryption for one dataset: the one place that turns keys into bytes.

Each study has one random 256-bit data key, stored only wrapped by the dataset's key-encryption
key; each object is sealed with the streamed AES-256-GCM envelope, its identity bound as
associated data. This module never writes plaintext anywhere but into the caller's hands.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connector.crypto.envelope import (
    EnvelopeError,
    ObjectIdentity,
    decrypt_bytes,
    encrypt_bytes,
    generate_data_key,
)
from connector.crypto.keystore import KeyStore, KeyStoreError, WrappedKey
from connector.datasets.models import StudyRecord


class ObjectIntegrityError(Exception):
    """A stored object failed authentication (tampered, truncated, swapped) or cannot be decrypted."""


def object_key_for(dataset: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"datasets/{dataset}/{study_uid}/{series_uid}/{sop_uid}.enc"


@dataclass
class DatasetVault:
    dataset: str
    keys: KeyStore
    sessions: sessionmaker[Session]
    _cache: dict[str, bytes] = field(default_factory=dict, repr=False)

    def study_key(
        self, study_uid: str, patient_pseudonym: str, attributes: dict[str, str]
    ) -> tuple[bytes, str]:
        """The study's data key and key id, created (and its wrapped form stored) on first use."""
        if study_uid in self._cache:
            return self._cache[study_uid], self._key_id(study_uid)
        with self.sessions() as session, session.begin():
            row = session.execute(
                select(StudyRecord).where(
                    StudyRecord.dataset == self.dataset, StudyRecord.study_uid == study_uid
                )
            ).scalar_one_or_none()
            if row is None:
                data_key = generate_data_key()
                wrapped = self.keys.wrap(self.dataset, data_key)
                session.add(
                    StudyRecord(
                        dataset=self.dataset,
                        study_uid=study_uid,
                        patient_pseudonym=patient_pseudonym,
                        wrapped_key=json.dumps(wrapped.to_dict()),
                        key_id=wrapped.key_id,
                        **attributes,
                    )
                )
            else:
                data_key = self._unwrap(row)
        self._cache[study_uid] = data_key
        return data_key, self._key_id(study_uid)

    def _key_id(self, study_uid: str) -> str:
        # The object header names the study key, not the KEK: rotation re-wraps without re-encrypting.
        return f"{self.dataset}/{study_uid}"

    def _unwrap(self, row: StudyRecord) -> bytes:
        try:
            return self.keys.unwrap(self.dataset, WrappedKey.from_dict(json.loads(row.wrapped_key)))
        except (KeyStoreError, ValueError) as exc:
            raise ObjectIntegrityError(
                f"the data key of study {row.study_uid} cannot be unwrapped: {exc}"
            ) from None

    def seal(self, plaintext: bytes, study_uid: str, object_key: str, data_key: bytes) -> bytes:
        identity = ObjectIdentity(self.dataset, study_uid, object_key)
        return encrypt_bytes(plaintext, data_key, identity, self._key_id(study_uid))

    def open(
        self, ciphertext: bytes, study_uid: str, object_key: str, expected_sha256: str | None = None
    ) -> bytes:
        """The plaintext of a stored object, or ObjectIntegrityError naming the object."""
        with self.sessions() as session:
            row = session.execute(
                select(StudyRecord).where(
                    StudyRecord.dataset == self.dataset, StudyRecord.study_uid == study_uid
                )
            ).scalar_one_or_none()
        if row is None:
            raise ObjectIntegrityError(f"object {object_key}: its study key is gone (shredded)")
        data_key = self._unwrap(row)
        try:
            plaintext = decrypt_bytes(
                ciphertext, data_key, ObjectIdentity(self.dataset, study_uid, object_key)
            )
        except EnvelopeError as exc:
            raise ObjectIntegrityError(f"object {object_key} failed verification: {exc}") from None
        if expected_sha256 and hashlib.sha256(plaintext).hexdigest() != expected_sha256:
            raise ObjectIntegrityError(f"object {object_key} decrypts to other bytes than were stored")
        return plaintext
