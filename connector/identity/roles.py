"""The roles a caller can hold. Routes admit roles, never individual users.

This module only names roles; it never decides who holds one (the issuer's token does).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Role(StrEnum):
    STEWARD = "steward"  # hospital data steward: ingests and publishes
    DPO = "dpo"  # data protection officer: policies, consent, audit
    RESEARCHER = "researcher"  # external AI team: finds data, runs compute-to-data jobs
    HDAB = "hdab"  # Health Data Access Body: issues data permits
    PEER = "peer"  # another connector


def parse_roles(names: Iterable[Role | str]) -> frozenset[Role]:
    """The roles named by `names`; ValueError naming every unknown one (or none given).

    For places where a person types role names (the CLI, the development issuer): there a typo must
    be an error, unlike in a verified token, where unknown names are simply not roles of ours.
    """
    given = [str(name) for name in names]
    valid = {role.value: role for role in Role}
    unknown = sorted({name for name in given if name not in valid})
    if unknown or not given:
        named = ", ".join(repr(name) for name in unknown) if unknown else "(none given)"
        raise ValueError(f"unknown role(s) {named}; choose from {', '.join(valid)}")
    return frozenset(valid[name] for name in given)
