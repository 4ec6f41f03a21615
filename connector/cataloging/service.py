"""The catalog's life cycle: describe a dataset, publish it in this connector's catalog and push it
to remote catalogs, keep every copy current when its counts change, withdraw it.

A record is validated before anything is stored or sent: an invalid record is refused with every
problem listed and changes nothing. The version goes up only when the content changes; pushes
are recorded with the remote's answer. This module never lets a raw count or a pseudonym into a
record (facts come from connector.cataloging.facts) and never decides terms (the policy does).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from catalog.model import Agent, DatasetDescription, RecordStatus, StewardFields
from catalog.publish import PublishOutcome, RemoteCatalog, publish
from catalog.render import Format, RenderedRecord, render_record, render_stored
from catalog.steward_file import steward_fields_from_mapping, steward_fields_to_mapping
from catalog.validate import Problem, validate
from connector.cataloging.facts import NoCatalogTerms, derive_facts
from connector.cataloging.models import CatalogDocument, CatalogEntry, CatalogFacet, CatalogPublication
from connector.datasets.models import DatasetRecord
from connector.runtime import Runtime

log = logging.getLogger("connector.catalog")

PUBLIC_STATUSES = ("published", "withdrawn")


class CatalogRefused(Exception):
    """The record cannot be published as it is; `problems` says why, in a steward's words."""

    def __init__(self, summary: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        super().__init__(summary + ("".join(f"\n  - {p}" for p in self.problems)))


class UnknownEntry(LookupError):
    """No catalog entry (or no dataset) of that name."""


@dataclass(frozen=True)
class EntryView:
    dataset: str
    status: str
    version: int
    modified: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PushReport:
    entry: EntryView
    outcomes: tuple[PublishOutcome, ...]

    @property
    def ok(self) -> bool:
        return all(outcome.ok for outcome in self.outcomes)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text) if text else _now()


def default_publisher(runtime: Runtime) -> Agent:
    settings = runtime.settings
    return Agent(
        name={"en": settings.organisation},
        country=settings.country,
        iri=settings.public_url.rstrip("/") + "/#publisher",
        homepage=settings.public_url,
    )


def _with_publisher(runtime: Runtime, fields: StewardFields) -> StewardFields:
    if fields.publisher is not None:
        return fields
    return replace(fields, publisher=default_publisher(runtime))


def content_digest(description: DatasetDescription) -> str:
    """Digest of what the record says, leaving out its version and dates (they follow from it)."""
    facts = replace(
        description.facts, version="", issued=datetime.min.replace(tzinfo=UTC), modified=datetime.min
    )
    document = asdict(replace(description, facts=facts))
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def _problems(problems: Iterable[Problem]) -> list[str]:
    return [f"{problem.field}: {problem.message}" for problem in problems]


def describe_record(
    runtime: Runtime,
    dataset: str,
    fields: StewardFields,
    *,
    status: RecordStatus,
    version: int,
    issued: datetime,
    modified: datetime,
) -> DatasetDescription:
    try:
        facts = derive_facts(
            runtime, dataset, version=str(version), issued=issued, modified=modified, status=status
        )
    except NoCatalogTerms as exc:
        raise CatalogRefused(str(exc)) from None
    return DatasetDescription(_with_publisher(runtime, fields), facts)


def _checked(description: DatasetDescription) -> tuple[str, ...]:
    """Validate; refuse on any violation; the warnings otherwise."""
    report = validate(description)
    if report.violations:
        raise CatalogRefused(
            f"the record of {description.facts.identifier} is not valid HealthDCAT-AP",
            _problems(report.violations),
        )
    return tuple(_problems(report.warnings))


def _facets(description: DatasetDescription) -> list[tuple[str, str]]:
    steward, facts = description.steward, description.facts
    countries = set(steward.spatial) | {description.publisher.country}
    values = (
        [("modality", m) for m in facts.modalities]
        + [("body_part", b) for b in facts.body_parts]
        + [("disease", code.code) for code in steward.diseases]
        + [("purpose", p.code) for p in facts.offer.purposes]
        + [("country", c) for c in sorted(countries)]
    )
    return sorted(set(values))


