"""The data a job's model sees: the cohort's studies, decrypted in memory and turned into tensors.

`select_studies` applies the researcher's cohort filter (modality, body part, age band, sex,
study year, manufacturer) to the patients the consent policy includes. `study_tensor` builds one
tensor per study from its decrypted instances with MONAI transforms, as the model's input spec
asks: 2D (one image) or 3D (the largest matching series as a volume in patient orientation,
resampled to the spacing asked for), resized, normalised, with the channels asked for.

Plaintext never touches a disk here: objects are decrypted into memory, parsed, turned into
arrays and dropped. A study the model cannot take (no instance of a wanted modality, no pixels)
is skipped with a reason, never guessed at.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import select

from connector.compute.manifest import InputSpec
from connector.datasets.models import ObjectRecord, StudyRecord
from connector.datasets.vault import DatasetVault
from connector.runtime import Runtime

# numpy, pydicom, torch and MONAI load when a study is first read, not with this module: the DSP
# provider, the job queue and the CLI import CohortFilter and must start without them.
if TYPE_CHECKING:
    import numpy as np
    import pydicom
    import torch

FILTER_FIELDS = ("modality", "body_part", "age_band", "sex", "study_year", "manufacturer")


@dataclass(frozen=True)
class CohortFilter:
    """Which studies a job asks for. Values within a field are alternatives; fields combine."""

    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    age_band: tuple[str, ...] = ()
    sex: tuple[str, ...] = ()
    study_year: tuple[str, ...] = ()
    manufacturer: tuple[str, ...] = ()

    def matches(self, study: StudyRecord) -> bool:
        if self.modality and not set(self.modality) & set(filter(None, study.modalities.split(","))):
            return False
        return all(
            not getattr(self, name) or getattr(study, name) in getattr(self, name)
            for name in FILTER_FIELDS[1:]
        )


@dataclass(frozen=True)
class CohortStudy:
    """A study of the cohort (its key stays wrapped until the study is read)."""

    study_uid: str
    pseudonym: str


@dataclass(frozen=True)
class StudyInput:
    study_uid: str
    tensor: torch.Tensor | None  # None: skipped, `reason` says why
    reason: str = ""


class StudySkipped(Exception):
    """This study cannot be given to the model; the message says why (no PHI in it)."""


def select_studies(
    runtime: Runtime, dataset: str, cohort: CohortFilter, included: Iterable[str] | None
) -> list[CohortStudy]:
    """The dataset's studies that match `cohort`, of the patients in `included` only (None: of
    every patient, before consent, as the access decision counts them)."""
    allowed = None if included is None else set(included)
    with runtime.sessions() as session:
        rows = session.execute(
            select(StudyRecord).where(StudyRecord.dataset == dataset).order_by(StudyRecord.study_uid)
        ).scalars()
        return [
            CohortStudy(row.study_uid, row.patient_pseudonym)
            for row in rows
            if (allowed is None or row.patient_pseudonym in allowed) and cohort.matches(row)
        ]


def runnable_studies(
    runtime: Runtime, dataset: str, studies: list[CohortStudy], modalities: Iterable[str]
) -> list[CohortStudy]:
    """The studies of `studies` that hold an image of one of `modalities`: those the model can be
    given, counted before it runs (from the index; nothing is decrypted). The cohort a job's k is
    checked on is the patients of these, not of every study the filter matched: a model whose
    manifest wants MR sees only the patients with MR studies, however many the filter counted. A
    study that still yields no tensor is skipped at run time, and the release counts only the
    patients whose studies gave an output."""
    wanted = sorted(set(modalities))
    if not studies or not wanted:
        return []
    with runtime.sessions() as session:
        having = set(
            session.execute(
                select(ObjectRecord.study_uid)
                .where(ObjectRecord.dataset == dataset, ObjectRecord.modality.in_(wanted))
                .distinct()
            ).scalars()
        )
    return [study for study in studies if study.study_uid in having]


def decrypted_instances(
    runtime: Runtime, dataset: str, study: CohortStudy, modalities: Iterable[str] | None = None
) -> list[pydicom.Dataset]:
    """The study's instances (of `modalities` only, when given: nothing else is decrypted),
    decrypted and parsed in memory; ObjectIntegrityError on any object that fails authentication.
    The study's key is unwrapped once."""
    import pydicom

    vault = DatasetVault(dataset, runtime.keys, runtime.sessions)
    data_key = vault.study_key(study.study_uid)
    with runtime.sessions() as session:
        objects = list(
            session.execute(
                select(ObjectRecord.object_key, ObjectRecord.plain_sha256, ObjectRecord.modality).where(
                    ObjectRecord.dataset == dataset, ObjectRecord.study_uid == study.study_uid
                )
            ).all()
        )
    if modalities is not None:
        wanted = set(modalities)
        objects = [row for row in objects if row.modality in wanted]
    return [
        pydicom.dcmread(
            io.BytesIO(vault.decrypt(runtime.objects.get(key), data_key, study.study_uid, key, digest))
        )
        for key, digest, _ in objects
    ]


