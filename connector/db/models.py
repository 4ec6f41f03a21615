"""Imports every domain's models so that Alembic and tests see the whole schema.

Add one import line per domain package that declares tables; declare no table here.
"""

from connector.audit.models import AuditCheckpoint, AuditEntry, AuditHead
from connector.cataloging.models import CatalogDocument, CatalogEntry, CatalogFacet, CatalogPublication
from connector.compute.models import TeamKey
from connector.datasets.models import DatasetRecord, ObjectRecord, StudyRecord
from connector.policy.models import ConsentRecord, PolicyVersion, RevokedPermit

__all__ = [
    "AuditCheckpoint",
    "AuditEntry",
    "AuditHead",
    "CatalogDocument",
    "CatalogEntry",
    "CatalogFacet",
    "CatalogPublication",
    "ConsentRecord",
    "DatasetRecord",
    "ObjectRecord",
    "PolicyVersion",
    "RevokedPermit",
    "StudyRecord",
    "TeamKey",
]
