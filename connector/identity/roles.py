"""The roles a caller can hold. Routes admit roles, never individual users."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    STEWARD = "steward"  # hospital data steward: ingests and publishes
    DPO = "dpo"  # data protection officer: policies, consent, audit
    RESEARCHER = "researcher"  # external AI team: finds data, runs compute-to-data jobs
    HDAB = "hdab"  # Health Data Access Body: issues data permits
    PEER = "peer"  # another connector
