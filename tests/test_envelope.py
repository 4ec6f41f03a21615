"""Streamed envelope encryption: round trips, every tamper case, format errors, bounded memory.

Real AES-256-GCM throughout; small chunk sizes keep the tamper cases fast, the default 1 MiB chunk
is exercised by the size round trips and the 64 MiB streaming test.
"""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from pathlib import Path

import pytest

from connector.crypto import envelope
from connector.crypto.envelope import (
    DEFAULT_CHUNK_SIZE,
    TAG_SIZE,
    IntegrityError,
    ObjectIdentity,
    UnsupportedFormat,
    decrypt_bytes,
    decrypt_stream,
    decrypt_to_path,
    encrypt_bytes,
    encrypt_stream,
    encrypted_size,
    generate_data_key,
    header_size,
    read_header,
)

KEY = generate_data_key()
IDENTITY = ObjectIdentity("lung-ct", "study-1", "series-1/image-0001.dcm")
KEY_ID = "lung-ct/study-1"
SMALL = 64  # chunk size for the tamper cases


def _chunks(blob: bytes, chunk_size: int = SMALL) -> tuple[bytes, list[bytes]]:
    """Split an encrypted object into its header and sealed chunks."""
    start = header_size(KEY_ID)
    step = chunk_size + TAG_SIZE
    return blob[:start], [blob[i : i + step] for i in range(start, len(blob), step)]


def _sample(size: int) -> bytes:
    return os.urandom(size)


@pytest.mark.parametrize(
    "size",
    [0, 1, DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1, 3 * DEFAULT_CHUNK_SIZE + 17],
)
def test_round_trip_default_chunks(size: int) -> None:
    plaintext = _sample(size)
    blob = encrypt_bytes(plaintext, KEY, IDENTITY, KEY_ID)
    assert len(blob) == encrypted_size(size, KEY_ID)
    # A single random byte appears in any ciphertext by chance; a 16-byte run never does.
    assert plaintext[:64] not in blob or size < 16
    assert decrypt_bytes(blob, KEY, IDENTITY) == plaintext


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 5 * SMALL + 3])
def test_round_trip_small_chunks_and_sizes(size: int) -> None:
    plaintext = _sample(size)
    reader, out = io.BytesIO(plaintext), io.BytesIO()
    written = encrypt_stream(reader, out, KEY, IDENTITY, KEY_ID, chunk_size=SMALL)
    assert written == len(out.getvalue()) == encrypted_size(size, KEY_ID, SMALL)
    back = io.BytesIO()
    assert decrypt_stream(io.BytesIO(out.getvalue()), back, KEY, IDENTITY) == size
    assert back.getvalue() == plaintext


def test_empty_object_is_one_final_empty_chunk() -> None:
    blob = encrypt_bytes(b"", KEY, IDENTITY, KEY_ID, chunk_size=SMALL)
    _, chunks = _chunks(blob)
    assert [len(c) for c in chunks] == [TAG_SIZE]


def test_header_is_versioned_and_names_the_key() -> None:
    blob = encrypt_bytes(b"x", KEY, IDENTITY, KEY_ID, chunk_size=SMALL)
    assert blob.startswith(b"ICENC\x01\x01")
    header, raw = read_header(io.BytesIO(blob))
    assert (header.version, header.algorithm, header.key_id, header.chunk_size) == (1, 1, KEY_ID, SMALL)
    assert raw == blob[: header_size(KEY_ID)]


def test_same_plaintext_encrypts_differently() -> None:
    assert encrypt_bytes(b"same", KEY, IDENTITY, KEY_ID) != encrypt_bytes(b"same", KEY, IDENTITY, KEY_ID)


def test_key_resolver_receives_the_header_key_id() -> None:
    seen: list[str] = []

    def resolve(key_id: str) -> bytes:
        seen.append(key_id)
        return KEY

    blob = encrypt_bytes(b"payload", KEY, IDENTITY, KEY_ID)
    assert decrypt_bytes(blob, resolve, IDENTITY) == b"payload"
    assert seen == [KEY_ID]


def test_short_reads_from_the_source_do_not_change_chunking() -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            piece, self.data = self.data[: min(size, 7)], self.data[min(size, 7) :]
            return piece

    plaintext = _sample(10 * SMALL)
    out = io.BytesIO()
    encrypt_stream(Trickle(plaintext), out, KEY, IDENTITY, KEY_ID, chunk_size=SMALL)
    assert decrypt_bytes(out.getvalue(), KEY, IDENTITY) == plaintext
    assert len(out.getvalue()) == encrypted_size(len(plaintext), KEY_ID, SMALL)


