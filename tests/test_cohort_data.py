"""What a job's model is given: the cohort's studies of a real encrypted dataset (synthetic cohort,
real ingest), decrypted in memory and turned into tensors as a model's input spec asks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from connector.compute.cohort_data import (
    CohortFilter,
    StudySkipped,
    cohort_inputs,
    decrypted_instances,
    select_studies,
    study_tensor,
)
from connector.compute.manifest import InputSpec
from connector.datasets.ingest import ingest
from connector.datasets.models import ObjectRecord, StudyRecord
from connector.datasets.vault import ObjectIntegrityError
from connector.deid.options import DEFAULT_OPTIONS
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.synth import generate_cohort

DATASET = "cohort-data"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("cohort-data")
    generate_cohort(folder / "incoming", 2, seed=11)
    built = build_runtime(load_settings(data_dir=folder / "data"))
    ingest(built, folder / "incoming", DATASET, DEFAULT_OPTIONS)
    yield built
    built.close()


def everyone(runtime: Runtime) -> set[str]:
    with runtime.sessions() as session:
        return set(session.execute(select(StudyRecord.patient_pseudonym)).scalars())


def spec(**changes: object) -> InputSpec:
    base: dict[str, object] = {"modalities": ["CT"], "dimensions": 3, "spatial_size": [32, 32, 8]}
    base.update(changes)
    return InputSpec.model_validate(base)


def test_the_cohort_filter_and_the_consent_policy_choose_the_studies(runtime: Runtime) -> None:
    patients = sorted(everyone(runtime))
    assert len(patients) == 2
    ct = select_studies(runtime, DATASET, CohortFilter(modality=("CT",)), patients)
    assert len(ct) == 2 and {study.pseudonym for study in ct} == set(patients)
    # A patient outside the included set (opted out) is never selected, whatever the filter.
    only_first = select_studies(runtime, DATASET, CohortFilter(modality=("CT",)), patients[:1])
    assert [study.pseudonym for study in only_first] == patients[:1]
    everything = select_studies(runtime, DATASET, CohortFilter(), patients)
    mr_or_ct = select_studies(runtime, DATASET, CohortFilter(modality=("CT", "MR")), patients)
    assert len(everything) > len(mr_or_ct) > len(ct)
    assert select_studies(runtime, DATASET, CohortFilter(modality=("CT",), sex=("X",)), patients) == []


def test_a_ct_study_becomes_a_resampled_normalised_volume(runtime: Runtime) -> None:
    [study, *_] = select_studies(runtime, DATASET, CohortFilter(modality=("CT",)), everyone(runtime))
    instances = decrypted_instances(runtime, DATASET, study)
    assert any(str(instance.Modality) == "CT" for instance in instances)
    volume = study_tensor(instances, spec(spacing_mm=[2.0, 2.0, 4.0]))
    assert volume.shape == (1, 32, 32, 8) and volume.dtype == torch.float32
    assert float(volume.min()) >= 0.0 and float(volume.max()) <= 1.0 and float(volume.max()) > 0.0
    window = study_tensor(
        instances, spec(normalisation={"kind": "window", "window_center": 40, "window_width": 400})
    )
    assert float(window.min()) >= 0.0 and float(window.max()) <= 1.0
    zscore = study_tensor(instances, spec(normalisation={"kind": "zscore"}))
    assert abs(float(zscore.mean())) < 0.1
    three = study_tensor(instances, spec(channels=3))
    assert three.shape == (3, 32, 32, 8) and torch.equal(three[0], three[2])


def test_2d_inputs_take_the_middle_image_of_the_largest_series(runtime: Runtime) -> None:
    studies = select_studies(runtime, DATASET, CohortFilter(modality=("CR", "DX")), everyone(runtime))
    assert studies
    flat = spec(modalities=["CR", "DX"], dimensions=2, spatial_size=[64, 48])
    inputs = list(cohort_inputs(runtime, DATASET, studies, flat))
    assert all(item.tensor is not None and item.tensor.shape == (1, 64, 48) for item in inputs)


def test_a_study_without_the_wanted_modality_is_skipped_with_a_reason(runtime: Runtime) -> None:
    mr = select_studies(runtime, DATASET, CohortFilter(modality=("MR",)), everyone(runtime))
    [item, *_] = list(cohort_inputs(runtime, DATASET, mr, spec(modalities=["CT"])))
    assert item.tensor is None and "no instance with pixels of modality CT" in item.reason
    with pytest.raises(StudySkipped):
        study_tensor([], spec())


def test_a_tampered_object_fails_the_study_and_names_the_object(runtime: Runtime) -> None:
    [study, *_] = select_studies(runtime, DATASET, CohortFilter(modality=("MR",)), everyone(runtime))
    with runtime.sessions() as session:
        key = (
            session.execute(select(ObjectRecord.object_key).where(ObjectRecord.study_uid == study.study_uid))
            .scalars()
            .first()
        )
    assert key is not None
    original = runtime.objects.get(key)
    tampered = bytearray(original)
    tampered[-40] ^= 1
    path = Path(runtime.settings.effective_objects_dir) / key
    path.write_bytes(bytes(tampered))
    try:
        with pytest.raises(ObjectIntegrityError, match=key):
            decrypted_instances(runtime, DATASET, study)
    finally:
        path.write_bytes(original)
    assert decrypted_instances(runtime, DATASET, study)
