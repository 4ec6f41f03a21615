"""Export: decrypt a dataset back to the exact de-identified files, for its data stewards.

Each object is authenticated before a single byte of it is written, and is written atomically
(temporary file, then rename), so an export never holds wrong or partial bytes. An object that
fails verification is named and the export stops.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from connector.atomic_files import write_atomically
from connector.datasets.models import DatasetRecord, ObjectRecord
from connector.datasets.vault import DatasetVault
from connector.runtime import Runtime
from connector.storage.objects import ObjectStoreError


class UnknownDataset(LookupError):
    pass


def export_dataset(
    runtime: Runtime, dataset: str, out_dir: Path, progress: Callable[[int], None] | None = None
) -> int:
    with runtime.sessions() as session:
        if session.get(DatasetRecord, dataset) is None:
            raise UnknownDataset(f"no dataset {dataset!r}")
        objects = list(
            session.execute(
                select(ObjectRecord).where(ObjectRecord.dataset == dataset).order_by(ObjectRecord.object_key)
            ).scalars()
        )
    vault = DatasetVault(dataset, runtime.keys, runtime.sessions)
    out_dir.mkdir(parents=True, exist_ok=True)
    for record in objects:
        try:
            ciphertext = runtime.objects.get(record.object_key)
        except ObjectStoreError as exc:
            raise ObjectStoreError(f"object {record.object_key}: {exc}") from None
        plaintext = vault.open(ciphertext, record.study_uid, record.object_key, record.plain_sha256)
        target = out_dir / record.relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, plaintext)
        if progress:
            progress(1)
    return len(objects)
