"""Run de-identification over a folder: parallel workers, atomic outputs, quarantine, report.

Every input file gets exactly one outcome: written, quarantined (the original copied into the
quarantine folder, never under OUT_DIR) or skipped (a duplicate: another input holds the same SOP
instance; the first in input order is kept). Outputs appear under their final names only once
complete and verified; one bad file never stops the batch. Nothing identifying goes into the
report: quarantined inputs are named by an opaque id whose mapping to the original path stays in
the quarantine folder.

Where outputs go is an `OutputSink`: by default files under OUT_DIR (`FolderSink`); ingest passes
one that seals and stores each output as an encrypted object from inside the worker that made it,
so no de-identified plaintext is written to disk and only small receipts travel back to the parent.
"""

from __future__ import annotations

import ctypes
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
from typing import Any, Protocol

from connector.atomic_files import write_atomically
from connector.deid.engine import Deidentified, Refused, deidentify
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
    receipt: Any = None  # what the sink's `store` returned (small: it travels between processes)
    deferred: bool = False  # not stored by its worker: another input claimed the same instance
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
    # For the terminal of whoever ran the batch, never for the report (a path may name a patient):
    # each skipped input's path relative to the input folder with its reason code, and the folder
    # the quarantined originals were copied into (None when nothing was quarantined).
    skipped_paths: list[tuple[str, str]] = field(default_factory=list)
    quarantine_folder: Path | None = None

    @property
    def reasons(self) -> Counter[str]:
        return Counter(item["reason_code"] for item in self.report["quarantined"])


class OutputSink(Protocol):
    """Where the de-identified outputs of a batch go.

    `store` runs in a worker process (in the parent itself with one worker) right after an input
    was de-identified; `keep`, `drop` and `finish` run in the parent, `keep` and `drop` in input
    order. A sink that stores `in_place` (under a final name derived from the instance, such as
    an object key) would let two inputs of the same SOP instance overwrite each other, so for it
    only the first worker to claim an instance stores it (see `_claim`); if that was not the
    input that comes first, the batch stores the first one again in the parent, after the workers
    have finished, before it is kept.
    """

    in_place: bool

    def store(self, result: Deidentified) -> Any:
        """Put one output where it belongs; return a small picklable receipt for the parent."""

    def keep(self, outcome: Outcome) -> None:
        """The output is the instance's (first in input order): make it final."""

    def drop(self, outcome: Outcome) -> None:
        """The output duplicates an instance kept before: undo what `store` did."""

    def finish(self) -> None:
        """Every outcome was kept or dropped (called only when the batch ran to its end)."""


