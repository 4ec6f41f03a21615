"""A policy bundle: the DPO's Rego modules and data documents, read from a folder, with a digest.

Layout follows OPA bundles: every `*.rego` file is a module (`*_test.rego` files are Rego unit
tests), and every `data.json` is merged into the data document at the path of its folder
(`policies/data.json` at the root, `policies/a/b/data.json` under `data.a.b`). Other files
(the README, `examples/`) are not part of the bundle. This module only reads and describes a
bundle; it never evaluates or activates one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.resources import shipped_policies_dir

# Far above any real policy folder, small enough that a wrong path (a home folder) fails fast.
MAX_BUNDLE_FILES = 500
MAX_BUNDLE_BYTES = 20 * 1024 * 1024


class BundleError(Exception):
    """The bundle cannot be read or its data documents do not fit together; the message says where."""


def default_policies_dir() -> Path:
    """The policy bundle shipped with the connector (the repository's `policies/`, installed as
    package data); the `policies_dir` setting, applied by callers, overrides it."""
    return shipped_policies_dir()


def _is_bundle_file(relative: Path) -> bool:
    return relative.suffix == ".rego" or relative.name == "data.json"


def _merge(target: dict[str, Any], value: Mapping[str, Any], where: str) -> None:
    for key, item in value.items():
        if key in target and isinstance(target[key], dict) and isinstance(item, Mapping):
            _merge(target[key], item, f"{where}.{key}")
        elif key in target:
            raise BundleError(f"data key {where}.{key} is defined twice in the bundle's data files")
        else:
            target[key] = json.loads(json.dumps(item))


@dataclass(frozen=True)
class PolicyBundle:
    """Bundle files by relative POSIX path. Immutable; `digest` identifies the exact content."""

    files: Mapping[str, str]

    @classmethod
    def from_dir(cls, folder: Path) -> PolicyBundle:
        folder = Path(folder)
        if not folder.is_dir():
            raise BundleError(f"policy folder {folder} does not exist")
        files: dict[str, str] = {}
        total = 0
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or not _is_bundle_file(relative) or relative.parts[0] == "examples":
                continue
            if len(files) >= MAX_BUNDLE_FILES:
                raise BundleError(f"{folder} holds more than {MAX_BUNDLE_FILES} policy files")
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise BundleError(f"{relative}: cannot be read as UTF-8 text ({exc})") from None
            total += len(text)
            if total > MAX_BUNDLE_BYTES:
                raise BundleError(f"{folder}: policy files exceed {MAX_BUNDLE_BYTES} bytes")
            files[relative.as_posix()] = text
        if not any(name.endswith(".rego") for name in files):
            raise BundleError(f"{folder} holds no .rego files")
        return cls(files)

    @classmethod
    def from_json(cls, text: str) -> PolicyBundle:
        files = json.loads(text)
        if not isinstance(files, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in files.items()
        ):
            raise BundleError("a stored bundle must be a JSON object of file names to texts")
        return cls(files)

    def to_json(self) -> str:
        return json.dumps(dict(sorted(self.files.items())), ensure_ascii=False)

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)

    @property
    def modules(self) -> dict[str, str]:
        """Every Rego module, tests included, by path."""
        return {name: text for name, text in self.files.items() if name.endswith(".rego")}

    @property
    def test_modules(self) -> dict[str, str]:
        return {name: text for name, text in self.modules.items() if name.endswith("_test.rego")}

    @property
    def data(self) -> dict[str, Any]:
        """The merged data document; BundleError naming the file for invalid JSON or clashes."""
        merged: dict[str, Any] = {}
        for name, text in sorted(self.files.items()):
            if not name.endswith("data.json"):
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BundleError(f"{name}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
            if not isinstance(value, dict):
                raise BundleError(f"{name}: a data file must hold a JSON object")
            parts = [part for part in Path(name).parent.parts if part]
            node = value
            for part in reversed(parts):
                node = {part: node}
            _merge(merged, node, "data")
        if "state" in merged.get("connector", {}):
            # The connector's own facts (datasets here, revoked permits) must come from it alone.
            raise BundleError(
                "data.connector.state is reserved for the connector; a bundle may not define it"
            )
        return merged
