"""Model packages: reading an AI team's zip safely, and building one deterministically.

A package is a zip holding `manifest.json`, the weights file the manifest names and, optionally,
`README.md` and `LICENSE`; nothing else. Reading checks the zip's structure before a single
member is decompressed (member count, names, types, declared sizes, compression ratio), then
reads each member with a hard size bound, then parses the manifest with every problem named.

This module never extracts to disk, never follows a path from inside the archive, never
unpickles, never imports anything a package names, and never puts a package's bytes (or a long
value from it) into an error message.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from connector.compute.manifest import Manifest

MANIFEST_NAME = "manifest.json"
OPTIONAL_MEMBERS = ("README.md", "LICENSE")

# The DOS epoch: zip cannot store an earlier time, and a fixed time makes builds byte-identical.
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_LOCAL_HEADER = b"PK\x03\x04"
_END_OF_DIRECTORY = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_END = b"PK\x06\x06"
_ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
# Members this small cannot hurt whatever their ratio; bombs are large by definition.
_RATIO_FREE_BYTES = 1 << 20
_MAX_SHOWN_PROBLEMS = 20
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class PackageError(ValueError):
    """A package (or the model in it) is refused; `problems` names each reason in a plain sentence."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems) or ["the package is not acceptable"]
        shown = self.problems[:_MAX_SHOWN_PROBLEMS]
        more = len(self.problems) - len(shown)
        text = "; ".join(shown) + (f"; and {more} more problem(s)" if more > 0 else "")
        super().__init__(f"model package refused: {text}")


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on a zip archive, checked on its central directory before anything is decompressed."""

    max_archive_bytes: int
    max_members: int
    max_member_bytes: int  # uncompressed, any one member
    max_total_bytes: int  # uncompressed, all members together
    max_ratio: float = 200.0  # uncompressed / compressed, for members above 1 MiB


@dataclass(frozen=True)
class PackageLimits:
    """What the connector accepts in a model package (defaults fit SwinUNETR-sized float32 weights)."""

    max_package_bytes: int = 768 << 20
    max_members: int = 8
    max_weights_bytes: int = 768 << 20
    max_manifest_bytes: int = 64 << 10
    max_text_bytes: int = 1 << 20  # README.md, LICENSE
    max_total_bytes: int = 800 << 20
    max_ratio: float = 200.0

    def archive(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_archive_bytes=self.max_package_bytes,
            max_members=self.max_members,
            max_member_bytes=max(self.max_weights_bytes, self.max_manifest_bytes, self.max_text_bytes),
            max_total_bytes=self.max_total_bytes,
            max_ratio=self.max_ratio,
        )


DEFAULT_LIMITS = PackageLimits()


@dataclass(frozen=True)
class ModelPackage:
    """A package that passed every structural check: its manifest, its weights and its identity."""

    manifest: Manifest
    weights: bytes
    digest: str  # sha256 hex of the exact zip bytes (what the team signed)
    size: int  # bytes of the zip
    readme: str = ""
    license: str = ""

    def __repr__(self) -> str:  # the weights are never printed
        return (
            f"ModelPackage(name={self.manifest.name!r}, version={self.manifest.version!r}, "
            f"framework={self.manifest.framework!r}, digest={self.digest[:16]}…, size={self.size})"
        )


def shown(value: object, limit: int = 64) -> str:
    """A value a package controls, made safe for a message: quoted, escaped and bounded."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def package_digest(package_bytes: bytes) -> str:
    """The sha256 (hex) of the exact zip bytes: the value a team's signature covers."""
    return hashlib.sha256(package_bytes).hexdigest()


# --- the zip container -------------------------------------------------------------------------


