"""EncryptedDataset-PULL between two real connectors: a provider hospital with a real encrypted
dataset (synthetic cohort, real ingest) and a consumer with its own data folder and key store.

The consumer gets the stored ciphertext unchanged and the study keys wrapped to its X25519 key;
anything wrong (recipient, context, bytes, manifest) is refused, named, and leaves nothing stored.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from connector.crypto.peer_wrap import (
    ALGORITHM,
    PeerWrapError,
    exchange_key,
    public_jwk,
    public_key_from_jwk,
    unwrap_with,
    wrap_for,
)
from connector.datasets.ingest import ingest
from connector.datasets.models import ObjectRecord, StudyRecord
from connector.datasets.vault import DatasetVault, ObjectIntegrityError
from connector.dataspace.encrypted_copy import (
    CopyExists,
    CopyFetchError,
    CopyVerificationError,
    ManifestError,
    UnknownCopy,
    UnknownDataset,
    UnknownObject,
    UnknownStudy,
    copy_manifest,
    import_copy,
    load_copy,
    open_copied,
    stored_object,
    study_key_context,
)
from connector.deid.options import DEFAULT_OPTIONS
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.storage.objects import LocalObjectStore
from connector.synth import generate_cohort
from tests.store_runtimes import runtime_on

DATASET = "copy-source"
OTHER = "copy-other"
TRANSFER = "urn:uuid:transfer-0001"
COPY = "hospital-a-copy"

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A hospital with two datasets ingested from one synthetic patient (5 studies each)."""
    folder = tmp_path_factory.mktemp("provider")
    generate_cohort(folder / "incoming", 1, seed=21, workers=1)
    built = build_runtime(load_settings(data_dir=folder / "data"))
    ingest(built, folder / "incoming", DATASET, DEFAULT_OPTIONS, workers=1)
    ingest(built, folder / "incoming", OTHER, DEFAULT_OPTIONS, workers=1)
    yield built
    built.close()


@pytest.fixture(params=["local", "s3"])
def consumer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    built = runtime_on(request, tmp_path, "copy")
    yield built
    built.close()


def studies_of(runtime: Runtime, dataset: str = DATASET) -> list[str]:
    with runtime.sessions() as session:
        return sorted(
            session.execute(select(StudyRecord.study_uid).where(StudyRecord.dataset == dataset)).scalars()
        )


def objects_of(runtime: Runtime, dataset: str = DATASET) -> list[ObjectRecord]:
    with runtime.sessions() as session:
        return list(
            session.execute(
                select(ObjectRecord).where(ObjectRecord.dataset == dataset).order_by(ObjectRecord.object_key)
            ).scalars()
        )


def offer(provider: Runtime, consumer: Runtime, studies: list[str] | None = None, **changes: Any) -> Manifest:
    """The provider's manifest for the consumer's key (the consumer publishes its public JWK)."""
    recipient = public_key_from_jwk(public_jwk(exchange_key(consumer.keys).public_key()))
    arguments: dict[str, Any] = {"transfer_id": TRANSFER, "recipient": recipient, **changes}
    return copy_manifest(provider, DATASET, studies or studies_of(provider), **arguments)


class Fetcher:
    """The provider's data plane as the consumer sees it, optionally altering what it sends."""

    def __init__(
        self, provider: Runtime, manifest: Manifest, alter: Callable[[str, bytes], bytes] | None = None
    ) -> None:
        self.provider = provider
        self.cohort = set(manifest["keys"])
        self.alter = alter
        self.calls: list[str] = []
        self.sent: list[bytes] = []

    def __call__(self, key: str) -> bytes:
        self.calls.append(key)
        data = stored_object(self.provider, DATASET, key, studies=self.cohort)
        if self.alter is not None:
            data = self.alter(key, data)
        self.sent.append(data)
        return data


def copy_keys(manifest: Manifest, name: str = COPY) -> list[str]:
    return [f"peer-copies/{name}/manifest.json"] + [
        f"peer-copies/{name}/objects/{item['key']}" for item in manifest["objects"]
    ]


