"""Streamed envelope encryption of stored objects (AES-256-GCM in authenticated chunks).

What it does
------------
Every object of a study is encrypted with that study's random 256-bit data key. The object is cut
into chunks (1 MiB by default) and each chunk is sealed on its own, so objects of any size are
encrypted and decrypted in bounded memory (about two chunks). The data key itself is wrapped by the
dataset's key-encryption key in `connector.crypto.keystore`; this module only ever sees the
unwrapped data key and never stores it.

Format (version 1)::

    header  = b"ICENC" | version (1 byte) | algorithm (1 byte) | len(key_id) (1 byte) | key_id (UTF-8)
              | chunk_size (4 bytes, big-endian) | nonce_prefix (8 random bytes)
    chunk i = AES-256-GCM(data_key, nonce = nonce_prefix | i (4 bytes, big-endian),
                          plaintext = bytes [i*chunk_size, (i+1)*chunk_size) of the object,
                          associated data = header | ObjectIdentity.canonical() | i (4 bytes)
                                            | final (1 byte))
    object  = header | chunk 0 | chunk 1 | ... | final chunk

Every chunk but the last holds exactly `chunk_size` plaintext bytes; the last one carries the final
flag and may be shorter (an empty object is a single empty final chunk). Because the whole header,
the object's identity, the chunk index and the final flag are all authenticated, decryption detects
a wrong key, an object copied to another dataset/study/key, reordered, dropped or duplicated
chunks, truncation (at a chunk boundary or not), appended bytes and any change to the header.
Nonces: the 64-bit random prefix is fresh per object and the counter per chunk, so under one data
key (one study) nonces repeat only if two objects draw the same prefix, which stays negligible far
beyond the number of objects a study has (birthday bound around 2**32 objects); at most 2**32
chunks per object (4 PiB with 1 MiB chunks).

What it must never do
---------------------
* Never release unauthenticated plaintext: a chunk reaches the writer only after its tag verified.
  A later chunk can still fail, so the writer may hold a verified *prefix* of the object when
  `IntegrityError` is raised. A caller writing to a file must write to a temporary file and delete
  it on error (`decrypt_to_path` does exactly that); a caller in memory must drop its buffer.
* Never log or put key material or plaintext into an exception message.
* Never guess: an unknown format version or algorithm is `UnsupportedFormat`, not a best effort.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"ICENC"
FORMAT_VERSION = 1
ALG_AES_256_GCM = 1
SUPPORTED_ALGORITHMS = {ALG_AES_256_GCM: "AES-256-GCM"}

DATA_KEY_SIZE = 32
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 8
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 64 << 20
MAX_KEY_ID_BYTES = 255
MAX_CHUNKS = 1 << 32

_FIXED = struct.Struct(">5sBBB")  # magic, version, algorithm, key id length
_TAIL = struct.Struct(">I8s")  # chunk size, nonce prefix
_IDENTITY_DOMAIN = b"ICOBJ1"

KeySource = bytes | Callable[[str], bytes]
"""A data key, or a function from the header's key id to the data key (to pick the wrapped key)."""


class EnvelopeError(Exception):
    """Base class of the errors this module raises on reading an encrypted object."""


class IntegrityError(EnvelopeError):
    """The encrypted object does not authenticate: wrong key, wrong identity, or damaged/tampered data."""


class UnsupportedFormat(EnvelopeError):
    """The object is an envelope of a format version or algorithm this connector does not know."""


@dataclass(frozen=True)
class ObjectIdentity:
    """Where an object belongs; bound into every chunk so an object cannot be moved or swapped."""

    dataset: str
    study: str
    object_key: str

    def __post_init__(self) -> None:
        for name in ("dataset", "study", "object_key"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"ObjectIdentity.{name} must be a str")

    def canonical(self) -> bytes:
        """Unambiguous encoding: each field length-prefixed, so ("a", "bc") != ("ab", "c")."""
        parts = [_IDENTITY_DOMAIN]
        for value in (self.dataset, self.study, self.object_key):
            raw = value.encode("utf-8")
            parts.append(len(raw).to_bytes(4, "big"))
            parts.append(raw)
        return b"".join(parts)


