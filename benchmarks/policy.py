"""Benchmark: policy decisions and cohort filtering, embedded OPA against the OPA REST path, one run.

Measures, in this one run and on this machine, with a dataset of ``--patients`` patients (100,000)
and ``--optouts`` opt-outs (100,000) in the consent registry (SQLite in a temporary folder, or the
PostgreSQL given with ``--database-url``):

* the latency (p50/p99 over ``--decisions`` calls) of a full access decision of the shipped
  policies (``data.connector.decision.access``: purposes, permit, jurisdiction, k, consent
  obligations) on a prepared input, on the embedded engine and through the OPA REST client
  (``OpaServerBackend``) against the OPA-REST-compatible test server of the test suite
  (``tests/opa_rest_test_server.py``, the same Go engine behind HTTP on 127.0.0.1: no OPA server
  binary can be installed here). Goal: embedded p99 under 1 ms; the ratio to the REST path.
* the same decision through the whole service (``PolicyService.decide_access``: schema check,
  permit signature verification, the cohort filter, the audit write), for context.
* cohort filtering: the consent policy compiled by OPA into one SQL condition and applied by the
  database to all patients (p50/p99 over ``--filters`` runs), on both backends: counting included
  and excluded patients (what a decision needs; the goal, under 200 ms) and listing the included
  pseudonyms (what a job needs).

* for reference, the same number of runs of plain Python work as long as an embedded decision's
  p50: on a shared or small machine its p99 is the floor that no engine setting gets below.

The embedded engine's Go runtime reads its collector settings from the environment the process was
started with (see `connector.policy.engine`). With ``--go-runtime recommended`` (the default) the
benchmark re-executes itself once with `GO_RUNTIME_SETTINGS` added where the environment lacks
them, as a service should be started; ``--go-runtime as-is`` measures the environment as given. The
settings in effect are printed: a result only holds for a process started with them.

Prints a table and one verdict line per goal. It never asserts; it exits 0 once it has measured.

    python benchmarks/policy.py            # 100,000 patients and opt-outs
    python benchmarks/policy.py --quick    # 10,000 of each
    python benchmarks/policy.py --filters 2                     # the decisions in full, shorter
    python benchmarks/policy.py --filters 2 --go-runtime as-is  # Go's default collector settings
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402 (needs the repository root on sys.path)

from connector.audit.log import utc_now_text  # noqa: E402
from connector.datasets.models import DatasetRecord, StudyRecord  # noqa: E402
from connector.db.engine import transaction  # noqa: E402
from connector.policy.engine import go_runtime_environment, go_runtime_settings  # noqa: E402
from connector.policy.models import ConsentRecord  # noqa: E402
from connector.policy.opa_server import OpaServerBackend  # noqa: E402
from connector.policy.service import PolicyService  # noqa: E402
from connector.runtime import Runtime, build_runtime  # noqa: E402
from connector.settings import load_settings  # noqa: E402
from tests.opa_rest_test_server import OpaRestTestServer  # noqa: E402

DATASET = "bench-cohort"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(function: Callable[[], object], runs: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def python_work(milliseconds: float) -> Callable[[], object]:
    """Plain Python work taking about `milliseconds` here: the machine's own latency noise."""
    loops = 1000
    while True:
        start = time.perf_counter()
        sum(range(loops))
        took = (time.perf_counter() - start) * 1000
        if took >= milliseconds / 4:
            break
        loops *= 2
    loops = max(1, int(loops * milliseconds / took))
    return lambda: sum(range(loops))


def with_go_runtime(choice: str) -> None:
    """Re-execute this benchmark once with the recommended Go runtime settings (see the docstring).

    Only when they are missing from the environment: after the re-execution they are present, so
    this never loops. The engine's runtime reads them at process start, so no other way works.
    """
    if choice != "recommended":
        return
    environment = go_runtime_environment(os.environ)
    if environment != dict(os.environ):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)  # noqa: S606 (this script, again)


def fill(runtime: Runtime, patients: int, optouts: int) -> None:
    """A dataset of `patients` patients (one study each) and `optouts` opt-outs, half of them in it."""
    now = utc_now_text()
    with transaction(runtime.sessions) as session:
        session.add(DatasetRecord(name=DATASET, created_at=now, profile="basic", options="[]", store="local"))
        session.flush()
        session.execute(
            insert(StudyRecord),
            [
                {
                    "dataset": DATASET,
                    "study_uid": f"2.25.{index}",
                    "patient_pseudonym": f"PSN-{index:08d}",
                    "wrapped_key": "{}",
                    "key_id": "k",
                    "modalities": "CT",
                    "body_part": "CHEST",
                    "sex": "F",
                    "age_band": "60-69",
                    "study_year": "2024",
                    "manufacturer": "ACME",
                }
                for index in range(patients)
            ],
        )
        # Half of the opt-outs are patients of the dataset, half are not (they opted out elsewhere).
        session.execute(
            insert(ConsentRecord),
            [
                {
                    "dataset": DATASET,
                    "pseudonym": f"PSN-{index * 2:08d}",
                    "status": "opted-out",
                    "source": "bench",
                    "recorded_at": now,
                    "recorded_by": "bench",
                }
                for index in range(optouts)
            ],
        )