def store_rendered(
    session: Session, entry: CatalogEntry, description: DatasetDescription, rendered: RenderedRecord
) -> None:
    """Keep a rendered record and its search facets with its entry (in the caller's transaction)."""
    session.merge(CatalogDocument(dataset=entry.dataset, rendered=json.dumps(rendered.to_json())))
    entry.min_age = description.facts.age.minimum
    entry.max_age = description.facts.age.maximum
    session.execute(delete(CatalogFacet).where(CatalogFacet.dataset == entry.dataset))
    session.add_all(
        CatalogFacet(dataset=entry.dataset, facet=facet, value=value[:200])
        for facet, value in _facets(description)
    )


def _entry_view(entry: CatalogEntry, warnings: tuple[str, ...] = ()) -> EntryView:
    return EntryView(entry.dataset, entry.status, entry.version, entry.modified, warnings)


def _require_dataset(session: Session, dataset: str) -> None:
    if session.get(DatasetRecord, dataset) is None:
        raise UnknownEntry(f"no dataset {dataset!r}: ingest it first (`connector ingest`)")


def set_description(runtime: Runtime, dataset: str, fields: StewardFields, actor: str) -> EntryView:
    """Store the steward's fields after validating the record they make; a published record is
    updated at once (new version) and its remote copies with it."""
    with runtime.sessions() as session:
        _require_dataset(session, dataset)
        entry = session.get(CatalogEntry, dataset)
        status = entry.status if entry is not None else "draft"
    now = _now()
    description = describe_record(
        runtime,
        dataset,
        fields,
        status="withdrawn" if status == "withdrawn" else "active",
        version=max(entry.version if entry else 0, 1),
        issued=now,
        modified=now,
    )
    warnings = _checked(description)
    with runtime.sessions() as session, session.begin():
        entry = session.get(CatalogEntry, dataset)
        if entry is None:
            entry = CatalogEntry(
                dataset=dataset, status="draft", version=0, digest="", issued="", modified=""
            )
            session.add(entry)
        entry.steward_fields = json.dumps(steward_fields_to_mapping(fields), sort_keys=True)
        entry.updated_by = actor
    runtime.audit.record(actor, "catalog.describe", dataset, "success", details={"warnings": list(warnings)})
    if status != "draft":
        view, _ = refresh(runtime, dataset, actor)
        return replace(view, warnings=warnings)
    with runtime.sessions() as session:
        return _entry_view(session.get_one(CatalogEntry, dataset), warnings)


def steward_fields_of(runtime: Runtime, dataset: str) -> StewardFields:
    with runtime.sessions() as session:
        entry = session.get(CatalogEntry, dataset)
        if entry is None:
            raise UnknownEntry(
                f"dataset {dataset!r} has no description yet: `connector catalog describe {dataset} FILE`"
            )
        return steward_fields_from_mapping(json.loads(entry.steward_fields))