def assert_nothing_stored(consumer: Runtime, manifest: Manifest, name: str = COPY) -> None:
    assert [key for key in copy_keys(manifest, name) if consumer.objects.exists(key)] == []
    if isinstance(consumer.objects, LocalObjectStore):
        files = [path for path in consumer.objects.root.rglob("*") if path.is_file()]
        assert files == []  # no staged leftovers either
    with pytest.raises(UnknownCopy):
        load_copy(consumer, name)


def flip(data: bytes, at: int) -> bytes:
    altered = bytearray(data)
    altered[at] ^= 0x01
    return bytes(altered)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------------------- round trip


def test_the_consumer_gets_the_stored_ciphertext_and_decrypts_what_the_provider_holds(
    provider: Runtime, consumer: Runtime
) -> None:
    manifest = offer(provider, consumer)
    records = objects_of(provider)
    assert manifest["version"] == 1 and manifest["dataset"] == DATASET and manifest["transfer"] == TRANSFER
    assert [item["key"] for item in manifest["objects"]] == [record.object_key for record in records]
    assert set(manifest["keys"]) == set(studies_of(provider)) and len(manifest["keys"]) == 5
    json.dumps(manifest)  # JSON-able as is

    fetch = Fetcher(provider, manifest)
    summary = import_copy(consumer, manifest, fetch, COPY)
    assert summary.objects == len(records) == len(fetch.calls)
    assert summary.studies == 5
    assert summary.bytes == sum(record.stored_size for record in records)

    vault = DatasetVault(DATASET, provider.keys, provider.sessions)
    for record in records:
        stored = provider.objects.get(record.object_key)
        # Kept unchanged: the consumer holds the provider's ciphertext, not a re-encryption.
        assert consumer.objects.get(f"peer-copies/{COPY}/objects/{record.object_key}") == stored
        expected = vault.open(stored, record.study_uid, record.object_key, record.plain_sha256)
        assert open_copied(consumer, COPY, record.object_key) == expected
    assert load_copy(consumer, COPY).to_json() == manifest


def test_only_the_consented_studies_are_offered_and_served(provider: Runtime, consumer: Runtime) -> None:
    studies = studies_of(provider)
    cohort = studies[:2]
    manifest = offer(provider, consumer, cohort)
    assert set(manifest["keys"]) == set(cohort)
    assert {item["study"] for item in manifest["objects"]} == set(cohort)
    outside = next(record for record in objects_of(provider) if record.study_uid not in cohort)
    with pytest.raises(UnknownObject, match="not an object of this transfer"):
        stored_object(provider, DATASET, outside.object_key, studies=cohort)
    import_copy(consumer, manifest, Fetcher(provider, manifest), COPY)
    with pytest.raises(UnknownObject, match="is not in the copy"):
        open_copied(consumer, COPY, outside.object_key)


def test_nothing_the_provider_sends_holds_plaintext_or_a_data_key(
    provider: Runtime, consumer: Runtime
) -> None:
    manifest = offer(provider, consumer)
    fetch = Fetcher(provider, manifest)
    import_copy(consumer, manifest, fetch, COPY)
    text = json.dumps(manifest)
    sent = [text.encode(), *fetch.sent]

    vault = DatasetVault(DATASET, provider.keys, provider.sessions)
    with provider.sessions() as session:
        pseudonyms = set(session.execute(select(StudyRecord.patient_pseudonym)).scalars())
    secrets: list[bytes] = []
    for study in studies_of(provider):
        key = vault.study_key(study)
        secrets += [key, base64.b64encode(key), b64url(key).encode(), key.hex().encode()]
    plain_digests = [record.plain_sha256.encode() for record in objects_of(provider)]
    for blob in sent:
        assert b"DICM" not in blob and b"1.2.840.10008" not in blob and b"ISO_IR" not in blob
        assert not any(pseudonym.encode() in blob for pseudonym in pseudonyms)
        assert not any(secret in blob for secret in secrets)
        assert not any(digest in blob for digest in plain_digests)
    for record in objects_of(provider):
        plaintext = vault.open(provider.objects.get(record.object_key), record.study_uid, record.object_key)
        window = plaintext[200:264]  # past the preamble: real DICOM content
        assert len(window) == 64 and not any(window in blob for blob in sent)
    # And the consumer stores the same bytes: the manifest's keys are still wrapped.
    stored = consumer.objects.get(f"peer-copies/{COPY}/manifest.json")
    assert not any(secret in stored for secret in secrets)


