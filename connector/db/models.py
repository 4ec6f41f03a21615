"""Imports every domain's models so that Alembic and tests see the whole schema.

Add one import line per domain package that declares tables; declare no table here.
"""

from connector.audit.models import AuditCheckpoint, AuditEntry, AuditHead
from connector.cataloging.models import CatalogDocument, CatalogEntry, CatalogFacet, CatalogPublication
from connector.compute.models import TeamKey
from connector.datasets.models import DatasetRecord, ObjectRecord, RefusedPatient, StudyRecord
from connector.dataspace.models import Agreement, Negotiation, SeenToken, Transfer
from connector.jobs.models import ReleaseBudget
from connector.policy.models import ConsentRecord, PolicyApproval, PolicyVersion, RevokedPermit

__all__ = [
    "Agreement",
    "AuditCheckpoint",
    "AuditEntry",
    "AuditHead",
    "CatalogDocument",
    "CatalogEntry",
    "CatalogFacet",
    "CatalogPublication",
    "ConsentRecord",
    "DatasetRecord",
    "Negotiation",
    "ObjectRecord",
    "PolicyApproval",
    "PolicyVersion",
    "RefusedPatient",
    "ReleaseBudget",
    "RevokedPermit",
    "SeenToken",
    "StudyRecord",
    "TeamKey",
    "Transfer",
]
