"""HealthDCAT-AP catalog records for imaging datasets.

The model (catalog.model), the record graph (catalog.record), its documents and catalog pages
(catalog.render), validation against our shapes and the official ones (catalog.validate), the
steward's TOML file (catalog.steward_file) and pushes to remote catalogs (catalog.publish). The
names below are importable from `catalog` directly; each is loaded on first use, so importing one
small module (catalog.model, catalog.publish) never pulls in rdflib or pyshacl.

This package must never import anything from `connector`: catalogs can be built and validated
without the service.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from catalog.model import CatalogInfo, DatasetDescription, DerivedFacts, StewardFields
    from catalog.record import catalog_graph, record_graph
    from catalog.render import (
        CONTEXT,
        MEDIA_TYPES,
        Format,
        PageInfo,
        RenderedRecord,
        negotiate,
        render_catalog_page,
        render_description,
        render_record,
        render_stored,
    )
    from catalog.steward_file import (
        StewardFileError,
        load_steward_fields,
        steward_fields_from_mapping,
        steward_fields_to_mapping,
    )
    from catalog.validate import Problem, ValidationReport, official_shapes, validate, validate_graph

_EXPORTS = {
    "catalog.model": ("CatalogInfo", "DatasetDescription", "DerivedFacts", "StewardFields"),
    "catalog.record": ("catalog_graph", "record_graph"),
    "catalog.render": (
        "CONTEXT",
        "MEDIA_TYPES",
        "Format",
        "PageInfo",
        "RenderedRecord",
        "negotiate",
        "render_catalog_page",
        "render_description",
        "render_record",
        "render_stored",
    ),
    "catalog.steward_file": (
        "StewardFileError",
        "load_steward_fields",
        "steward_fields_from_mapping",
        "steward_fields_to_mapping",
    ),
    "catalog.validate": ("Problem", "ValidationReport", "official_shapes", "validate", "validate_graph"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "CONTEXT",
    "MEDIA_TYPES",
    "CatalogInfo",
    "DatasetDescription",
    "DerivedFacts",
    "Format",
    "PageInfo",
    "Problem",
    "RenderedRecord",
    "StewardFields",
    "StewardFileError",
    "ValidationReport",
    "catalog_graph",
    "load_steward_fields",
    "negotiate",
    "official_shapes",
    "record_graph",
    "render_catalog_page",
    "render_description",
    "render_record",
    "render_stored",
    "steward_fields_from_mapping",
    "steward_fields_to_mapping",
    "validate",
    "validate_graph",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'catalog' has no attribute {name!r}")
    return getattr(import_module(module), name)
