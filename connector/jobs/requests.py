"""The job request a researcher submits (the API edge), besides the package and its signature."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from connector.compute.cohort_data import CohortFilter
from connector.crypto.dataset_secrets import DATASET_NAME_PATTERN

Value = Annotated[str, Field(min_length=1, max_length=64)]


class CohortQuery(BaseModel):
    """Which studies of the dataset: values within a field are alternatives, fields combine."""

    model_config = ConfigDict(extra="forbid")

    modality: list[Value] = Field(default_factory=list, max_length=20)
    body_part: list[Value] = Field(default_factory=list, max_length=20)
    age_band: list[Value] = Field(default_factory=list, max_length=20)
    sex: list[Value] = Field(default_factory=list, max_length=5)
    study_year: list[Value] = Field(default_factory=list, max_length=50)
    manufacturer: list[Value] = Field(default_factory=list, max_length=20)

    def to_filter(self) -> CohortFilter:
        return CohortFilter(**{name: tuple(values) for name, values in self.model_dump().items()})


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(pattern=DATASET_NAME_PATTERN)
    purpose: str = Field(min_length=1, max_length=64, description="EHDS purpose code, e.g. ai-development")
    permit: str = Field(min_length=1, max_length=16_384, description="The data permit (JWT) from the HDAB")
    cohort: CohortQuery = Field(default_factory=CohortQuery)
    batch_size: int = Field(default=8, ge=1, le=256)