@dataclass(frozen=True)
class EnvelopeHeader:
    """The parsed header of an encrypted object (public information, no secret in it)."""

    version: int
    algorithm: int
    key_id: str
    chunk_size: int
    nonce_prefix: bytes

    def encode(self) -> bytes:
        key_id = self.key_id.encode("utf-8")
        return (
            _FIXED.pack(MAGIC, self.version, self.algorithm, len(key_id))
            + key_id
            + _TAIL.pack(self.chunk_size, self.nonce_prefix)
        )


def generate_data_key() -> bytes:
    """A fresh random 256-bit data key (one per study)."""
    return secrets.token_bytes(DATA_KEY_SIZE)


def header_size(key_id: str) -> int:
    return _FIXED.size + len(key_id.encode("utf-8")) + _TAIL.size


def encrypted_size(plaintext_size: int, key_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Exact size of the encrypted object (for a Content-Length before uploading a stream)."""
    _check_chunk_size(chunk_size)
    chunks = max(1, -(-plaintext_size // chunk_size))
    return header_size(key_id) + plaintext_size + chunks * TAG_SIZE


def encrypt_stream(
    reader: BinaryIO,
    writer: BinaryIO,
    data_key: bytes,
    aad: ObjectIdentity,
    key_id: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Encrypt everything `reader` yields into `writer`; returns the number of bytes written.

    `key_id` names the wrapped data key (public, stored in the header) so a reader knows which key
    to unwrap. Memory use is about two chunks whatever the object size.
    """
    aead = _aead(data_key)
    _check_chunk_size(chunk_size)
    if not isinstance(aad, ObjectIdentity):
        raise TypeError("aad must be an ObjectIdentity")
    encoded_id = key_id.encode("utf-8")
    if not encoded_id or len(encoded_id) > MAX_KEY_ID_BYTES:
        raise ValueError(f"key id must be 1 to {MAX_KEY_ID_BYTES} UTF-8 bytes")
    header = EnvelopeHeader(
        FORMAT_VERSION, ALG_AES_256_GCM, key_id, chunk_size, secrets.token_bytes(NONCE_PREFIX_SIZE)
    )
    header_bytes = header.encode()
    prefix = header_bytes + aad.canonical()
    written = _write(writer, header_bytes)
    current = _read_exact(reader, chunk_size)
    index = 0
    while True:
        following = _read_exact(reader, chunk_size) if len(current) == chunk_size else b""
        final = not following
        if index >= MAX_CHUNKS:
            raise ValueError("object too large for one envelope (2**32 chunks)")
        sealed = aead.encrypt(_nonce(header.nonce_prefix, index), current, _chunk_aad(prefix, index, final))
        written += _write(writer, sealed)
        if final:
            return written
        current = following
        index += 1


def read_header(reader: BinaryIO) -> tuple[EnvelopeHeader, bytes]:
    """Parse the header at the reader's position; returns it and its exact bytes.

    The header is not authenticated until the first chunk verifies: use its key id only to choose
    which key to try.
    """
    fixed = _read_exact(reader, _FIXED.size)
    if len(fixed) < _FIXED.size:
        raise IntegrityError("encrypted object is truncated: incomplete header")
    magic, version, algorithm, id_length = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise IntegrityError("not an encrypted object (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise UnsupportedFormat(
            f"encrypted object has format version {version}; this connector reads version {FORMAT_VERSION}"
        )
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise UnsupportedFormat(f"encrypted object uses unknown algorithm id {algorithm}")
    rest = _read_exact(reader, id_length + _TAIL.size)
    if len(rest) < id_length + _TAIL.size:
        raise IntegrityError("encrypted object is truncated: incomplete header")
    try:
        key_id = rest[:id_length].decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError("encrypted object header is damaged (key id is not UTF-8)") from None
    chunk_size, nonce_prefix = _TAIL.unpack(rest[id_length:])
    if not id_length or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError("encrypted object header is damaged (key id or chunk size out of range)")
    return EnvelopeHeader(version, algorithm, key_id, chunk_size, nonce_prefix), fixed + rest


def decrypt_stream(reader: BinaryIO, writer: BinaryIO, data_key: KeySource, aad: ObjectIdentity) -> int:
    """Decrypt an object from `reader` into `writer`; returns the number of plaintext bytes written.

    `data_key` is the data key, or a function that receives the header's key id and returns it.
    Each chunk is written only after it verified; on `IntegrityError` the writer may already hold
    a verified prefix, which the caller must discard (see the module docstring).
    """
    if not isinstance(aad, ObjectIdentity):
        raise TypeError("aad must be an ObjectIdentity")
    header, header_bytes = read_header(reader)
    aead = _aead(data_key(header.key_id) if callable(data_key) else data_key)
    prefix = header_bytes + aad.canonical()
    sealed_size = header.chunk_size + TAG_SIZE
    current = _read_exact(reader, sealed_size)
    index = 0
    written = 0
    while True:
        if len(current) < TAG_SIZE:
            if index == 0:
                raise IntegrityError("encrypted object is truncated: no chunk after the header")
            raise IntegrityError(f"encrypted object is truncated after chunk {index - 1}")
        if index >= MAX_CHUNKS:
            raise IntegrityError("encrypted object has more chunks than the format allows")
        following = _read_exact(reader, sealed_size) if len(current) == sealed_size else b""
        final = not following
        nonce = _nonce(header.nonce_prefix, index)
        try:
            plaintext = aead.decrypt(nonce, current, _chunk_aad(prefix, index, final))
        except InvalidTag:
            raise IntegrityError(_diagnose(aead, nonce, current, prefix, index, final)) from None
        written += _write(writer, plaintext)
        if final:
            return written
        current = following
        index += 1


def encrypt_bytes(
    plaintext: bytes,
    data_key: bytes,
    aad: ObjectIdentity,
    key_id: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """`encrypt_stream` for an object already in memory."""
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), out, data_key, aad, key_id, chunk_size)
    return out.getvalue()


