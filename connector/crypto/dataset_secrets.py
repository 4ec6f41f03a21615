"""Per-dataset secrets: the HMAC keys behind pseudonyms, UID remapping and date shifts.

One random 256-bit secret per dataset, kept in a 0600 file under the keys folder, created on
first use and never overwritten (losing it breaks the link between later and earlier ingests
of the same dataset; leaking it lets someone confirm a guessed patient's pseudonym).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from pathlib import Path

from connector.crypto.keyfile import KeyFileError, write_private_file

# The one rule for a dataset name (CLI, API, key ids, file names): never a path, never upper case.
DATASET_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME = re.compile(DATASET_NAME_PATTERN)


def validate_dataset_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"invalid dataset name {name[:80]!r}: use 1-64 lower-case letters, digits, '.', '_' or '-'"
        )
    return name


def load_or_create_dataset_secret(keys_dir: Path, dataset: str) -> bytes:
    path = keys_dir / "datasets" / f"{validate_dataset_name(dataset)}.secret"
    if not path.exists():
        # If another process created it first, use theirs.
        with contextlib.suppress(KeyFileError):
            write_private_file(path, secrets.token_bytes(32))
    secret = path.read_bytes()
    if len(secret) != 32:
        raise KeyFileError(f"dataset secret {path} is corrupt (expected 32 bytes); restore it from backup")
    return secret
