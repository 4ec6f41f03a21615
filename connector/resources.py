"""Where the folders the connector ships with are: the policy bundle and the deid recipes.

The repository's top-level `policies/` and `deid_recipes/` folders travel in the wheel as the
data-only packages `connector_data.policies` and `connector_data.deid_recipes` (pyproject.toml's
`[tool.setuptools.package-dir]`); an editable install maps the same names onto the checkout's
folders. This module finds them through the import system, so an installed connector never reads
files from a source tree. It only locates folders: it never reads, copies or writes a file, and
it never looks at settings (callers apply `policies_dir` / `deid_recipes_dir` first).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

POLICIES_PACKAGE = "connector_data.policies"
DEID_RECIPES_PACKAGE = "connector_data.deid_recipes"


class ShippedResourceMissing(RuntimeError):
    """The installation lacks a shipped folder: a broken or partial install, never bad user input."""


def _package_folder(package: str) -> Path:
    # The import system's own answer rather than importlib.resources.files(): the data packages
    # are namespace packages (the folders hold no __init__.py), and on Python 3.11 files() fails
    # for them under setuptools' editable finder, whose namespace path carries a placeholder
    # entry. The deid library and the bundle reader need real paths, which both install modes give.
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:  # the parent package `connector_data` is missing
        spec = None
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    # A namespace package gathers a folder from every sys.path entry that has one: the first is the
    # one a regular package would have been imported from.
    folders = [Path(entry) for entry in locations if Path(entry).is_dir()]
    if not folders:
        raise ShippedResourceMissing(
            f"the shipped folder {package} is not installed; reinstall the connector "
            "(pip install -e . in a checkout)"
        )
    return folders[0]


def shipped_policies_dir() -> Path:
    """The policy bundle shipped with the connector (the repository's `policies/`)."""
    return _package_folder(POLICIES_PACKAGE)


def shipped_deid_recipes_dir() -> Path:
    """The PS3.15 Annex E recipes shipped with the connector (the repository's `deid_recipes/`)."""
    return _package_folder(DEID_RECIPES_PACKAGE)