def _commit(
    runtime: Runtime, dataset: str, status: str, actor: str, *, require_valid: bool = True
) -> tuple[EntryView, bool]:
    """Rebuild the record with `status`; a new version when what it says changed. (view, changed)"""
    fields = steward_fields_of(runtime, dataset)
    with runtime.sessions() as session:
        entry = session.get(CatalogEntry, dataset)
        assert entry is not None
        version, digest, issued = entry.version, entry.digest, entry.issued
        previous_status = entry.status
    record_status: RecordStatus = "withdrawn" if status == "withdrawn" else "active"
    now = _now()
    draft = describe_record(
        runtime, dataset, fields, status=record_status, version=version, issued=now, modified=now
    )
    warnings = _checked(draft) if require_valid else ()
    new_digest = content_digest(draft)
    changed = new_digest != digest or status != previous_status
    if not changed:
        with runtime.sessions() as session:
            return _entry_view(session.get_one(CatalogEntry, dataset), warnings), False
    version += 1
    issued_at = _parse_time(issued) if issued else now
    description = replace(
        draft, facts=replace(draft.facts, version=str(version), issued=issued_at, modified=now)
    )
    rendered = render_record(description)
    with runtime.sessions() as session, session.begin():
        entry = session.get(CatalogEntry, dataset)
        assert entry is not None
        entry.status, entry.version, entry.digest = status, version, new_digest
        entry.issued, entry.modified = issued_at.isoformat(), now.isoformat()
        entry.updated_by = actor
        store_rendered(session, entry, description, rendered)
        view = _entry_view(entry, warnings)
    runtime.audit.record(
        actor,
        f"catalog.{'withdraw' if status == 'withdrawn' else 'publish'}",
        dataset,
        "success",
        details={"version": version, "digest": new_digest},
    )
    return view, True


def remote_catalogs(runtime: Runtime) -> dict[str, RemoteCatalog]:
    return {target.name: target.remote() for target in runtime.settings.catalog_targets}


def _targets(runtime: Runtime, names: Iterable[str]) -> list[RemoteCatalog]:
    known = remote_catalogs(runtime)
    names = list(dict.fromkeys(names))
    unknown = [name for name in names if name not in known]
    if unknown:
        configured = ", ".join(sorted(known)) or "none is configured (setting catalog_targets)"
        raise CatalogRefused(f"unknown remote catalog(s) {', '.join(unknown)}; configured: {configured}")
    return [known[name] for name in names]


def stored_record(runtime: Runtime, dataset: str) -> RenderedRecord:
    """The record as published (or withdrawn); UnknownEntry for a draft or an unknown dataset."""
    with runtime.sessions() as session:
        entry = session.get(CatalogEntry, dataset)
        document = session.get(CatalogDocument, dataset)
        if entry is None or entry.status not in PUBLIC_STATUSES or document is None:
            raise UnknownEntry(f"no dataset {dataset!r} in the catalog")
        return RenderedRecord.from_json(json.loads(document.rendered))


def record_body(runtime: Runtime, dataset: str, media_type: str) -> bytes:
    fmt: Format = "turtle" if media_type == "text/turtle" else "jsonld"
    return render_stored(stored_record(runtime, dataset), fmt).encode()


def _push(runtime: Runtime, dataset: str, remotes: list[RemoteCatalog], actor: str) -> list[PublishOutcome]:
    with runtime.sessions() as session:
        entry = session.get(CatalogEntry, dataset)
        assert entry is not None
        version, digest, status = entry.version, entry.digest, entry.status
    outcomes = []
    for remote in remotes:
        outcome = publish(
            remote,
            dataset,
            record_body(runtime, dataset, remote.media_type),
            withdraw=status == "withdrawn",
            record_digest=digest,
            version=str(version),
        )
        outcomes.append(outcome)
        with runtime.sessions() as session, session.begin():
            session.add(
                CatalogPublication(
                    dataset=dataset,
                    target=remote.name,
                    action=outcome.action,
                    version=version,
                    digest=digest,
                    ok=outcome.ok,
                    status_code=outcome.status_code,
                    attempts=outcome.attempts,
                    answer=outcome.answer[:2000],
                    error=outcome.error[:2000],
                    at=_now().isoformat(),
                    actor=actor,
                )
            )
        runtime.audit.record(
            actor,
            f"catalog.push.{outcome.action}",
            dataset,
            "success" if outcome.ok else "failure",
            reasons=[] if outcome.ok else [outcome.error[:300]],
            details={"target": remote.name, "version": version, "status_code": outcome.status_code},
        )
    return outcomes


