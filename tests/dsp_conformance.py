"""The official Dataspace Protocol 2025-1 JSON schemas (../shared/conformance/dsp), as a validator.

Every schema is loaded into one local registry by its `$id` (nothing is fetched), with the one
upstream quirk normalised: three transfer schemas write `#definitions/...` where a JSON pointer
needs `#/definitions/...`. `check(kind, message)` validates a message against the schema of its
kind and returns the errors as text (empty when valid). Test helper only; where the folder is
absent (a bare clone) it finds no schema and no example, and the tests that need them skip
(`tests.conftest.needs_conformance("dsp")`).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft201909Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT201909

from tests.conftest import CONFORMANCE_DIR, conformance_file

CONFORMANCE = CONFORMANCE_DIR / "dsp"
BASE = "https://w3id.org/dspace/2025/1/"

# Message @type -> the schema that defines it.
SCHEMAS: dict[str, str] = {
    "Catalog": "catalog/catalog-schema.json",
    "Dataset": "catalog/dataset-schema.json",
    "CatalogRequestMessage": "catalog/catalog-request-message-schema.json",
    "DatasetRequestMessage": "catalog/dataset-request-message-schema.json",
    "CatalogError": "catalog/catalog-error-schema.json",
    "ContractRequestMessage": "negotiation/contract-request-message-schema.json",
    "ContractOfferMessage": "negotiation/contract-offer-message-schema.json",
    "ContractAgreementMessage": "negotiation/contract-agreement-message-schema.json",
    "ContractAgreementVerificationMessage": "negotiation/contract-agreement-verification-message-schema.json",
    "ContractNegotiationEventMessage": "negotiation/contract-negotiation-event-message-schema.json",
    "ContractNegotiationTerminationMessage": (
        "negotiation/contract-negotiation-termination-message-schema.json"
    ),
    "ContractNegotiation": "negotiation/contract-negotiation-schema.json",
    "ContractNegotiationError": "negotiation/contract-negotiation-error-schema.json",
    "TransferRequestMessage": "transfer/transfer-request-message-schema.json",
    "TransferStartMessage": "transfer/transfer-start-message-schema.json",
    "TransferCompletionMessage": "transfer/transfer-completion-message-schema.json",
    "TransferSuspensionMessage": "transfer/transfer-suspension-message-schema.json",
    "TransferTerminationMessage": "transfer/transfer-termination-message-schema.json",
    "TransferProcess": "transfer/transfer-process-schema.json",
    "TransferError": "transfer/transfer-error-schema.json",
    "VersionResponse": "common/protocol-version-schema.json",
}


def available() -> bool:
    return CONFORMANCE.is_dir()


def require() -> None:
    """Skip the calling test, naming the missing folder, when the official DSP files are absent."""
    conformance_file("dsp")


def _normalised(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                value.replace("#definitions/", "#/definitions/")
                if key == "$ref" and isinstance(value, str)
                else _normalised(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_normalised(item) for item in node]
    return node


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    loaded = {}
    for path in sorted(CONFORMANCE.glob("*/*-schema.json")):
        schema = _normalised(json.loads(path.read_text(encoding="utf-8")))
        loaded[schema["$id"]] = schema
    return loaded


@cache
def _registry() -> Registry:  # type: ignore[type-arg]
    resources = [
        (uri, Resource.from_contents(schema, default_specification=DRAFT201909))
        for uri, schema in _schemas().items()
    ]
    return Registry().with_resources(resources)


@cache
def validator(kind: str) -> Draft201909Validator:
    require()  # without the schemas a check could only error: the test skips instead
    schema = _schemas()[BASE + SCHEMAS[kind]]
    return Draft201909Validator(schema, registry=_registry())


def check(kind: str, message: Any) -> list[str]:
    """The schema errors of `message` as the DSP message `kind` (empty when valid)."""
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator(kind).iter_errors(message)
    ]


def check_typed(message: dict[str, Any]) -> list[str]:
    """Validate a message against the schema its own `@type` names."""
    kind = message.get("@type") if "protocolVersions" not in message else "VersionResponse"
    if kind not in SCHEMAS:
        return [f"no DSP schema for @type {kind!r}"]
    return check(str(kind), message)


def examples() -> list[Path]:
    return sorted(CONFORMANCE.glob("*/example/*.json"))
