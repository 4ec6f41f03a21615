"""Ground truth of a synthetic cohort: which identifying value was planted where.

``Recorder`` sets a DICOM attribute and notes the value and its place (a keyword, a nested path
such as ``RequestAttributesSequence[0].RequestedProcedureID``, a private tag path such as
``(0009,1010)[0].(0009,1001)``, or ``pixels`` with the burned-in text and its bounding box).
``resolve`` reads such a place back from a dataset. ``write_manifest`` writes the JSON file.
This module never invents values and never writes DICOM files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from connector.synth.vr import fit

MANIFEST_NAME = "synth-manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Planted:
    """One identifying value planted in a file.

    ``kind`` groups values for de-identification tests (name, id, date, time, datetime, text,
    address, phone, institution, device, demographic, uid, pixels). ``bbox`` is
    ``[left, top, right, bottom]`` in pixel coordinates, only for burned-in text.
    """

    where: str
    value: str
    kind: str
    bbox: tuple[int, int, int, int] | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.bbox is None:
            del data["bbox"]
        else:
            data["bbox"] = list(self.bbox)
        return data


class Recorder:
    """Sets attributes on a dataset and records each identifying value with its place."""

    def __init__(self, items: list[Planted] | None = None, prefix: str = "") -> None:
        self.items: list[Planted] = [] if items is None else items
        self.prefix = prefix

    def at(self, path: str) -> Recorder:
        """A recorder for a nested dataset, e.g. ``at("OtherPatientIDsSequence[0]")``."""
        return Recorder(self.items, f"{self.prefix}{path}.")

    def fork(self) -> Recorder:
        """An independent copy (the series' values plus whatever one instance adds)."""
        return Recorder(list(self.items), self.prefix)

    def note(self, where: str, value: str | Iterable[str], kind: str) -> None:
        values = [value] if isinstance(value, str) else list(value)
        for item in values:
            if item:
                self.items.append(Planted(f"{self.prefix}{where}", item, kind))

    def set(self, ds: Dataset, keyword: str, value: str | list[str], kind: str) -> None:
        """``ds.<keyword> = value`` (cut to the VR's length) and note every non-empty value."""
        vr = dictionary_VR(keyword)
        value = fit(value, vr) if isinstance(value, str) else [fit(item, vr) for item in value]
        setattr(ds, keyword, value)
        self.note(keyword, value, kind)

    def private(self, ds: Dataset, tag: int, vr: str, value: str, kind: str) -> None:
        """Add a private element whose creator already holds its block, and note it."""
        value = fit(value, vr)
        ds.add_new(tag, vr, value)
        self.note(_tag_text(tag), value, kind)

    def pixels(self, text: str, bbox: tuple[int, int, int, int]) -> None:
        self.items.append(Planted("pixels", text, "pixels", bbox))


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


_STEP = re.compile(r"^(?P<name>\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)|[A-Za-z0-9]+)(?:\[(?P<index>\d+)\])?$")


def resolve(ds: Dataset, where: str) -> list[str]:
    """The string values found at ``where`` in ``ds`` ([] when absent); not for ``pixels``."""
    current: Any = ds
    for step in where.split("."):
        match = _STEP.match(step)
        if match is None:
            raise ValueError(f"not a manifest path step: {step!r}")
        name = match["name"]
        tag = Tag(int(name[1:5], 16), int(name[6:10], 16)) if name.startswith("(") else Tag(name)
        if not isinstance(current, Dataset) or tag not in current:
            return []
        current = current[tag].value
        if match["index"] is not None:
            position = int(match["index"])
            if position >= len(current):
                return []
            current = current[position]
    if current is None:
        return []
    if isinstance(current, MultiValue | list):
        return [str(item) for item in current]
    if isinstance(current, bytes):
        return [current.decode("utf-8", "replace")]
    return [str(current)]


@dataclass(frozen=True)
class FileRecord:
    """One written file as the manifest describes it."""

    path: str
    patient: str
    modality: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    bytes: int
    phi: tuple[Planted, ...]

    def as_json(self) -> dict[str, Any]:
        data = {key: value for key, value in self.__dict__.items() if key != "phi"}
        data["phi"] = [item.as_json() for item in self.phi]
        return data


@dataclass(frozen=True)
class WrittenFile:
    """What a worker hands back per file: counts for the summary and its manifest entry as JSON text.

    Workers serialise their own entries so the parent process only concatenates text.
    """

    path: str
    study_instance_uid: str
    series_instance_uid: str
    bytes: int
    entry: str

    @classmethod
    def of(cls, record: FileRecord) -> WrittenFile:
        return cls(
            path=record.path,
            study_instance_uid=record.study_instance_uid,
            series_instance_uid=record.series_instance_uid,
            bytes=record.bytes,
            entry=_dumps(record.as_json()),
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def write_manifest(path: Path, seed: int, patients: list[dict[str, Any]], files: list[WrittenFile]) -> None:
    """Write the manifest atomically (a temporary file renamed over the target), files sorted by path."""
    head = _dumps(
        {
            "format": "connector.synth manifest",
            "version": MANIFEST_VERSION,
            "seed": seed,
            "patients": patients,
        }
    )
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        # The head is a complete JSON object; reopen it to append the (pre-serialised) file list.
        handle.write(head[:-1])
        handle.write(',"files":[')
        handle.write(",".join(item.entry for item in sorted(files, key=lambda item: item.path)))
        handle.write("]}")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def load_manifest(path: Path) -> dict[str, Any]:
    """Read a manifest written by ``write_manifest``."""
    with path.open(encoding="utf-8") as handle:
        document: dict[str, Any] = json.load(handle)
    return document
