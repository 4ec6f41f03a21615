"""The DSP view of the catalog: datasets with their ODRL offers, and the checks and agreements
that follow from an offer.

A DSP Dataset is the dataset's published HealthDCAT-AP record (every statement the record makes
about the dataset, its properties as compact or full IRIs) with the offer of the DPO's active
policy and one distribution per transfer format. An offer's `@id` is derived from its terms, so a
request for an offer the policy has since changed is refused rather than silently re-interpreted.
This module decides nothing about access: it states terms and compares them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from catalog.model import Offer
from catalog.render import RenderedRecord
from catalog.vocab import PREFIXES
from connector.cataloging.facts import offer_from_policy, record_iri
from connector.cataloging.models import CatalogDocument, CatalogEntry
from connector.dataspace.messages import COMPUTE_TO_DATA, CONTEXT, ENCRYPTED_PULL, Policy
from connector.runtime import Runtime

# Prefixes the DSP context itself defines with the same namespaces; other prefixes are expanded.
_DSP_PREFIXES = frozenset({"dct", "dcat", "odrl", "xsd"})
# Record properties DSP states in its own terms (offers, distributions).
_REPLACED = frozenset({"dcat:distribution", "odrl:hasPolicy"})


class OfferMismatch(ValueError):
    """A requested offer is not one this connector makes; the message says how it differs."""


def service_id(runtime: Runtime) -> str:
    return runtime.settings.public_url.rstrip("/") + "/dsp#service"


def dsp_base(runtime: Runtime) -> str:
    return runtime.settings.public_url.rstrip("/") + "/dsp"


def _iri(compact: str) -> str:
    prefix, _, local = compact.partition(":")
    if prefix in _DSP_PREFIXES or prefix not in PREFIXES or not local:
        return compact
    return PREFIXES[prefix] + local


def _portable(value: Any) -> Any:
    """A record value re-expressed for the DSP context (datatypes as DSP-known or full IRIs)."""
    if isinstance(value, list):
        return [_portable(item) for item in value]
    if isinstance(value, dict) and isinstance(value.get("@type"), str):
        return {**value, "@type": _iri(value["@type"])}
    return value


def dataset_terms(runtime: Runtime, dataset: str) -> Offer | None:
    """The dataset's terms under the active policy (None when it gives the dataset none)."""
    record = runtime.policy.catalog_record(dataset, {"records": 0, "individuals": 0})
    if record is None:
        return None
    try:
        return offer_from_policy(record["offer"])
    except (KeyError, TypeError, ValueError):
        return None


def offer_constraints(terms: Offer) -> list[dict[str, Any]]:
    return [
        {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": [p.code for p in terms.purposes]},
        {"leftOperand": "spatial", "operator": "isAnyOf", "rightOperand": list(terms.countries)},
        {"leftOperand": "absoluteSize", "operator": "gteq", "rightOperand": str(terms.k)},
    ]


def offer_for(runtime: Runtime, dataset: str, terms: Offer) -> dict[str, Any]:
    """The DSP (catalog) offer for the dataset's current terms; its @id changes when they do."""
    constraints = offer_constraints(terms)
    digest = hashlib.sha256(json.dumps([dataset, constraints], sort_keys=True).encode()).hexdigest()
    return {
        "@id": f"{record_iri(runtime.settings.public_url, dataset)}#offer-{digest[:16]}",
        "@type": "Offer",
        "permission": [{"action": "use", "constraint": constraints}],
    }


def formats_for(runtime: Runtime, dataset: str) -> list[str]:
    """The transfer formats the dataset is offered in: compute-to-data always; an encrypted copy
    only where the policy's terms for the dataset allow copies."""
    formats = [COMPUTE_TO_DATA]
    if runtime.policy.copies_allowed(dataset):
        formats.append(ENCRYPTED_PULL)
    return formats


def _dsp_dataset(runtime: Runtime, dataset: str, record: RenderedRecord) -> dict[str, Any] | None:
    terms = dataset_terms(runtime, dataset)
    if terms is None:
        return None
    node = next((n for n in record.jsonld_nodes if n.get("@id") == record.iri), {})
    described = {
        _iri(key): _portable(value)
        for key, value in node.items()
        if key not in ("@id", "@type") and key not in _REPLACED
    }
    return {
        "@id": record.iri,
        "@type": "Dataset",
        **described,
        "hasPolicy": [offer_for(runtime, dataset, terms)],
        "distribution": [
            {"@type": "Distribution", "format": fmt, "accessService": service_id(runtime)}
            for fmt in formats_for(runtime, dataset)
        ],
    }


def _published(runtime: Runtime, datasets: Iterable[str] | None = None) -> list[tuple[str, RenderedRecord]]:
    with runtime.sessions() as session:
        query = (
            select(CatalogEntry.dataset, CatalogDocument.rendered)
            .join(CatalogDocument, CatalogDocument.dataset == CatalogEntry.dataset)
            .where(CatalogEntry.status == "published")
            .order_by(CatalogEntry.dataset)
        )
        if datasets is not None:
            query = query.where(CatalogEntry.dataset.in_(list(datasets)))
        rows = session.execute(query).all()
    return [(name, RenderedRecord.from_json(json.loads(text))) for name, text in rows]


def dsp_catalog(runtime: Runtime) -> dict[str, Any]:
    """The DSP Catalog message: every published dataset with its offer and distributions."""
    settings = runtime.settings
    datasets = [d for name, record in _published(runtime) if (d := _dsp_dataset(runtime, name, record))]
    catalog: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": settings.public_url.rstrip("/") + "/catalog",
        "@type": "Catalog",
        "participantId": settings.connector_id,
        "dct:title": f"{settings.organisation}: imaging datasets for compute-to-data",
        "dct:publisher": settings.organisation,
        "service": [{"@id": service_id(runtime), "@type": "DataService", "endpointURL": dsp_base(runtime)}],
    }
    if datasets:
        catalog["dataset"] = datasets
    return catalog


