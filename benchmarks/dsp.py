"""Benchmark: the Dataspace Protocol between two local connectors, one run.

Starts two real connectors (`connector serve`, each its own process, SQLite database, keys and
trust list, on 127.0.0.1; tests/dsp_connectors.py: a hospital with a published synthetic cohort
and a research team's connector) and measures, in this run and on this machine:

* the latency of one full flow, catalog to transfer start: DSP catalog request, contract request,
  the provider's policy decision and signed agreement, the consumer's verification, the provider's
  finalization, the transfer request, the provider's second decision and the transfer start with
  its job token (p50/p99 over ``--flows`` flows, each to a fresh negotiation). Goal: under 1 s.
* negotiations per second: ``--negotiations`` contract negotiations through to FINALIZED, run
  ``--concurrency`` at a time.
* the physical floor of the same run: one HTTP round trip between the two processes (a DSP
  identity-token-authenticated GET of a negotiation's state), so each flow prints as a multiple
  of the round trips it needs (nine messages cross between the connectors in one flow).

Prints a table and one verdict line per goal; it never asserts and exits 0 once it has measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this folder leads sys.path and benchmarks/deid.py would shadow the deid library.
sys.path[:] = [str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (ROOT, Path(__file__).resolve().parent)
]

import httpx  # noqa: E402 (needs the repository root on sys.path)

from connector.dataspace import messages as m  # noqa: E402
from connector.dataspace.identity import peer_token  # noqa: E402
from connector.dataspace.negotiations import get_negotiation, start_negotiation  # noqa: E402
from connector.dataspace.peer_client import call  # noqa: E402
from connector.dataspace.states import NEGOTIATION_FINAL  # noqa: E402
from connector.dataspace.transfers import get_transfer, start_transfer  # noqa: E402
from connector.runtime import Runtime  # noqa: E402
from tests.dsp_connectors import RESEARCHER, Pair, permit_for, prepare_pair, running  # noqa: E402

MESSAGES_PER_FLOW = (
    9  # catalog, request, agreement, verification, finalized, transfer request, start + 2 answers
)


def _wait(check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.002)


def negotiate(pair: Pair, consumer: Runtime, permit: str) -> tuple[str, str]:
    provider = consumer.trust.get(pair.provider.connector_id)
    assert provider is not None
    catalog = (
        call(consumer, provider.id, "POST", provider.dsp + "/catalog/request", m.catalog_request()) or {}
    )
    dataset = catalog["dataset"][0]
    view = start_negotiation(
        consumer, provider, dataset["@id"], dataset["hasPolicy"][0], RESEARCHER, permit, "ai-development"
    )
    _wait(lambda: get_negotiation(consumer, view.pid).state in NEGOTIATION_FINAL)
    final = get_negotiation(consumer, view.pid)
    return final.state, final.agreement_id


def full_flow(pair: Pair, consumer: Runtime, permit: str) -> tuple[float, str]:
    started = time.perf_counter()
    state, agreement = negotiate(pair, consumer, permit)
    if state != "FINALIZED":
        return time.perf_counter() - started, state
    transfer = start_transfer(consumer, agreement, m.COMPUTE_TO_DATA)
    _wait(lambda: get_transfer(consumer, transfer.pid).state != "REQUESTED")
    return time.perf_counter() - started, get_transfer(consumer, transfer.pid).state


def round_trip(pair: Pair, consumer: Runtime, pid: str, runs: int) -> list[float]:
    times = []
    with httpx.Client(timeout=10) as client:
        for _ in range(runs):
            token = peer_token(consumer, pair.provider.connector_id)
            started = time.perf_counter()
            client.get(
                f"{pair.provider.dsp}/negotiations/{pid}", headers={"Authorization": f"Bearer {token}"}
            )
            times.append(time.perf_counter() - started)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=20)
    parser.add_argument("--negotiations", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dsp-bench-") as folder:
        print("preparing two connectors (synthetic cohort, published record, trust lists) ...", flush=True)
        pair = prepare_pair(Path(folder))
        with running(pair):
            consumer = pair.consumer.runtime()
            provider = pair.provider.runtime()
            try:
                permit = permit_for(provider)
                full_flow(pair, consumer, permit)  # warm-up: imports, caches, first policy load
                flows, states = [], []
                for _ in range(args.flows):
                    seconds, state = full_flow(pair, consumer, permit)
                    flows.append(seconds)
                    states.append(state)
                started = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    outcomes = list(
                        pool.map(lambda _: negotiate(pair, consumer, permit)[0], range(args.negotiations))
                    )
                elapsed = time.perf_counter() - started
                last = get_negotiation(consumer, _last_pid(consumer))
                trips = round_trip(pair, consumer, last.peer_pid, 200)
            finally:
                consumer.close()
                provider.close()

    p50, p99 = statistics.median(flows), percentile(flows, 0.99)
    rtt = statistics.median(trips)
    rate = args.negotiations / elapsed
    print()
    print(f"{'measure':<52}{'value':>14}")
    print(f"{'full flow, catalog to transfer start: p50':<52}{p50 * 1000:>11.1f} ms")
    print(f"{'full flow, catalog to transfer start: p99':<52}{p99 * 1000:>11.1f} ms")
    print(f"{'flows reaching STARTED':<52}{states.count('STARTED'):>10d} / {len(states)}")
    print(f"{'negotiations to FINALIZED per second':<52}{rate:>14.1f}")
    print(f"{'  finalized':<52}{outcomes.count('FINALIZED'):>10d} / {len(outcomes)}")
    print(f"{'one authenticated round trip between the two (p50)':<52}{rtt * 1000:>11.2f} ms")
    print(f"{'full flow p50 / (9 round trips)':<52}{p50 / (MESSAGES_PER_FLOW * rtt):>13.1f}x")
    print()
    verdict = "met" if p99 < 1.0 else "missed"
    print(
        f"goal: a full flow under 1 s on this machine: {verdict} "
        f"(p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms)"
    )


def _last_pid(consumer: Runtime) -> str:
    from connector.dataspace.negotiations import list_negotiations

    return list_negotiations(consumer, limit=1)[0].pid


if __name__ == "__main__":
    main()