def _declared_member_count(data: bytes) -> int | None:
    """The entry count the end-of-central-directory record declares (zip64 too), or None if absent.

    Read by hand so that a directory declaring millions of entries is refused before
    `zipfile.ZipFile` builds an object for each of them.
    """
    # The record is 22 bytes plus a comment of at most 65535; the last signature is the real one.
    start = data.rfind(_END_OF_DIRECTORY, max(0, len(data) - 22 - 0xFFFF))
    if start < 0 or start + 22 > len(data):
        return None
    (count,) = struct.unpack_from("<H", data, start + 10)
    if count != 0xFFFF:
        return int(count)
    locator = start - 20
    if locator < 0 or data[locator : locator + 4] != _ZIP64_LOCATOR:
        return int(count)
    (record,) = struct.unpack_from("<Q", data, locator + 8)
    if record + 56 > len(data) or data[record : record + 4] != _ZIP64_END:
        return None
    (count64,) = struct.unpack_from("<Q", data, record + 32)
    return int(count64)


def safe_member_name(name: str) -> str | None:
    """Why `name` is not a canonical relative path, or None when it is.

    Canonical: `/`-separated, no empty, `.` or `..` part, no absolute or drive path, no control
    characters (C0, DEL, C1), no part ending in a dot or a space (Windows drops those, so two names
    would meet on disk), no colon (drive letters, NTFS streams). A name that is not canonical can
    mean different members to different readers, so it is refused rather than normalised.
    """
    if not name or "\x00" in name:
        return "has an empty or NUL-containing name"
    if _CONTROL_CHARACTER.search(name):
        return "has a control character in its name"
    if "\\" in name:
        return "uses a backslash in its path"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ":" in name:
        return "has a colon in its name (a drive or stream name)"
    parts = name.split("/")
    if any(part == ".." for part in parts):
        return "escapes the archive (path traversal with '..')"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' path component (or is a folder entry)"
    if any(part.endswith((".", " ")) for part in parts):
        return "has a path component ending in a dot or a space"
    return None


def name_key(name: str) -> str:
    """The form under which two member names count as the same member.

    PyTorch's zip reader (miniz) finds members case-insensitively, and file systems fold case and
    Unicode forms, so names are compared after NFKC normalisation and case folding.
    """
    return unicodedata.normalize("NFKC", name).casefold()


