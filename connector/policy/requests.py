"""The stable request formats that policies decide on, as pydantic models (the API edge).

Access: {"action": "access", "dataset", "purpose", "requester": {"id", "organisation", "country"},
"permit": JWT or null, "cohort": {"size"}} (documented in policies/README.md). Release: what a job
wants to let out. `problems` lists, in words, why a document does not fit; it never raises.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Requester(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    organisation: str = Field(min_length=1, max_length=200)
    country: str = Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2")


class CohortSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0, le=100_000_000)


class AccessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["access"] = "access"
    dataset: str = Field(min_length=1, max_length=64)
    purpose: str = Field(min_length=1, max_length=64)
    requester: Requester
    permit: str | None = Field(default=None, max_length=16_384)
    cohort: CohortSize


class ReleaseResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["aggregate", "per-study"]
    cohort_size: int = Field(ge=0)
    min_cell: int | None = Field(default=None, ge=0)
    contains_pixels: bool = False
    contains_pseudonyms: bool = False
    bytes: int = Field(ge=0)
    # The release channel (egress.rego caps each): labels per study, decimals of per-study values
    # (null for an aggregate), studies the result describes, and every number it releases.
    labels: int = Field(ge=0)
    decimals: int | None = Field(ge=0)
    studies: int = Field(ge=0)
    numbers: int = Field(ge=0)


class ReleaseBudget(BaseModel):
    """Numbers already released to the job's team from this dataset (the limit is the DPO's)."""

    model_config = ConfigDict(extra="forbid")

    used: int = Field(ge=0)


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["release"] = "release"
    dataset: str = Field(min_length=1, max_length=64)
    result: ReleaseResult
    budget: ReleaseBudget


def problems(error: ValidationError) -> list[str]:
    """Each validation problem as `field: message`, never echoing the input value."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(request)"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{where}: {message}")
    return lines


def parse_access(document: Any) -> AccessRequest | list[str]:
    try:
        return AccessRequest.model_validate(document)
    except ValidationError as exc:
        return problems(exc)


def parse_release(document: Any) -> ReleaseRequest | list[str]:
    try:
        return ReleaseRequest.model_validate(document)
    except ValidationError as exc:
        return problems(exc)