def decrypt_bytes(ciphertext: bytes, data_key: KeySource, aad: ObjectIdentity) -> bytes:
    """`decrypt_stream` for an object in memory; returns the whole plaintext or raises (no prefix)."""
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(ciphertext), out, data_key, aad)
    return out.getvalue()


def decrypt_to_path(reader: BinaryIO, path: Path, data_key: KeySource, aad: ObjectIdentity) -> int:
    """Decrypt into `path` through a 0600 temporary file beside it, renamed only once all verified.

    On any error the temporary file is deleted and `path` is left as it was.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            written = decrypt_stream(reader, handle, data_key, aad)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        return written
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _diagnose(aead: AESGCM, nonce: bytes, sealed: bytes, prefix: bytes, index: int, final: bool) -> str:
    """A precise message for a chunk that failed; never returns or keeps any plaintext."""
    try:
        aead.decrypt(nonce, sealed, _chunk_aad(prefix, index, not final))
    except InvalidTag:
        pass
    else:
        if final:
            return f"encrypted object is truncated: chunk {index} is not the final chunk"
        return f"encrypted object has unexpected data after its final chunk {index}"
    if index == 0:
        return (
            "encrypted object failed authentication at chunk 0: wrong data key, wrong object "
            "identity (dataset, study, object key) or a damaged/tampered header or chunk"
        )
    return (
        f"encrypted object failed authentication at chunk {index}: "
        "chunks reordered, dropped, duplicated or swapped from another object, or data damaged"
    )


def _aead(data_key: bytes) -> AESGCM:
    if not isinstance(data_key, bytes | bytearray) or len(data_key) != DATA_KEY_SIZE:
        raise ValueError(f"data key must be {DATA_KEY_SIZE} bytes")
    return AESGCM(bytes(data_key))


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def _chunk_aad(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


def _read_exact(reader: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, fewer only at end of stream (streams may return short reads)."""
    data = reader.read(size)
    if data is None:
        raise ValueError("non-blocking streams are not supported")
    if len(data) == size or not data:
        return bytes(data)
    parts = [data]
    missing = size - len(data)
    while missing:
        more = reader.read(missing)
        if more is None:
            raise ValueError("non-blocking streams are not supported")
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


def _write(writer: BinaryIO, data: bytes) -> int:
    """Write all of `data`; a writer returning a short count gets the rest, one returning None is
    taken to have written everything (plain file-like objects often return nothing)."""
    total = len(data)
    count = writer.write(data)
    while count is not None and count < len(data):
        data = data[count:]
        count = writer.write(data)
    return total