def _pixels(instance: pydicom.Dataset) -> np.ndarray:
    """Modality values (e.g. Hounsfield units) of one frame, as float32; RGB becomes grey."""
    import numpy as np
    from pydicom.pixels import apply_modality_lut

    array = instance.pixel_array
    if getattr(instance, "SamplesPerPixel", 1) == 3:
        array = array.astype(np.float32).mean(axis=-1)
    elif int(getattr(instance, "NumberOfFrames", 1) or 1) > 1:
        array = array[len(array) // 2]  # a multi-frame image in 2D: its middle frame
    return np.asarray(apply_modality_lut(array, instance), dtype=np.float32)


def _has_pixels(instance: pydicom.Dataset, modalities: set[str]) -> bool:
    return "PixelData" in instance and str(getattr(instance, "Modality", "")) in modalities


def _slice_position(instance: pydicom.Dataset) -> float:
    # Distance along the slice normal: robust to any orientation, unlike z alone.
    import numpy as np

    orientation = [float(v) for v in getattr(instance, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    normal = np.cross(orientation[:3], orientation[3:])
    position = [
        float(v)
        for v in getattr(
            instance, "ImagePositionPatient", [0, 0, float(instance.get("InstanceNumber", 0) or 0)]
        )
    ]
    return float(np.dot(normal, position))


def _volume(series: list[pydicom.Dataset]) -> tuple[np.ndarray, tuple[float, float, float]]:
    import numpy as np

    ordered = sorted(series, key=_slice_position)
    volume = np.stack([_pixels(instance) for instance in ordered], axis=-1)  # (rows, cols, slices)
    row_spacing, col_spacing = (float(v) for v in getattr(ordered[0], "PixelSpacing", [1.0, 1.0]))
    if len(ordered) > 1:
        between = abs(_slice_position(ordered[1]) - _slice_position(ordered[0]))
    else:
        between = float(getattr(ordered[0], "SliceThickness", 1.0) or 1.0)
    return volume, (row_spacing, col_spacing, between or 1.0)


def _normalise(tensor: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRange

    norm = spec.normalisation
    # MONAI annotates its transforms as ndarray-or-tensor in and out; a tensor in gives a tensor out.
    transform: Callable[[torch.Tensor], Any]
    if norm.kind == "window":
        assert norm.window_center is not None and norm.window_width is not None
        low = norm.window_center - norm.window_width / 2
        transform = ScaleIntensityRange(low, low + norm.window_width, 0.0, 1.0, clip=True)
    elif norm.kind == "zscore":
        transform = NormalizeIntensity()
    else:
        transform = ScaleIntensity(minv=0.0, maxv=1.0)
    return cast("torch.Tensor", transform(tensor))


def study_tensor(instances: list[pydicom.Dataset], spec: InputSpec) -> torch.Tensor:
    """The model's input for one study: (channels, *spatial_size), float32; StudySkipped if none."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Resize, ResizeWithPadOrCrop, Spacing

    wanted = set(spec.modalities)
    usable = [instance for instance in instances if _has_pixels(instance, wanted)]
    if not usable:
        raise StudySkipped(f"no instance with pixels of modality {', '.join(sorted(wanted))}")
    if spec.dimensions == 2:
        series = _largest_series(usable)
        middle = sorted(series, key=_slice_position)[len(series) // 2]
        image = torch.from_numpy(_pixels(middle))[None]  # (1, rows, cols)
        tensor = Resize(spatial_size=spec.spatial_size, mode="bilinear")(image)
    else:
        volume, spacing = _volume(_largest_series(usable))
        image = MetaTensor(torch.from_numpy(volume)[None], affine=torch.diag(torch.tensor([*spacing, 1.0])))
        if spec.spacing_mm is not None:
            image = Spacing(pixdim=spec.spacing_mm, mode="bilinear")(image)
        tensor = ResizeWithPadOrCrop(spatial_size=spec.spatial_size)(image)
    tensor = _normalise(torch.as_tensor(tensor, dtype=torch.float32), spec)
    tensor = torch.as_tensor(tensor).as_subclass(torch.Tensor).float()
    if spec.channels == 3:
        tensor = tensor.repeat(3, *([1] * spec.dimensions))
    if not torch.isfinite(tensor).all():
        raise StudySkipped("the image holds values that are not finite")
    return tensor.contiguous()


def _largest_series(instances: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for instance in instances:
        by_series.setdefault(str(getattr(instance, "SeriesInstanceUID", "")), []).append(instance)
    return max(by_series.values(), key=len)


def cohort_inputs(
    runtime: Runtime, dataset: str, studies: Iterable[CohortStudy], spec: InputSpec
) -> Iterator[StudyInput]:
    """Tensors for each study in turn (decrypt, parse, transform); skipped studies say why."""
    for study in studies:
        try:
            yield StudyInput(
                study.study_uid,
                study_tensor(decrypted_instances(runtime, dataset, study, spec.modalities), spec),
            )
        except StudySkipped as exc:
            yield StudyInput(study.study_uid, None, str(exc))