def _is_symlink_or_special(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # 3 = Unix: the high 16 bits hold st_mode
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            return "is a symbolic link"
        if kind and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            return "is not a regular file"
    return None


def open_archive(data: bytes, limits: ArchiveLimits, what: str = "package") -> zipfile.ZipFile:
    """A ZipFile over `data` whose every member passed the structural checks; PackageError otherwise.

    Checks, before any member is decompressed: a zip starting at byte 0, the declared member count,
    safe and unique names, no links or special files, no encryption, only stored or deflated
    members, each member's declared size and the total, and the compression ratio (zip bombs).
    """
    if len(data) > limits.max_archive_bytes:
        raise PackageError(
            [f"the {what} has {len(data)} bytes; at most {limits.max_archive_bytes} are accepted"]
        )
    if not data.startswith(_LOCAL_HEADER):
        # A zip with bytes in front is a polyglot (a script or image posing as a zip): refuse it.
        raise PackageError([f"the {what} is not a zip archive (it must start with a zip local file header)"])
    declared = _declared_member_count(data)
    if declared is None:
        raise PackageError([f"the {what} is not a readable zip archive (no end-of-directory record)"])
    if declared > limits.max_members:
        raise PackageError(
            [f"the {what} declares {declared} members; at most {limits.max_members} are accepted"]
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error):
        raise PackageError([f"the {what} is not a readable zip archive"]) from None
    infos = archive.infolist()
    problems: list[str] = []
    if len(infos) > limits.max_members:
        problems.append(f"the {what} has {len(infos)} members; at most {limits.max_members} are accepted")
    seen: dict[str, str] = {}  # name_key -> the first name with that key
    total = 0
    for info in infos:
        label = f"member {shown(info.filename)}"
        key = name_key(info.filename)
        if info.filename == seen.get(key):
            problems.append(f"{label} appears more than once (which copy counts would be ambiguous)")
        elif key in seen:
            problems.append(
                f"{label} and {shown(seen[key])} differ only in case or Unicode form "
                "(readers that fold case would take either)"
            )
        seen.setdefault(key, info.filename)
        for problem in (safe_member_name(info.filename), _is_symlink_or_special(info)):
            if problem:
                problems.append(f"{label} {problem}")
        if info.flag_bits & 0x1:
            problems.append(f"{label} is encrypted")
        if info.compress_type not in _ALLOWED_COMPRESSION:
            problems.append(f"{label} uses compression method {info.compress_type} (only stored or deflated)")
        if info.file_size > limits.max_member_bytes:
            problems.append(
                f"{label} declares {info.file_size} bytes uncompressed; at most {limits.max_member_bytes}"
            )
        if info.file_size > _RATIO_FREE_BYTES and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            problems.append(
                f"{label} would expand {info.file_size / max(info.compress_size, 1):.0f} times "
                f"(at most {limits.max_ratio:.0f}): a zip bomb is refused"
            )
        total += info.file_size
    if total > limits.max_total_bytes:
        problems.append(
            f"the {what}'s members declare {total} bytes uncompressed; "
            f"at most {limits.max_total_bytes} in all"
        )
    if problems:
        archive.close()
        raise PackageError(problems)
    return archive


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """A member's bytes, never more than `max_bytes` (whatever its header claims); CRC checked."""
    try:
        with archive.open(info) as handle:
            # zipfile stops at the declared size and checks the CRC; the +1 catches a lying header.
            content = handle.read(max_bytes + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError):
        raise PackageError(
            [f"member {shown(info.filename)} is corrupt (it does not decompress or its CRC fails)"]
        ) from None
    if len(content) > max_bytes or len(content) != info.file_size:
        raise PackageError([f"member {shown(info.filename)} is not the size its header declares"])
    return content


# --- the manifest ------------------------------------------------------------------------------


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        # Two tools could each read a different value of the key; a signed manifest must be unambiguous.
        raise ValueError(f"key {shown(duplicates[0], 40)} appears more than once in one object")
    return dict(pairs)


def _location(loc: tuple[int | str, ...]) -> str:
    # Field names are ours, but a dict key in the path comes from the package: quote anything odd.
    return ".".join(
        str(part) if isinstance(part, int) or _PLAIN_NAME.fullmatch(part) else shown(part, 40) for part in loc
    )


def manifest_problems(error: ValidationError) -> list[str]:
    """Every validation problem as `field.path: message`, never echoing the offending value."""
    problems: list[str] = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        loc = tuple(item["loc"])
        kind = item["type"]
        message = item["msg"].removeprefix("Value error, ")
        if len(loc) >= 3 and loc[:2] == ("network", "parameters"):
            # A parameter's value is a union: pydantic reports one error per member type, with the
            # type as an extra location part. They are folded into one sentence about the parameter.
            text = (
                f"network.parameters.{shown(loc[2], 40)}: must be a number, true/false, a string "
                "or a list of numbers"
            )
        elif kind == "extra_forbidden":
            text = f"{_location(loc)}: is not a known field"
        elif kind == "missing":
            text = f"{_location(loc)}: is required"
        elif kind == "json_invalid":
            text = f"{MANIFEST_NAME} is not valid JSON ({message.removeprefix('Invalid JSON: ')})"
        elif not loc:
            text = f"manifest: {message}"
        else:
            text = f"{_location(loc)}: {message}"
        if text not in problems:
            problems.append(text)
    return problems


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest from `manifest.json` bytes; PackageError naming every problem."""
    try:
        json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except UnicodeDecodeError:
        raise PackageError([f"{MANIFEST_NAME} is not UTF-8 text"]) from None
    except RecursionError:
        raise PackageError([f"{MANIFEST_NAME} is nested too deeply"]) from None
    except ValueError as exc:
        # json's own messages name a position, never the text; ours name the duplicated key, bounded.
        raise PackageError([f"{MANIFEST_NAME} is not valid JSON ({exc})"]) from None
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise PackageError(manifest_problems(exc)) from None


# --- the package -------------------------------------------------------------------------------


def _load_bytes(source: bytes | Path, limits: PackageLimits) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise PackageError([f"{path.name!r} is not a regular file"])
        if size > limits.max_package_bytes:
            raise PackageError(
                [f"the package has {size} bytes; at most {limits.max_package_bytes} are accepted"]
            )
        with path.open("rb") as handle:
            return handle.read(limits.max_package_bytes + 1)
    except OSError as exc:
        raise PackageError(
            [f"cannot read the package file {path.name!r} ({exc.strerror or type(exc).__name__})"]
        ) from None


def _text(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError([f"{name} is not UTF-8 text"]) from None


def _check_declared_size(info: zipfile.ZipInfo, limit: int) -> None:
    if info.file_size > limit:
        raise PackageError(
            [f"member {shown(info.filename)} declares {info.file_size} bytes; at most {limit}"]
        )


def _case_hint(wanted: str, members: Iterable[str]) -> str:
    """' (it has X, which differs only in case)' when a member matches `wanted` case-insensitively."""
    near = [name for name in members if name_key(name) == name_key(wanted)]
    return f" (it has {shown(near[0])}, which differs only in case)" if near else ""


def read_package(source: bytes | Path, limits: PackageLimits = DEFAULT_LIMITS) -> ModelPackage:
    """A package from its zip bytes or file, checked; PackageError naming every problem.

    Only structure and manifest are checked here; the weights are read as bytes and not
    interpreted (connector.compute.networks does that, without ever unpickling).
    """
    data = _load_bytes(source, limits)
    with open_archive(data, limits.archive()) as archive:
        # Names are compared exactly: open_archive refused names that differ only in case, so an
        # exact match is the only member any reader, case-folding or not, could take.
        members = {info.filename: info for info in archive.infolist()}
        if MANIFEST_NAME not in members:
            raise PackageError([f"the package has no {MANIFEST_NAME}{_case_hint(MANIFEST_NAME, members)}"])
        _check_declared_size(members[MANIFEST_NAME], limits.max_manifest_bytes)
        manifest = parse_manifest(read_member(archive, members[MANIFEST_NAME], limits.max_manifest_bytes))
        allowed = {MANIFEST_NAME, manifest.weights, *OPTIONAL_MEMBERS}
        problems = [
            f"member {shown(name)} is not allowed in a package (only {MANIFEST_NAME}, the weights file "
            f"{manifest.weights!r}, README.md and LICENSE; names are case-sensitive)"
            for name in sorted(members)
            if name not in allowed
        ]
        if manifest.weights not in members:
            problems.append(
                f"the weights file {manifest.weights!r} named by the manifest is missing"
                + _case_hint(manifest.weights, members)
            )
        if problems:
            raise PackageError(problems)
        _check_declared_size(members[manifest.weights], limits.max_weights_bytes)
        for name in OPTIONAL_MEMBERS:
            if name in members:
                _check_declared_size(members[name], limits.max_text_bytes)
        weights = read_member(archive, members[manifest.weights], limits.max_weights_bytes)
        texts = {
            name: _text(read_member(archive, members[name], limits.max_text_bytes), name)
            for name in OPTIONAL_MEMBERS
            if name in members
        }
    return ModelPackage(
        manifest=manifest,
        weights=weights,
        digest=package_digest(data),
        size=len(data),
        readme=texts.get("README.md", ""),
        license=texts.get("LICENSE", ""),
    )


def manifest_json(manifest: Manifest) -> bytes:
    """The canonical `manifest.json` of a manifest: sorted keys, two-space indent, UTF-8."""
    return (
        json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    ).encode()


def build_package(manifest: Manifest, weights: bytes, readme: str = "", license_text: str = "") -> bytes:
    """A package zip, byte-identical for the same inputs (fixed times and modes, sorted members).

    Weights are stored uncompressed: trained floats barely compress, and stored members can be
    read without inflating.
    """
    members: dict[str, tuple[bytes, int]] = {
        MANIFEST_NAME: (manifest_json(manifest), zipfile.ZIP_DEFLATED),
        manifest.weights: (weights, zipfile.ZIP_STORED),
    }
    if readme:
        members["README.md"] = (readme.encode("utf-8"), zipfile.ZIP_DEFLATED)
    if license_text:
        members["LICENSE"] = (license_text.encode("utf-8"), zipfile.ZIP_DEFLATED)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(members):
            content, method = members[name]
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.compress_type = method
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, content)
    return buffer.getvalue()