def dataset_name(runtime: Runtime, iri_or_name: str) -> str | None:
    """Our dataset name for a dataset IRI (or a bare name) that is published; None otherwise."""
    prefix = record_iri(runtime.settings.public_url, "")
    name = iri_or_name[len(prefix) :] if iri_or_name.startswith(prefix) else iri_or_name
    with runtime.sessions() as session:
        entry = session.get(CatalogEntry, name)
        return name if entry is not None and entry.status == "published" else None


def dsp_dataset(runtime: Runtime, iri_or_name: str) -> dict[str, Any] | None:
    name = dataset_name(runtime, iri_or_name)
    if name is None:
        return None
    found = _published(runtime, [name])
    dataset = _dsp_dataset(runtime, name, found[0][1]) if found else None
    return {"@context": CONTEXT, **dataset} if dataset else None


def _constraints(rule_constraints: Iterable[Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in rule_constraints:
        data = item.model_dump(exclude_none=True) if hasattr(item, "model_dump") else dict(item)
        left = data.get("leftOperand")
        if not isinstance(left, str) or left in found:
            raise OfferMismatch("each constraint must name one leftOperand, once")
        found[left] = data
    return found


def requested_purpose(ours: Mapping[str, Any], requested: Policy, target: str) -> str | None:
    """The purpose a requested offer narrows ours to (None when it keeps all of ours);
    OfferMismatch when it is not our offer, targets another dataset or changes other terms."""
    if requested.id != ours["@id"]:
        raise OfferMismatch(f"offer {requested.id} is not a current offer of this dataset (see the catalog)")
    if requested.target is not None and requested.target != target:
        raise OfferMismatch("the offer's target is not the dataset it was offered for")
    if requested.prohibition or requested.obligation or len(requested.permission) != 1:
        raise OfferMismatch("the offer must keep exactly one permission and add no prohibition or duty")
    rule = requested.permission[0]
    if rule.action != "use":
        raise OfferMismatch("the permission's action must be use")
    ours_by_left = _constraints(ours["permission"][0]["constraint"])
    theirs = _constraints(rule.constraint)
    if set(theirs) != set(ours_by_left):
        raise OfferMismatch(
            f"the offer must keep the constraints {sorted(ours_by_left)}, changing only purpose"
        )
    for left, constraint in theirs.items():
        if left != "purpose" and constraint != ours_by_left[left]:
            raise OfferMismatch(f"the {left} constraint differs from the offer's")
    purpose = theirs["purpose"]
    if purpose == ours_by_left["purpose"]:
        return None
    offered = ours_by_left["purpose"]["rightOperand"]
    if purpose.get("operator") != "eq" or purpose.get("rightOperand") not in offered:
        raise OfferMismatch(f"purpose may only be narrowed to one of {', '.join(offered)} (operator eq)")
    return str(purpose["rightOperand"])


def narrowed(offer: Mapping[str, Any], purpose: str, target: str | None = None) -> dict[str, Any]:
    """`offer` with its purpose narrowed to `purpose` (what a consumer requests, or a provider
    proposes for the permit presented)."""
    constraints = [
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose}
        if c.get("leftOperand") == "purpose"
        else dict(c)
        for c in offer["permission"][0]["constraint"]
    ]
    result = {**offer, "permission": [{"action": "use", "constraint": constraints}]}
    if target is not None:
        result["target"] = target
    return result


def agreement_document(
    agreement_id: str,
    offer: Mapping[str, Any],
    *,
    purpose: str,
    target: str,
    provider: str,
    consumer: str,
    country: str,
    valid_until: float,
) -> dict[str, Any]:
    """The ODRL agreement: the offer's terms narrowed to this purpose, consumer country and period."""
    constraints = []
    for c in offer["permission"][0]["constraint"]:
        left = c.get("leftOperand")
        if left == "purpose":
            constraints.append({"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose})
        elif left == "spatial":
            constraints.append({"leftOperand": "spatial", "operator": "eq", "rightOperand": country})
        else:
            constraints.append(dict(c))
    until = datetime.fromtimestamp(valid_until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    constraints.append({"leftOperand": "dateTime", "operator": "lteq", "rightOperand": until})
    return {
        "@id": agreement_id,
        "@type": "Agreement",
        "target": target,
        "assigner": provider,
        "assignee": consumer,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "permission": [{"action": "use", "constraint": constraints}],
    }
