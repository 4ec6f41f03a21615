"""Run de-identification over a folder: parallel workers, atomic outputs, quarantine, report.

Every input file gets exactly one outcome: written, quarantined (the original copied into the
quarantine folder, never under OUT_DIR) or skipped (a duplicate). Outputs appear under their
final names only once complete and verified; one bad file never stops the batch. Nothing
identifying goes into the report: quarantined inputs are named by an opaque id whose mapping
to the original path stays in the quarantine folder.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector.atomic_files import write_atomically
from connector.deid.engine import Refused, deidentify
from connector.deid.keys import DatasetKeys
from connector.deid.plan import Plan

REPORT_NAME = "deid-report.json"
INCOMING = ".incoming"


@dataclass
class Outcome:
    """What happened to one input (sent from a worker to the parent)."""

    source: Path
    status: str  # written | quarantined | skipped
    bytes_in: int
    temp: str | None = None
    relative: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    pseudonym: str | None = None
    modality: str | None = None
    pixel_rule: str | None = None
    code: str | None = None
    reason: str | None = None
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)


@dataclass
class RunSummary:
    report: dict[str, Any]
    report_path: Path
    written: int
    quarantined: int
    skipped: int

    @property
    def reasons(self) -> Counter[str]:
        return Counter(item["reason_code"] for item in self.report["quarantined"])


_STATE: dict[str, Any] = {}


def _init_worker(plan: Plan, keys: DatasetKeys, incoming: Path) -> None:
    _STATE.update(plan=plan, keys=keys, incoming=incoming)


def _process(path: Path) -> Outcome:
    size = path.stat().st_size if path.exists() else 0
    try:
        result = deidentify(path, _STATE["plan"], _STATE["keys"])
    except Refused as exc:
        # A file that is not DICOM at all (a README, a manifest) is no instance to review: skipped.
        status = "skipped" if exc.code == "not_dicom" else "quarantined"
        return Outcome(path, status, size, code=exc.code, reason=str(exc))
    except Exception as exc:  # a bug or an exotic file: quarantine it, keep the batch going
        return Outcome(
            path, "quarantined", size, code="internal_error", reason=f"unexpected {type(exc).__name__}"
        )
    fd, temp = tempfile.mkstemp(dir=_STATE["incoming"], suffix=".dcm")
    with os.fdopen(fd, "wb") as handle:
        handle.write(result.encoded)
    return Outcome(
        path,
        "written",
        size,
        temp=temp,
        relative=result.relative_path,
        sop_instance_uid=result.sop_instance_uid,
        study_uid=result.study_uid,
        pseudonym=result.pseudonym,
        modality=result.modality,
        pixel_rule=result.pixel_rule,
        actions=result.actions,
    )


def input_files(in_dir: Path, exclude: tuple[Path, ...]) -> list[Path]:
    """Every regular file under `in_dir`, recursively, in a stable order, outside `exclude`."""
    excluded = tuple(path.resolve() for path in exclude)
    found = []
    for root, dirs, files in os.walk(in_dir):
        root_path = Path(root).resolve()
        dirs[:] = sorted(d for d in dirs if (root_path / d).resolve() not in excluded)
        found.extend(root_path / name for name in sorted(files) if (root_path / name).is_file())
    return found


def _quarantine_id(source: Path, in_dir: Path) -> str:
    return hashlib.sha256(str(source.relative_to(in_dir)).encode()).hexdigest()[:16]


def run_batch(
    in_dir: Path,
    out_dir: Path,
    plan: Plan,
    keys: DatasetKeys,
    quarantine_dir: Path,
    dataset: str,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> RunSummary:
    in_dir, out_dir, quarantine_dir = in_dir.resolve(), out_dir.resolve(), quarantine_dir.resolve()
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist")
    if quarantine_dir == out_dir or quarantine_dir.is_relative_to(out_dir):
        raise ValueError("the quarantine folder must not be inside the output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    incoming = out_dir / INCOMING
    shutil.rmtree(incoming, ignore_errors=True)  # leftovers of an interrupted run are never outputs
    incoming.mkdir()
    files = input_files(in_dir, (out_dir, quarantine_dir))
    if on_total:
        on_total(len(files))
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    seen: dict[str, Path] = {}
    try:
        for outcome in _outcomes(files, plan, keys, incoming, workers):
            _settle(outcome, out_dir, seen)
            if outcome.status == "quarantined":
                _quarantine(outcome, in_dir, quarantine_dir / run_id)
            outcomes.append(outcome)
            if progress:
                progress(1)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    report = _report(outcomes, in_dir, plan, dataset, run_id, time.perf_counter() - started)
    report_path = out_dir / REPORT_NAME
    write_atomically(report_path, json.dumps(report, indent=2, ensure_ascii=False).encode())
    counts = Counter(outcome.status for outcome in outcomes)
    return RunSummary(report, report_path, counts["written"], counts["quarantined"], counts["skipped"])


def _outcomes(
    files: list[Path], plan: Plan, keys: DatasetKeys, incoming: Path, workers: int | None
) -> Iterator[Outcome]:
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(files) < 8:
        _init_worker(plan, keys, incoming)
        yield from map(_process, files)
        return
    # fork shares the compiled plan for free; chunks amortise the inter-process round trips.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(plan, keys, incoming)) as pool:
        yield from pool.imap(_process, files, chunksize=max(1, min(64, len(files) // (workers * 8) or 1)))


def _settle(outcome: Outcome, out_dir: Path, seen: dict[str, Path]) -> None:
    """Move a finished output under its final name, or mark it a duplicate."""
    if outcome.status != "written" or outcome.temp is None or outcome.relative is None:
        return
    if outcome.sop_instance_uid in seen:
        Path(outcome.temp).unlink(missing_ok=True)
        outcome.status, outcome.code = "skipped", "duplicate_instance"
        outcome.reason = "another input file holds the same SOP instance"
        return
    seen[outcome.sop_instance_uid or ""] = outcome.source
    target = out_dir / outcome.relative
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(outcome.temp, target)


def _quarantine(outcome: Outcome, in_dir: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    qid = _quarantine_id(outcome.source, in_dir)
    if outcome.source.exists():
        shutil.copy2(outcome.source, folder / f"{qid}.bin")
    # The index may name the original path (it can hold PHI): it stays inside the hospital's quarantine.
    with (folder / "index.jsonl").open("a", encoding="utf-8") as index:
        index.write(
            json.dumps(
                {
                    "id": qid,
                    "source": str(outcome.source),
                    "reason_code": outcome.code,
                    "reason": outcome.reason,
                },
                ensure_ascii=False,
            )
            + "\n"
        )


def _report(
    outcomes: list[Outcome], in_dir: Path, plan: Plan, dataset: str, run_id: str, seconds: float
) -> dict[str, Any]:
    actions: dict[str, Counter[str]] = {}
    studies: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        if outcome.status != "written":
            continue
        for (attribute, op), count in outcome.actions.items():
            actions.setdefault(attribute, Counter())[op] += count
        study = studies.setdefault(
            outcome.study_uid or "",
            {
                "study_instance_uid": outcome.study_uid,
                "patient_pseudonym": outcome.pseudonym,
                "instances": 0,
                "modalities": Counter(),
                "pixel_cleaned": 0,
            },
        )
        study["instances"] += 1
        study["modalities"][outcome.modality or ""] += 1
        study["pixel_cleaned"] += 1 if outcome.pixel_rule else 0
    counts = Counter(outcome.status for outcome in outcomes)
    return {
        "run_id": run_id,
        "dataset": dataset,
        "profile": plan.profile,
        "options": list(plan.options),
        "inputs": len(outcomes),
        "written": counts["written"],
        "quarantined_count": counts["quarantined"],
        "skipped_count": counts["skipped"],
        "bytes_in": sum(outcome.bytes_in for outcome in outcomes),
        "seconds": round(seconds, 3),
        "quarantine_reasons": dict(Counter(o.code for o in outcomes if o.status == "quarantined")),
        "pixel_rules_applied": dict(Counter(o.pixel_rule for o in outcomes if o.pixel_rule)),
        "actions": {attribute: dict(ops) for attribute, ops in sorted(actions.items())},
        "studies": [{**study, "modalities": dict(study["modalities"])} for study in studies.values()],
        "quarantined": [
            {"id": _quarantine_id(o.source, in_dir), "reason_code": o.code, "reason": o.reason}
            for o in outcomes
            if o.status == "quarantined"
        ],
        "skipped": [
            {"id": _quarantine_id(o.source, in_dir), "reason_code": o.code, "reason": o.reason}
            for o in outcomes
            if o.status == "skipped"
        ],
    }