def test_identity_encoding_is_unambiguous() -> None:
    assert ObjectIdentity("a", "bc", "d").canonical() != ObjectIdentity("ab", "c", "d").canonical()
    assert ObjectIdentity("a", "b", "cd").canonical() != ObjectIdentity("a", "bc", "d").canonical()
    with pytest.raises(TypeError):
        ObjectIdentity("a", "b", 3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ tamper cases

PLAIN = bytes(range(256)) * 2  # 512 bytes = 8 full chunks of 64
BLOB = encrypt_bytes(PLAIN, KEY, IDENTITY, KEY_ID, chunk_size=SMALL)
HEADER, CHUNKS = _chunks(BLOB)


def _rejects(blob: bytes, key: bytes = KEY, identity: ObjectIdentity = IDENTITY) -> str:
    with pytest.raises(IntegrityError) as info:
        decrypt_bytes(blob, key, identity)
    return str(info.value)


def test_wrong_key() -> None:
    message = _rejects(BLOB, key=generate_data_key())
    assert "wrong data key" in message


@pytest.mark.parametrize(
    "other",
    [
        ObjectIdentity("other-ds", "study-1", "series-1/image-0001.dcm"),
        ObjectIdentity("lung-ct", "study-2", "series-1/image-0001.dcm"),
        ObjectIdentity("lung-ct", "study-1", "series-1/image-0002.dcm"),
    ],
)
def test_object_moved_to_another_identity(other: ObjectIdentity) -> None:
    _rejects(BLOB, identity=other)


def test_swapping_whole_objects_between_keys_is_detected() -> None:
    other = encrypt_bytes(PLAIN, KEY, ObjectIdentity("lung-ct", "study-1", "x"), KEY_ID, chunk_size=SMALL)
    _rejects(other)


def test_chunk_from_another_object_with_same_key_and_identity() -> None:
    # Same key, same identity, same plaintext: only the random nonce prefix differs.
    _, other_chunks = _chunks(encrypt_bytes(PLAIN, KEY, IDENTITY, KEY_ID, chunk_size=SMALL))
    message = _rejects(HEADER + b"".join([*CHUNKS[:3], other_chunks[3], *CHUNKS[4:]]))
    assert "chunk 3" in message


def test_reordered_chunks() -> None:
    swapped = [*CHUNKS[:2], CHUNKS[3], CHUNKS[2], *CHUNKS[4:]]
    assert "chunk 2" in _rejects(HEADER + b"".join(swapped))


def test_dropped_chunk() -> None:
    _rejects(HEADER + b"".join(CHUNKS[:4] + CHUNKS[5:]))


def test_duplicated_chunk() -> None:
    _rejects(HEADER + b"".join([*CHUNKS[:4], CHUNKS[3], *CHUNKS[4:]]))


@pytest.mark.parametrize("keep", range(1, 8))
def test_truncated_at_a_chunk_boundary(keep: int) -> None:
    message = _rejects(HEADER + b"".join(CHUNKS[:keep]))
    assert "truncated" in message


@pytest.mark.parametrize("cut", [1, TAG_SIZE, SMALL, SMALL + TAG_SIZE + 5])
def test_truncated_inside_a_chunk(cut: int) -> None:
    _rejects(BLOB[:-cut])


def test_truncated_to_the_header_or_less() -> None:
    assert "truncated" in _rejects(HEADER)
    assert "truncated" in _rejects(HEADER[:-1])
    assert "truncated" in _rejects(b"")


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 3, None])
def test_appended_bytes(extra: bytes | None) -> None:
    appended = CHUNKS[-1] if extra is None else extra  # a whole valid chunk repeated, or junk
    assert "after its final chunk" in _rejects(BLOB + appended)


def test_extension_of_an_empty_object() -> None:
    empty = encrypt_bytes(b"", KEY, IDENTITY, KEY_ID, chunk_size=SMALL)
    _rejects(empty + b"x" * (SMALL + TAG_SIZE))


@pytest.mark.parametrize("position", range(len(HEADER)))
def test_every_header_byte_is_authenticated(position: int) -> None:
    tampered = bytearray(BLOB)
    tampered[position] ^= 0x01
    # Version and algorithm bytes say "unknown format"; everything else fails authentication.
    expected = UnsupportedFormat if position in (5, 6) else IntegrityError
    with pytest.raises(expected):
        decrypt_bytes(bytes(tampered), KEY, IDENTITY)


@pytest.mark.parametrize("position", [0, TAG_SIZE, SMALL + TAG_SIZE - 1])
def test_flipped_ciphertext_or_tag_bit(position: int) -> None:
    tampered = bytearray(BLOB)
    tampered[len(HEADER) + 2 * (SMALL + TAG_SIZE) + position] ^= 0x80
    assert "chunk 2" in _rejects(bytes(tampered))