def request(runtime: Runtime) -> dict[str, object]:
    assert runtime.permit_issuer is not None
    permit = runtime.permit_issuer.issue("alice", "Uni Leuven AI Lab", ["ai-development"], [DATASET], ["DE"])
    return {
        "action": "access",
        "dataset": DATASET,
        "purpose": "ai-development",
        "requester": {"id": "alice", "organisation": "Uni Leuven AI Lab", "country": "DE"},
        "permit": permit,
        "cohort": {"size": 5000},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--optouts", type=int, default=100_000)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--filters", type=int, default=20)
    parser.add_argument("--database-url", default=None, help="e.g. postgresql+psycopg://postgres@127.0.0.1/x")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--go-runtime",
        choices=["recommended", "as-is"],
        default="recommended",
        help="start with connector.policy.engine.GO_RUNTIME_SETTINGS (default) or the environment as is",
    )
    args = parser.parse_args()
    with_go_runtime(args.go_runtime)
    in_effect = " ".join(f"{name}={value or '(default)'}" for name, value in go_runtime_settings().items())
    print(f"Go runtime of the embedded engine: {in_effect}")
    if args.quick:
        args.patients, args.optouts, args.decisions, args.filters = 10_000, 10_000, 500, 5

    with tempfile.TemporaryDirectory() as folder:
        overrides: dict[str, object] = {"data_dir": Path(folder) / "data", "audit_checkpoint_every": 100_000}
        if args.database_url:
            overrides["database_url"] = args.database_url
        runtime = build_runtime(load_settings(**overrides))
        start = time.perf_counter()
        fill(runtime, args.patients, args.optouts)
        print(
            f"{args.patients} patients and {args.optouts} opt-outs written "
            f"in {time.perf_counter() - start:.1f} s"
        )
        embedded = runtime.policy
        document = request(runtime)
        prepared = embedded.access_input(document)
        assert isinstance(prepared, dict)
        decision = embedded.decide_access(document)
        print(f"decision: allow={decision.allow} obligations={list(decision.obligations)}")

        server = OpaRestTestServer()
        server.start()
        try:
            rest = PolicyService(
                runtime.sessions,
                runtime.engine,
                runtime.audit,
                OpaServerBackend(server.url, timeout=30),
                embedded.permits,
                runtime.settings.policies_dir or ROOT / "policies",
                runtime.settings.policy_refresh_seconds,
            )
            rest.refresh(force=True)
            rows = []
            results: dict[str, tuple[float, float]] = {}
            for name, service in (("embedded", embedded), ("OPA REST", rest)):
                backend = service.backend
                results[f"decision {name}"] = percentiles(
                    timed(lambda b=backend: b.evaluate("connector.decision.access", prepared), args.decisions)
                )
                if name == "embedded":
                    # Right after the embedded decisions, for the same time on the same machine.
                    results["reference: Python work of p50 length"] = percentiles(
                        timed(python_work(results["decision embedded"][0]), args.decisions)
                    )
                results[f"filter {name} (counts)"] = percentiles(
                    timed(lambda s=service: s.cohort(DATASET, count_only=True), args.filters, warmup=2)
                )
                results[f"filter {name} (pseudonyms)"] = percentiles(
                    timed(lambda s=service: s.cohort(DATASET), args.filters, warmup=2)
                )
            results["service decide_access (embedded)"] = percentiles(
                timed(lambda: embedded.decide_access(document), max(args.filters * 5, 50), warmup=3)
            )
        finally:
            server.stop()
            runtime.close()

    for name, (p50, p99) in results.items():
        rows.append(f"{name:<36} p50 {p50:9.3f} ms   p99 {p99:9.3f} ms")
    print("\n".join(rows))
    emb, rest_p = results["decision embedded"], results["decision OPA REST"]
    floor = results["reference: Python work of p50 length"]
    filt = results["filter embedded (counts)"]
    print(f"ratio REST/embedded decision p50: {rest_p[0] / emb[0]:.1f}x, p99: {rest_p[1] / emb[1]:.1f}x")
    print(
        f"goal embedded decision p99 < 1 ms: {'met' if emb[1] < 1 else 'MISSED'} ({emb[1]:.3f} ms; "
        f"plain Python work of the same p50 has p99 {floor[1]:.3f} ms here); "
        f"goal {args.patients}-patient filter < 200 ms: {'met' if filt[0] < 200 else 'MISSED'} "
        f"(p50 {filt[0]:.1f} ms, p99 {filt[1]:.1f} ms)"
    )


if __name__ == "__main__":
    main()
