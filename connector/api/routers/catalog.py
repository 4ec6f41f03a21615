"""The catalog over HTTP: the public, harvestable `/catalog` (DCAT with Hydra paging, content
negotiation, faceted search) and the steward's routes to describe, publish and withdraw.

Public routes serve published records only; nothing here computes a count or reads the index
(connector.cataloging does, through the policy's small-cell rule).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from catalog.render import MEDIA_TYPES, Format, negotiate, render_stored
from catalog.steward_file import StewardFileError, steward_fields_from_mapping, steward_fields_to_mapping
from connector.api.errors import ApiError
from connector.api.security import public, requires, runtime_of
from connector.cataloging import service
from connector.cataloging.listing import SearchFilters, catalog_page
from connector.cataloging.service import CatalogRefused, PushReport, UnknownEntry
from connector.crypto.dataset_secrets import DATASET_NAME_PATTERN
from connector.identity.principal import Principal
from connector.identity.roles import Role

router = APIRouter(tags=["catalog"])
Steward = Annotated[Principal, Depends(requires(Role.STEWARD))]
DatasetName = Annotated[str, Path(pattern=DATASET_NAME_PATTERN, description="The dataset's name.")]
FORMATS: tuple[Format, ...] = ("jsonld", "turtle", "rdfxml")


def _format(request: Request, format: str | None) -> Format:
    if format is not None:
        for known in FORMATS:
            if format == known:
                return known
        raise ApiError(400, "unknown_format", f"format must be one of {', '.join(FORMATS)}")
    chosen = negotiate(request.headers.get("accept"))
    if chosen is None:
        raise ApiError(
            406,
            "not_acceptable",
            "the catalog is served as " + ", ".join(MEDIA_TYPES[f] for f in FORMATS),
        )
    return chosen


def _rdf(document: str, fmt: Format) -> Response:
    return Response(document, media_type=MEDIA_TYPES[fmt], headers={"Vary": "Accept"})


FormatParam = Annotated[
    str | None, Query(description="jsonld, turtle or rdfxml; overrides the Accept header.")
]


@router.get(
    "/catalog",
    dependencies=[Depends(public())],
    summary="The catalog (dcat:Catalog, Hydra-paged); with filters, a faceted search",
)
async def get_catalog(
    request: Request,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int | None, Query(ge=1, le=500)] = None,
    modality: Annotated[list[str], Query(max_length=20, description="DICOM modality, e.g. CT")] = [],  # noqa: B006
    body_part: Annotated[list[str], Query(max_length=20, description="DICOM body part, e.g. CHEST")] = [],  # noqa: B006
    disease: Annotated[list[str], Query(max_length=20, description="ICD-10 or SNOMED CT code")] = [],  # noqa: B006
    purpose: Annotated[list[str], Query(max_length=20, description="Purpose code, e.g. ai-development")] = [],  # noqa: B006
    country: Annotated[list[str], Query(max_length=20, description="ISO 3166-1 alpha-2")] = [],  # noqa: B006
    age: Annotated[int | None, Query(ge=0, le=130, description="Within the typical age range")] = None,
    format: FormatParam = None,
) -> Response:
    runtime = runtime_of(request)
    fmt = _format(request, format)
    for values in (modality, body_part, disease, purpose, country):
        if any(len(value) > 100 for value in values):
            raise ApiError(400, "invalid_filter", "a search value is longer than 100 characters")
    filters = SearchFilters(
        modality=tuple(v.upper() for v in modality),
        body_part=tuple(v.upper() for v in body_part),
        disease=tuple(disease),
        purpose=tuple(purpose),
        country=tuple(v.upper() for v in country),
        age=age,
    )
    size = per_page or runtime.settings.catalog_page_size
    document, _ = await run_in_threadpool(catalog_page, runtime, filters, page, size, fmt)
    return _rdf(document, fmt)


@router.get(
    "/catalog/datasets/{dataset}",
    dependencies=[Depends(public())],
    summary="One dataset's HealthDCAT-AP record",
)
def get_record(request: Request, dataset: DatasetName, format: FormatParam = None) -> Response:
    fmt = _format(request, format)
    try:
        record = service.stored_record(runtime_of(request), dataset)
    except UnknownEntry as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return _rdf(render_stored(record, fmt), fmt)


class EntryOut(BaseModel):
    dataset: str
    status: str
    version: int
    modified: str
    warnings: list[str]


class PushOut(BaseModel):
    target: str
    action: str
    ok: bool
    status_code: int | None
    attempts: int
    error: str


class PublishOut(BaseModel):
    entry: EntryOut
    pushes: list[PushOut]


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: list[str] = Field(default_factory=list, max_length=20, description="Remote catalogs to push to.")


def _entry(view: service.EntryView) -> EntryOut:
    return EntryOut(
        dataset=view.dataset,
        status=view.status,
        version=view.version,
        modified=view.modified,
        warnings=list(view.warnings),
    )


def _report(report: PushReport) -> PublishOut:
    return PublishOut(
        entry=_entry(report.entry),
        pushes=[
            PushOut(
                target=o.remote,
                action=o.action,
                ok=o.ok,
                status_code=o.status_code,
                attempts=o.attempts,
                error=o.error,
            )
            for o in report.outcomes
        ],
    )


def _refused(exc: CatalogRefused) -> ApiError:
    return ApiError(422, "invalid_record", str(exc).splitlines()[0], problems=exc.problems)


@router.get(
    "/v1/catalog/datasets/{dataset}/description",
    summary="The steward's description of a dataset (the fields not derived from the data)",
)
def get_description(request: Request, dataset: DatasetName, _: Steward) -> dict[str, Any]:
    try:
        fields = service.steward_fields_of(runtime_of(request), dataset)
    except UnknownEntry as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return steward_fields_to_mapping(fields)


@router.put(
    "/v1/catalog/datasets/{dataset}/description",
    response_model=EntryOut,
    summary="Describe a dataset (validated; a published record updates at once)",
)
def put_description(
    request: Request,
    dataset: DatasetName,
    principal: Steward,
    body: Annotated[dict[str, Any], Body(description="The fields of the steward's TOML file, as JSON.")],
) -> EntryOut:
    try:
        fields = steward_fields_from_mapping(body)
        view = service.set_description(runtime_of(request), dataset, fields, principal.subject)
    except StewardFileError as exc:
        raise ApiError(
            422, "invalid_description", "the description has problems", problems=exc.problems
        ) from None
    except CatalogRefused as exc:
        raise _refused(exc) from None
    except UnknownEntry as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return _entry(view)


@router.post(
    "/v1/catalog/datasets/{dataset}/publish",
    response_model=PublishOut,
    summary="Publish in this catalog and push to remote catalogs",
)
def post_publish(
    request: Request, dataset: DatasetName, principal: Steward, body: PublishBody | None = None
) -> PublishOut:
    try:
        report = service.publish_dataset(
            runtime_of(request), dataset, body.to if body else [], principal.subject
        )
    except CatalogRefused as exc:
        raise _refused(exc) from None
    except UnknownEntry as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return _report(report)


@router.post(
    "/v1/catalog/datasets/{dataset}/withdraw",
    response_model=PublishOut,
    summary="Withdraw a record here and from every remote catalog that holds it",
)
def post_withdraw(request: Request, dataset: DatasetName, principal: Steward) -> PublishOut:
    try:
        report = service.withdraw_dataset(runtime_of(request), dataset, principal.subject)
    except UnknownEntry as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return _report(report)


class PublicationOut(BaseModel):
    dataset: str
    target: str
    action: str
    version: int
    ok: bool
    status_code: int | None
    attempts: int
    answer: str
    error: str
    at: str
    actor: str


@router.get(
    "/v1/catalog/publications",
    response_model=list[PublicationOut],
    summary="Pushes to remote catalogs, newest first, with each remote's answer",
)
def get_publications(
    request: Request,
    _: Steward,
    dataset: Annotated[str | None, Query(pattern=DATASET_NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[PublicationOut]:
    rows = service.publications(runtime_of(request), dataset, limit)
    return [
        PublicationOut(
            dataset=r.dataset,
            target=r.target,
            action=r.action,
            version=r.version,
            ok=r.ok,
            status_code=r.status_code,
            attempts=r.attempts,
            answer=r.answer,
            error=r.error,
            at=r.at,
            actor=r.actor,
        )
        for r in rows
    ]