def test_unknown_version_and_algorithm() -> None:
    with pytest.raises(UnsupportedFormat, match="format version 2"):
        decrypt_bytes(BLOB[:5] + b"\x02" + BLOB[6:], KEY, IDENTITY)
    with pytest.raises(UnsupportedFormat, match="algorithm id 9"):
        decrypt_bytes(BLOB[:6] + b"\x09" + BLOB[7:], KEY, IDENTITY)
    with pytest.raises(IntegrityError, match="not an encrypted object"):
        decrypt_bytes(b"PK\x03\x04" + BLOB[4:], KEY, IDENTITY)


def test_errors_do_not_carry_key_material() -> None:
    for blob in (BLOB[:-1], BLOB + b"x", HEADER):
        message = _rejects(blob)
        assert KEY.hex() not in message and repr(KEY) not in message
    with pytest.raises(ValueError) as info:
        encrypt_bytes(b"x", KEY[:16], IDENTITY, KEY_ID)
    assert KEY[:16].hex() not in str(info.value)


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        encrypt_bytes(b"x", KEY, IDENTITY, KEY_ID, chunk_size=0)
    with pytest.raises(ValueError):
        encrypt_bytes(b"x", KEY, IDENTITY, "")
    with pytest.raises(ValueError):
        encrypt_bytes(b"x", KEY, IDENTITY, "k" * 256)
    with pytest.raises(TypeError):
        encrypt_bytes(b"x", KEY, ("a", "b", "c"), KEY_ID)  # type: ignore[arg-type]


def test_verified_prefix_only_and_decrypt_to_path_leaves_nothing(tmp_path: Path) -> None:
    # A stream damaged in chunk 5: the writer sees chunks 0-4 (all verified), never chunk 5.
    tampered = bytearray(BLOB)
    tampered[len(HEADER) + 5 * (SMALL + TAG_SIZE) + 3] ^= 1
    out = io.BytesIO()
    with pytest.raises(IntegrityError):
        decrypt_stream(io.BytesIO(bytes(tampered)), out, KEY, IDENTITY)
    assert out.getvalue() == PLAIN[: 5 * SMALL]

    target = tmp_path / "image.dcm"
    target.write_bytes(b"previous content")
    with pytest.raises(IntegrityError):
        decrypt_to_path(io.BytesIO(bytes(tampered)), target, KEY, IDENTITY)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.dcm"]

    assert decrypt_to_path(io.BytesIO(BLOB), target, KEY, IDENTITY) == len(PLAIN)
    assert target.read_bytes() == PLAIN


# --------------------------------------------------------------------------------- bounded memory


class _PatternReader(io.RawIOBase):
    """`total` pseudo-random bytes produced on demand (nothing held beyond one read)."""

    def __init__(self, total: int) -> None:
        self.remaining = total
        self.counter = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        block = hashlib.sha256(self.counter.to_bytes(8, "big")).digest()
        self.counter += 1
        data = (block * (size // 32 + 1))[:size]
        self.remaining -= size
        self.digest.update(data)
        return data


class _HashingSink(io.RawIOBase):
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def test_64_mib_stream_in_bounded_memory(tmp_path: Path) -> None:
    total = 64 * 1024 * 1024
    source = _PatternReader(total)
    encrypted = tmp_path / "object.enc"

    tracemalloc.start()
    try:
        with encrypted.open("wb") as handle:
            written = encrypt_stream(source, handle, KEY, IDENTITY, KEY_ID)
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = _HashingSink()
        with encrypted.open("rb") as handle:
            assert decrypt_stream(handle, sink, KEY, IDENTITY) == total
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written == encrypted.stat().st_size == encrypted_size(total, KEY_ID)
    assert sink.digest.digest() == source.digest.digest()
    # About two 1 MiB chunks plus their ciphertexts: far below the 64 MiB object.
    assert encrypt_peak < 8 * 1024 * 1024, encrypt_peak
    assert decrypt_peak < 8 * 1024 * 1024, decrypt_peak


def test_module_constants_match_the_documented_format() -> None:
    assert envelope.MAGIC == b"ICENC"
    assert envelope.FORMAT_VERSION == 1
    assert envelope.DEFAULT_CHUNK_SIZE == 1 << 20


def test_writers_with_short_writes_or_no_return_value() -> None:
    class Stingy:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def write(self, data: bytes) -> int:
            self.parts.append(bytes(data[:5]))
            return min(5, len(data))

    class Silent:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.parts.append(bytes(data))

    plaintext = _sample(3 * SMALL + 9)
    stingy, silent = Stingy(), Silent()
    written = encrypt_stream(io.BytesIO(plaintext), stingy, KEY, IDENTITY, KEY_ID, SMALL)  # type: ignore[arg-type]
    blob = b"".join(stingy.parts)
    assert written == len(blob)
    assert decrypt_stream(io.BytesIO(blob), silent, KEY, IDENTITY) == len(plaintext)  # type: ignore[arg-type]
    assert b"".join(silent.parts) == plaintext