def published_targets(runtime: Runtime, dataset: str) -> list[str]:
    """Remote catalogs whose copy of the record is (or should be) live: the last push there that
    succeeded, or the last attempted one, was a publish."""
    with runtime.sessions() as session:
        rows = session.execute(
            select(CatalogPublication.target, CatalogPublication.action)
            .where(CatalogPublication.dataset == dataset)
            .order_by(CatalogPublication.id)
        ).all()
    last: dict[str, str] = {}
    for target, action in rows:
        last[target] = action
    return sorted(target for target, action in last.items() if action == "publish")


def publish_dataset(runtime: Runtime, dataset: str, to: Iterable[str], actor: str) -> PushReport:
    """Publish in this connector's catalog and push to the named remote catalogs."""
    remotes = _targets(runtime, to)  # an unknown name refuses before anything changes
    with runtime.sessions() as session:
        _require_dataset(session, dataset)
    view, _ = _commit(runtime, dataset, "published", actor)
    return PushReport(view, tuple(_push(runtime, dataset, remotes, actor)))


def withdraw_dataset(runtime: Runtime, dataset: str, actor: str) -> PushReport:
    """Withdraw the record here (kept, marked deprecated) and at every remote that holds it."""
    with runtime.sessions() as session:
        entry = session.get(CatalogEntry, dataset)
        if entry is None or entry.status == "draft":
            raise UnknownEntry(f"dataset {dataset!r} is not published")
    view, _ = _commit(runtime, dataset, "withdrawn", actor, require_valid=False)
    remotes = _targets(
        runtime, [t for t in published_targets(runtime, dataset) if t in remote_catalogs(runtime)]
    )
    return PushReport(view, tuple(_push(runtime, dataset, remotes, actor)))


def refresh(runtime: Runtime, dataset: str, actor: str) -> tuple[EntryView, tuple[PublishOutcome, ...]]:
    """Recompute a public record after its data changed (shred, opt-out, new ingest); when what it
    says changed, a new version here and at every remote that holds it."""
    with runtime.sessions() as session:
        entry = session.get(CatalogEntry, dataset)
        if entry is None:
            raise UnknownEntry(f"dataset {dataset!r} is not in the catalog")
        status = entry.status
    if status == "draft":
        with runtime.sessions() as session:
            return _entry_view(session.get_one(CatalogEntry, dataset)), ()
    view, changed = _commit(runtime, dataset, status, actor, require_valid=False)
    if not changed:
        return view, ()
    known = remote_catalogs(runtime)
    remotes = [known[name] for name in published_targets(runtime, dataset) if name in known]
    return view, tuple(_push(runtime, dataset, remotes, actor))


def refresh_after_change(runtime: Runtime, dataset: str, actor: str) -> tuple[PublishOutcome, ...]:
    """Called after data changed: refresh the record if the dataset is public; never raises
    (the change itself already happened); failures are logged and audited."""
    try:
        with runtime.sessions() as session:
            entry = session.get(CatalogEntry, dataset)
            exists = session.get(DatasetRecord, dataset) is not None
            if entry is None or entry.status == "draft":
                return ()
            status = entry.status
        if not exists:
            # The whole dataset was shredded: its record says so, here and at every remote.
            return withdraw_dataset(runtime, dataset, actor).outcomes if status == "published" else ()
        _, outcomes = refresh(runtime, dataset, actor)
        return outcomes
    except Exception as exc:
        log.error(
            "catalog record not refreshed after a change", extra={"dataset": dataset, "error": str(exc)}
        )
        runtime.audit.record(actor, "catalog.refresh", dataset, "failure", reasons=[str(exc)[:300]])
        return ()


def publications(runtime: Runtime, dataset: str | None = None, limit: int = 200) -> list[CatalogPublication]:
    with runtime.sessions() as session:
        query = select(CatalogPublication).order_by(CatalogPublication.id.desc()).limit(limit)
        if dataset is not None:
            query = query.where(CatalogPublication.dataset == dataset)
        rows = list(session.execute(query).scalars())
        session.expunge_all()
    return rows