class FolderSink:
    """Outputs as files under the output folder, named pseudonym/study/series/instance.dcm.

    A worker writes each output into a private temporary file; the parent renames it under its
    final name once it knows it is no duplicate, so a final name never holds half a file.
    """

    in_place = False

    def __init__(self, out_dir: Path, incoming: Path) -> None:
        self.out_dir = out_dir
        self.incoming = incoming

    def store(self, result: Deidentified) -> str:
        fd, temp = tempfile.mkstemp(dir=self.incoming, suffix=".dcm")
        with os.fdopen(fd, "wb") as handle:
            handle.write(result.encoded)
        return temp

    def keep(self, outcome: Outcome) -> None:
        target = self.out_dir / str(outcome.relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(outcome.receipt, target)

    def drop(self, outcome: Outcome) -> None:
        Path(outcome.receipt).unlink(missing_ok=True)

    def finish(self) -> None:
        pass


_STATE: dict[str, Any] = {}


class _Claims:
    """The SOP instances claimed so far in this run, shared by every worker process of it.

    An open-addressing table of 64-bit fingerprints (SHA-256 of the UID: the table never holds a
    UID) in memory shared with the forked workers, changed under one lock: a claim costs a few
    microseconds, where creating a marker file costs a third of a millisecond or more. Two
    different instances with the same fingerprint (odds about n**2 / 2**65) only make the later
    one deferred: the parent then stores it itself, so the outcome is still right.
    """

    def __init__(self, capacity: int) -> None:
        context = multiprocessing.get_context("fork")
        size = 1 << max(4, (2 * capacity).bit_length())  # at most half full: probes stay short
        self._slots = context.RawArray(ctypes.c_uint64, size)
        self._mask = size - 1
        self._lock = context.Lock()

    def claim(self, sop_instance_uid: str) -> bool:
        """True for the first caller of this run, in any worker process, to claim the instance."""
        digest = hashlib.sha256(sop_instance_uid.encode()).digest()
        fingerprint = int.from_bytes(digest[:8], "little") or 1  # 0 marks an empty slot
        index = fingerprint & self._mask
        with self._lock:
            while True:
                held = self._slots[index]
                if held == 0:
                    self._slots[index] = fingerprint
                    return True
                if held == fingerprint:
                    return False
                index = (index + 1) & self._mask


def _init_worker(plan: Plan, keys: DatasetKeys, sink: OutputSink, claims: _Claims | None) -> None:
    _STATE.update(plan=plan, keys=keys, sink=sink, claims=claims)


def _claim(sop_instance_uid: str) -> bool:
    """True unless another input of this run claimed the same instance first (see `_Claims`)."""
    claims: _Claims = _STATE["claims"]
    return claims.claim(sop_instance_uid)


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
    sink: OutputSink = _STATE["sink"]
    deferred = sink.in_place and not _claim(result.sop_instance_uid)
    return Outcome(
        path,
        "written",
        size,
        receipt=None if deferred else sink.store(result),
        deferred=deferred,
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
    found: list[Path] = []
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
    sink: OutputSink | None = None,
) -> RunSummary:
    """De-identify every file under `in_dir`; outputs go to `sink` (files under `out_dir` by default).

    The report is written to `out_dir` in every case.
    """
    in_dir, out_dir, quarantine_dir = in_dir.resolve(), out_dir.resolve(), quarantine_dir.resolve()
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist")
    if quarantine_dir == out_dir or quarantine_dir.is_relative_to(out_dir):
        raise ValueError("the quarantine folder must not be inside the output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    incoming = out_dir / INCOMING
    shutil.rmtree(incoming, ignore_errors=True)  # leftovers of an interrupted run are never outputs
    incoming.mkdir()
    sink = sink or FolderSink(out_dir, incoming)
    files = input_files(in_dir, (out_dir, quarantine_dir))
    claims = _Claims(len(files)) if sink.in_place else None
    if on_total:
        on_total(len(files))
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    seen: dict[str, Path] = {}
    deferred: list[Outcome] = []
    try:
        for outcome in _outcomes(files, plan, keys, sink, claims, workers):
            _settle(outcome, sink, seen, deferred)
            if outcome.status == "quarantined":
                _quarantine(outcome, in_dir, quarantine_dir / run_id)
            outcomes.append(outcome)
            if progress:
                progress(1)
        # The pool is closed: no worker can store anything any more, so storing again is safe.
        for outcome in deferred:
            _store_again(outcome, plan, keys, sink)
            if outcome.status == "quarantined":
                _quarantine(outcome, in_dir, quarantine_dir / run_id)
        sink.finish()
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    report = _report(outcomes, in_dir, plan, dataset, run_id, time.perf_counter() - started)
    report_path = out_dir / REPORT_NAME
    write_atomically(report_path, json.dumps(report, indent=2, ensure_ascii=False).encode())
    counts = Counter(outcome.status for outcome in outcomes)
    skipped_paths = [
        (str(o.source.relative_to(in_dir)), o.code or "") for o in outcomes if o.status == "skipped"
    ]
    return RunSummary(
        report,
        report_path,
        counts["written"],
        counts["quarantined"],
        counts["skipped"],
        skipped_paths,
        quarantine_dir / run_id if counts["quarantined"] else None,
    )


def _outcomes(
    files: list[Path],
    plan: Plan,
    keys: DatasetKeys,
    sink: OutputSink,
    claims: _Claims | None,
    workers: int | None,
) -> Iterator[Outcome]:
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(files) < 8:
        _init_worker(plan, keys, sink, claims)
        yield from map(_process, files)
        return
    # fork shares the compiled plan and the sink for free; chunks amortise the inter-process round trips.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(plan, keys, sink, claims)) as pool:
        yield from pool.imap(_process, files, chunksize=max(1, min(64, len(files) // (workers * 8) or 1)))


def _settle(outcome: Outcome, sink: OutputSink, seen: dict[str, Path], deferred: list[Outcome]) -> None:
    """Keep the first output of an instance (in input order), drop the others as duplicates."""
    if outcome.status != "written":
        return
    if outcome.sop_instance_uid in seen:
        if not outcome.deferred:
            sink.drop(outcome)
        outcome.status, outcome.code = "skipped", "duplicate_instance"
        outcome.reason = "another input file holds the same SOP instance"
        return
    seen[outcome.sop_instance_uid or ""] = outcome.source
    if outcome.deferred:
        # A later input of the same instance was stored first (by another worker): this one is
        # stored again once the workers are done, and kept only then.
        deferred.append(outcome)
    else:
        sink.keep(outcome)


def _store_again(outcome: Outcome, plan: Plan, keys: DatasetKeys, sink: OutputSink) -> None:
    """Store a deferred output from the parent: de-identification is deterministic (keyed), so
    this gives the bytes its worker made, unless the input file changed meanwhile."""
    try:
        result = deidentify(outcome.source, plan, keys)
    except Exception:  # Refused or worse: the file is no longer what the worker read
        result = None
    if result is None or result.relative_path != outcome.relative:
        outcome.status, outcome.code = "quarantined", "changed_during_run"
        outcome.reason = "the input file changed while the batch ran"
        return
    outcome.receipt, outcome.deferred = sink.store(result), False
    sink.keep(outcome)


def _quarantine(outcome: Outcome, in_dir: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # mkdir's mode passes through the umask
    qid = _quarantine_id(outcome.source, in_dir)
    if outcome.source.exists():
        # An identified file: never the source's (often world-readable) mode.
        shutil.copyfile(outcome.source, folder / f"{qid}.bin")
        os.chmod(folder / f"{qid}.bin", 0o600)
    # The index may name the original path (it can hold PHI): it stays inside the hospital's quarantine.
    index_fd = os.open(folder / "index.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(index_fd, 0o600)
    with os.fdopen(index_fd, "a", encoding="utf-8") as index:
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
