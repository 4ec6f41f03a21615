"""Private key files: created once, atomically, readable by the owner alone, never overwritten.

A key file that exists but cannot be read is an error for a person to look at: this module never
replaces it, since that would silently orphan everything signed or sealed with the old key.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.atomic_files import write_atomically


class KeyFileError(Exception):
    """A key file exists but is unusable; the message names the file, never its content."""


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to a new `path` with mode 0600, atomically; never replaces an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_atomically(path, data, mode=0o600, exclusive=True)
    except FileExistsError:
        raise KeyFileError(f"refusing to overwrite existing key file {path}") from None


def load_or_create_ed25519(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key stored at `path`, generated there on first use."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private_file(path, pem)
        return key
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"key file {path} is corrupt or not a PEM private key; restore it from backup"
        ) from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"key file {path} does not hold an Ed25519 key")
    return loaded