# ---------------------------------------------------------------------------------- refusals


def test_a_copy_for_another_key_is_refused(provider: Runtime, consumer: Runtime) -> None:
    stranger = X25519PrivateKey.generate()
    manifest = copy_manifest(provider, DATASET, studies_of(provider), stranger.public_key(), TRANSFER)
    fetch = Fetcher(provider, manifest)
    with pytest.raises(CopyVerificationError, match="wrapped for another connector's key"):
        import_copy(consumer, manifest, fetch, COPY)
    # A manifest that lies about its recipient still cannot be opened with the consumer's key.
    lying = copy.deepcopy(manifest)
    lying["recipient"] = public_jwk(exchange_key(consumer.keys).public_key())
    with pytest.raises(CopyVerificationError, match="cannot be unwrapped: the key was wrapped for another"):
        import_copy(consumer, lying, fetch, COPY)
    assert fetch.calls == []  # keys are checked before anything is fetched
    assert_nothing_stored(consumer, manifest)


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_a_tampered_object_is_named_and_nothing_is_kept(
    provider: Runtime, consumer: Runtime, position: str
) -> None:
    manifest = offer(provider, consumer)
    keys = [item["key"] for item in manifest["objects"]]
    target = {"first": keys[0], "middle": keys[len(keys) // 2], "last": keys[-1]}[position]
    fetch = Fetcher(
        provider, manifest, lambda key, data: flip(data, len(data) - 20) if key == target else data
    )
    with pytest.raises(CopyVerificationError, match=f"object {target}: its SHA-256 differs"):
        import_copy(consumer, manifest, fetch, COPY)
    assert fetch.calls[-1] == target
    assert_nothing_stored(consumer, manifest)


def test_authenticated_decryption_catches_what_a_consistent_manifest_hides(
    provider: Runtime, consumer: Runtime
) -> None:
    """A provider (or path) that alters bytes *and* the manifest's digests still fails: the bytes
    must authenticate under the study key and the object's identity."""
    manifest = offer(provider, consumer)
    items = manifest["objects"]
    largest = max(manifest["keys"], key=lambda study: sum(item["study"] == study for item in items))
    index = next(i for i, item in enumerate(items) if item["study"] == largest)
    victim, donor = items[index], items[index + 1]
    assert donor["study"] == victim["study"]
    cases: dict[str, Callable[[bytes], bytes]] = {
        "bit flip": lambda data: flip(data, len(data) - 20),
        "truncated": lambda data: data[:-16],
        # Another object of the same study, under the same key: the identity binding refuses it.
        "swapped": lambda data: provider.objects.get(donor["key"]),
    }
    for case, alter in cases.items():
        altered = alter(provider.objects.get(victim["key"]))
        forged = copy.deepcopy(manifest)
        entry = forged["objects"][index]
        entry["size"], entry["sha256"] = len(altered), hashlib.sha256(altered).hexdigest()
        fetch = Fetcher(
            provider, forged, lambda key, data, bad=altered: bad if key == victim["key"] else data
        )
        with pytest.raises(
            CopyVerificationError, match=f"object {victim['key']} failed verification"
        ) as caught:
            import_copy(consumer, forged, fetch, COPY)
        assert "authentication" in str(caught.value) or "truncated" in str(caught.value), case
        assert_nothing_stored(consumer, manifest)


def test_a_tampered_or_moved_wrapped_key_is_refused(provider: Runtime, consumer: Runtime) -> None:
    manifest = offer(provider, consumer)
    first, second = sorted(manifest["keys"])[:2]

    def tampered(field: str) -> Manifest:
        forged = copy.deepcopy(manifest)
        wrapped = forged["keys"][first]
        wrapped[field] = b64url(flip(unb64url(wrapped[field]), 5))
        return forged

    swapped = copy.deepcopy(manifest)
    swapped["keys"][first], swapped["keys"][second] = manifest["keys"][second], manifest["keys"][first]
    cases = {
        "ct": (tampered("ct"), "does not authenticate"),
        "iv": (tampered("iv"), "does not authenticate"),
        "epk": (tampered("epk"), "does not authenticate"),
        "rcpt": (tampered("rcpt"), "wrapped for another recipient key"),
        "swapped": (swapped, "does not authenticate"),
    }
    for case, (forged, reason) in cases.items():
        fetch = Fetcher(provider, forged)
        with pytest.raises(
            CopyVerificationError, match=f"study {first}: its key cannot be unwrapped"
        ) as caught:
            import_copy(consumer, forged, fetch, COPY)
        assert reason in str(caught.value), case
        assert fetch.calls == [], case
        assert_nothing_stored(consumer, manifest)


def test_keys_wrapped_for_another_transfer_or_dataset_are_refused(
    provider: Runtime, consumer: Runtime
) -> None:
    manifest = offer(provider, consumer)
    other_transfer = copy.deepcopy(manifest)
    other_transfer["transfer"] = "urn:uuid:transfer-0002"
    other_dataset = copy.deepcopy(manifest)
    other_dataset["dataset"] = OTHER
    for forged in (other_transfer, other_dataset):
        with pytest.raises(CopyVerificationError, match="another context"):
            import_copy(consumer, forged, Fetcher(provider, forged), COPY)
        assert_nothing_stored(consumer, manifest)
    # The context is length-prefixed: moving characters between its parts changes it.
    assert study_key_context("t1", "ab", "c") != study_key_context("t1", "a", "bc")


def test_a_failing_fetch_is_named_and_nothing_is_kept(provider: Runtime, consumer: Runtime) -> None:
    manifest = offer(provider, consumer)
    target = manifest["objects"][-1]["key"]

    def broken(key: str, data: bytes) -> bytes:
        if key == target:
            raise ConnectionError("connection reset by peer")
        return data

    with pytest.raises(CopyFetchError, match=f"object {target}: fetching failed: connection reset"):
        import_copy(consumer, manifest, Fetcher(provider, manifest, broken), COPY)
    assert_nothing_stored(consumer, manifest)


def test_an_existing_copy_is_never_overwritten(provider: Runtime, consumer: Runtime) -> None:
    manifest = offer(provider, consumer, studies_of(provider)[:1])
    import_copy(consumer, manifest, Fetcher(provider, manifest), COPY)
    again = offer(provider, consumer, studies_of(provider)[1:2])
    fetch = Fetcher(provider, again)
    with pytest.raises(CopyExists, match=COPY):
        import_copy(consumer, again, fetch, COPY)
    assert fetch.calls == []
    assert load_copy(consumer, COPY).to_json() == manifest
    for item in manifest["objects"]:
        assert open_copied(consumer, COPY, item["key"])
    with pytest.raises(ValueError, match="invalid copy name"):
        import_copy(consumer, again, fetch, "../escape")


def test_only_indexed_objects_of_the_dataset_are_served(provider: Runtime) -> None:
    [own, *_] = objects_of(provider)
    [foreign, *_] = objects_of(provider, OTHER)
    assert stored_object(provider, DATASET, own.object_key) == provider.objects.get(own.object_key)
    for key in (
        foreign.object_key,  # stored, but of another dataset
        "../keys/keystore.sealed",
        f"datasets/{DATASET}/../{OTHER}/x.enc",
        own.object_key + "/../x",
        f"datasets/{DATASET}/nothing.enc",
        "",
    ):
        with pytest.raises(UnknownObject, match="not an object of this transfer"):
            stored_object(provider, DATASET, key)
    with pytest.raises(UnknownDataset):
        copy_manifest(
            provider, "no-such-dataset", ["1.2"], X25519PrivateKey.generate().public_key(), TRANSFER
        )
    with pytest.raises(UnknownStudy, match="not studies of dataset copy-source"):
        copy_manifest(
            provider,
            DATASET,
            studies_of(provider, OTHER)[:1],
            X25519PrivateKey.generate().public_key(),
            TRANSFER,
        )
    with pytest.raises(ValueError, match="at least one study"):
        copy_manifest(provider, DATASET, [], X25519PrivateKey.generate().public_key(), TRANSFER)


MALFORMED: dict[str, tuple[Callable[[Manifest], object], str]] = {
    "not an object": (lambda m: [m], "must be a JSON object"),
    "version 2": (lambda m: {**m, "version": 2}, "version 2 is not 1"),
    "version true": (lambda m: {**m, "version": True}, "version True is not 1"),
    "no objects": (lambda m: {k: v for k, v in m.items() if k != "objects"}, "lacks objects"),
    "extra field": (lambda m: {**m, "plaintext": "x"}, "unexpected fields 'plaintext'"),
    "bad dataset": (lambda m: {**m, "dataset": "../etc"}, "not a valid dataset name"),
    "empty transfer": (lambda m: {**m, "transfer": ""}, "transfer id must be a string"),
    "private recipient": (lambda m: {**m, "recipient": {**m["recipient"], "d": "AAAA"}}, "private key"),
    "recipient not X25519": (lambda m: {**m, "recipient": {"kty": "RSA"}}, "not an X25519 key"),
    "objects not a list": (lambda m: {**m, "objects": {}}, "objects must be a list"),
    "path escape": (
        lambda m: _object(m, key="datasets/../../keys/keystore.sealed"),
        "not a valid object key",
    ),
    "absolute key": (lambda m: _object(m, key="/etc/passwd"), "not a valid object key"),
    "negative size": (lambda m: _object(m, size=-1), r"objects\[0\].size must be a non-negative"),
    "string size": (lambda m: _object(m, size="12"), r"objects\[0\].size must be a non-negative"),
    "bad digest": (lambda m: _object(m, sha256="ABC"), r"objects\[0\].sha256 must be 64"),
    "object field missing": (lambda m: _object(m, drop="study"), r"objects\[0\] lacks study"),
    "duplicate object": (lambda m: {**m, "objects": [m["objects"][0]] * 2}, "listed twice"),
    "study without key": (lambda m: {**m, "keys": dict(list(m["keys"].items())[1:])}, "no key for study"),
    "key without object": (lambda m: {**m, "objects": m["objects"][:1]}, "which has no object"),
    "wrapped key not an object": (
        lambda m: {**m, "keys": dict.fromkeys(m["keys"], "secret")},
        "must be a wrapped key",
    ),
}


def _object(manifest: Manifest, drop: str | None = None, **changes: object) -> Manifest:
    forged = copy.deepcopy(manifest)
    forged["objects"][0].update(changes)
    if drop:
        del forged["objects"][0][drop]
    return forged


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_refused_before_anything_is_fetched(
    provider: Runtime, consumer: Runtime, case: str
) -> None:
    manifest = offer(provider, consumer, studies_of(provider)[:2])
    change, message = MALFORMED[case]
    fetch = Fetcher(provider, manifest)
    with pytest.raises(ManifestError, match=message):
        import_copy(consumer, change(copy.deepcopy(manifest)), fetch, COPY)  # type: ignore[arg-type]
    assert fetch.calls == []
    assert_nothing_stored(consumer, manifest)


# ---------------------------------------------------------------------------------- keys


def test_the_exchange_key_survives_restarts_and_the_copy_stays_readable(
    provider: Runtime, tmp_path: Path
) -> None:
    settings = load_settings(data_dir=tmp_path / "consumer")
    first = build_runtime(settings)
    public = public_jwk(exchange_key(first.keys).public_key())
    manifest = offer(provider, first, studies_of(provider)[:1])
    import_copy(first, manifest, Fetcher(provider, manifest), COPY)
    first.close()

    again = build_runtime(settings)
    try:
        assert public_jwk(exchange_key(again.keys).public_key()) == public
        item = manifest["objects"][0]
        assert hashlib.sha256(open_copied(again, COPY, item["key"])).hexdigest() == next(
            record.plain_sha256 for record in objects_of(provider) if record.object_key == item["key"]
        )
    finally:
        again.close()
    # Another connector has another key; the provider's own is not the consumer's either.
    assert public_jwk(exchange_key(provider.keys).public_key()) != public


def test_a_damaged_stored_copy_is_refused_when_opened(provider: Runtime, tmp_path: Path) -> None:
    consumer = build_runtime(load_settings(data_dir=tmp_path / "consumer"))
    try:
        manifest = offer(provider, consumer, studies_of(provider)[:1])
        import_copy(consumer, manifest, Fetcher(provider, manifest), COPY)
        key = manifest["objects"][0]["key"]
        stored_key = f"peer-copies/{COPY}/objects/{key}"
        consumer.objects.put(stored_key, flip(consumer.objects.get(stored_key), 40))
        with pytest.raises(ObjectIntegrityError, match=f"object {key}: its SHA-256 differs"):
            open_copied(consumer, COPY, key)
        with pytest.raises(UnknownCopy):
            open_copied(consumer, "no-such-copy", key)
    finally:
        consumer.close()


def test_peer_wrap_round_trip_and_refusals() -> None:
    recipient = X25519PrivateKey.generate()
    data_key = bytes(range(32))
    context = study_key_context(TRANSFER, DATASET, "1.2.3")
    wrapped = wrap_for(recipient.public_key(), data_key, context)
    assert set(wrapped) == {"alg", "rcpt", "epk", "iv", "ct"} and wrapped["alg"] == ALGORITHM
    assert unwrap_with(recipient, wrapped, context) == data_key
    # A fresh ephemeral key per wrap: wrapping twice gives unrelated output.
    again = wrap_for(recipient.public_key(), data_key, context)
    assert again["epk"] != wrapped["epk"] and again["ct"] != wrapped["ct"]

    def refused(key: X25519PrivateKey, blob: object, ctx: bytes = context) -> str:
        with pytest.raises(PeerWrapError) as caught:
            unwrap_with(key, blob, ctx)  # type: ignore[arg-type]
        message = str(caught.value)
        assert b64url(data_key) not in message and data_key.hex() not in message
        return message

    assert "another recipient key" in refused(X25519PrivateKey.generate(), wrapped)
    assert "another context" in refused(recipient, wrapped, study_key_context(TRANSFER, DATASET, "1.2.4"))
    assert "another context" in refused(
        recipient, {**wrapped, "ct": b64url(flip(unb64url(wrapped["ct"]), 0))}
    )
    assert "missing ct" in refused(recipient, {k: v for k, v in wrapped.items() if k != "ct"})
    assert "unexpected fields 'd'" in refused(recipient, {**wrapped, "d": "x"})
    assert "not base64url" in refused(recipient, {**wrapped, "iv": "a+b/"})
    assert "iv must be 12 bytes" in refused(recipient, {**wrapped, "iv": b64url(b"short")})
    assert "not ECDH-ES" in refused(recipient, {**wrapped, "alg": "RSA-OAEP"})
    assert "not a JSON object" in refused(recipient, "wrapped")
    # A low-order point as ephemeral key (all zeros) gives no shared secret: refused, not used.
    assert "epk is not a usable" in refused(recipient, {**wrapped, "epk": b64url(bytes(32))})


def test_public_jwk_round_trip_and_refusals() -> None:
    key = X25519PrivateKey.generate().public_key()
    jwk = public_jwk(key)
    assert set(jwk) == {"kty", "crv", "x"} and jwk["kty"] == "OKP" and jwk["crv"] == "X25519"
    assert public_jwk(public_key_from_jwk(jwk)) == jwk
    cases: list[tuple[object, str]] = [
        ({**jwk, "d": "secret"}, "holds a private key"),
        ({**jwk, "crv": "Ed25519"}, "not an X25519 key"),
        ({"kty": "EC", "crv": "P-256", "x": jwk["x"]}, "not an X25519 key"),
        ({**jwk, "x": jwk["x"][:-4]}, "x must be 32 bytes"),
        ({**jwk, "x": "not base64!"}, "x is not base64url"),
        ({"kty": "OKP", "crv": "X25519"}, "x is not base64url"),
        ("a string", "must be a JWK object"),
    ]
    for value, message in cases:
        with pytest.raises(ValueError, match=message):
            public_key_from_jwk(value)  # type: ignore[arg-type]


def test_the_provider_offers_no_object_that_fails_verification(provider: Runtime) -> None:
    record = objects_of(provider)[-1]
    recipient = X25519PrivateKey.generate().public_key()
    path = Path(provider.settings.effective_objects_dir) / record.object_key
    original = path.read_bytes()
    path.write_bytes(flip(original, len(original) - 20))
    try:
        with pytest.raises(ObjectIntegrityError, match=f"object {record.object_key} failed verification"):
            copy_manifest(provider, DATASET, [record.study_uid], recipient, TRANSFER)
    finally:
        path.write_bytes(original)
    assert copy_manifest(provider, DATASET, [record.study_uid], recipient, TRANSFER)["objects"]
