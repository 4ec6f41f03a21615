"""Benchmark: the public catalog with ``--datasets`` published records (10,000), one run.

Measures, in this one run and on this machine (SQLite in a temporary folder, or the PostgreSQL
given with ``--database-url``), over the real API served by uvicorn on 127.0.0.1:

* ``GET /catalog`` pages (JSON-LD and Turtle, ``--per-page`` records, random pages): p50/p99;
* a faceted search (modality + body part + age, and disease + purpose + country): p50/p99;
* the floor: ``GET /healthz`` through the same stack (HTTP, routing, middleware, no work), so the
  ratio says what the catalog itself costs;
* the peer: the same page serialised the usual way, by rdflib from the records' graphs (what a
  catalog that keeps RDF graphs does per request), timed in-process;
* SHACL validation per record: our HealthDCAT-AP shapes (what every publish runs), and the
  official DCAT-AP 3.0.0 shapes when ``../shared/conformance/dcat`` is present.

Goal (issue 6): page and search p50 under 50 ms. Prints a table and a verdict line per goal; it
never asserts and exits 0 once it has measured.

    python benchmarks/catalog.py              # 10,000 datasets
    python benchmarks/catalog.py --quick      # 1,000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import rdflib  # noqa: E402

from catalog.model import AgeRange, Code, DatasetDescription  # noqa: E402
from catalog.record import record_graph  # noqa: E402
from catalog.render import render_record  # noqa: E402
from catalog.validate import official_shapes, validate, validate_graph  # noqa: E402
from connector.cataloging.models import CatalogEntry  # noqa: E402
from connector.cataloging.service import content_digest, store_rendered  # noqa: E402
from connector.db.engine import transaction  # noqa: E402
from connector.demo import serving  # noqa: E402
from connector.runtime import build_runtime  # noqa: E402
from connector.settings import load_settings  # noqa: E402
from tests.catalog_samples import sample_description  # noqa: E402

OFFICIAL = ROOT.parent / "shared" / "conformance" / "dcat"
FACETS = [
    ("CT", "CHEST"),
    ("MR", "BRAIN"),
    ("MG", "BREAST"),
    ("CT", "ABDOMEN"),
    ("MR", "KNEE"),
    ("PT", "WHOLEBODY"),
]
DISEASES = [
    Code("ICD-10", "C34.1", "Malignant neoplasm of upper lobe, bronchus or lung"),
    Code("ICD-10", "C50.9", "Malignant neoplasm of breast, unspecified"),
    Code("ICD-10", "I25.1", "Atherosclerotic heart disease"),
    Code("ICD-10", "C71.9", "Malignant neoplasm of brain, unspecified"),
]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(function: Callable[[int], object], runs: int, warmup: int = 10) -> list[float]:
    for index in range(warmup):
        function(index)
    samples = []
    for index in range(runs):
        start = time.perf_counter()
        function(index)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def description(index: int, public_url: str) -> DatasetDescription:
    base = sample_description()
    modality, body = FACETS[index % len(FACETS)]
    low = 10 * (index % 7)
    name = f"cohort-{index:05d}"
    facts = replace(
        base.facts,
        identifier=name,
        iri=f"{public_url}/catalog/datasets/{name}",
        modalities=(modality,),
        body_parts=(body,),
        age=AgeRange(low, low + 29),
        version="1",
    )
    steward = replace(
        base.steward,
        title={"en": f"Imaging cohort {index}: {modality} {body.lower()}"},
        diseases=(DISEASES[index % len(DISEASES)],),
    )
    return DatasetDescription(steward, facts)


def fill(runtime, count: int) -> tuple[float, list[DatasetDescription]]:  # type: ignore[no-untyped-def]
    """`count` published records, rendered as a publish renders them; seconds per record to render."""
    public_url = runtime.settings.public_url.rstrip("/")
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    render_seconds = 0.0
    kept = []
    batch = 500
    for start in range(0, count, batch):
        with transaction(runtime.sessions) as session:
            for index in range(start, min(count, start + batch)):
                item = description(index, public_url)
                began = time.perf_counter()
                rendered = render_record(item)
                render_seconds += time.perf_counter() - began
                entry = CatalogEntry(
                    dataset=item.facts.identifier,
                    steward_fields="{}",
                    status="published",
                    version=1,
                    digest=content_digest(item),
                    issued=now,
                    modified=now,
                    updated_by="benchmark",
                )
                session.add(entry)
                store_rendered(session, entry, item, rendered)
                if index < 100:
                    kept.append(item)
        print(f"  {min(count, start + batch)} records stored", end="\r", flush=True)
    print()
    return render_seconds / count, kept


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="Timed requests per measurement.")
    parser.add_argument("--per-page", type=int, default=50)
    parser.add_argument("--validate-sample", type=int, default=20)
    parser.add_argument(
        "--database-url", default=None, help="PostgreSQL URL (default: SQLite in a temp dir)."
    )
    parser.add_argument("--quick", action="store_true", help="1,000 datasets, 100 requests.")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.requests = 1000, 100

    with tempfile.TemporaryDirectory() as folder:
        overrides = {"database_url": args.database_url} if args.database_url else {}
        runtime = build_runtime(load_settings(data_dir=Path(folder) / "data", **overrides))
        print(
            f"filling {args.datasets} published records ({'PostgreSQL' if args.database_url else 'SQLite'})"
        )
        render_per_record, sample = fill(runtime, args.datasets)
        pages = max(1, args.datasets // args.per_page)
        rng = random.Random(6)
        rows: list[tuple[str, float, float]] = []
        with serving(runtime) as base, httpx.Client(base_url=base, timeout=60) as client:

            def get(path: str, accept: str) -> Callable[[int], object]:
                def call(_: int) -> object:
                    reply = client.get(path() if callable(path) else path, headers={"accept": accept})
                    reply.raise_for_status()
                    return reply

                return call

            def page_path() -> str:
                return f"/catalog?per_page={args.per_page}&page={rng.randint(1, pages)}"

            measured = {
                "floor: GET /healthz": get("/healthz", "application/json"),
                f"GET /catalog page of {args.per_page}, JSON-LD": get(page_path, "application/ld+json"),  # type: ignore[arg-type]
                f"GET /catalog page of {args.per_page}, Turtle": get(page_path, "text/turtle"),  # type: ignore[arg-type]
                "search modality=MR&body_part=BRAIN&age=45, JSON-LD": get(
                    f"/catalog?modality=MR&body_part=BRAIN&age=45&per_page={args.per_page}",
                    "application/ld+json",
                ),
                "search disease=C34&purpose=ai-development&country=BE": get(
                    f"/catalog?disease=C34&purpose=ai-development&country=BE&per_page={args.per_page}",
                    "application/ld+json",
                ),
            }
            for title, call in measured.items():
                p50, p99 = percentiles(timed(call, args.requests))
                rows.append((title, p50, p99))

        # The peer: the same page built as RDF graphs and serialised by rdflib on each request.
        page_items = sample[: args.per_page]

        def rdflib_page(fmt: str) -> Callable[[int], object]:
            def call(_: int) -> object:
                graph = rdflib.Graph()
                for item in page_items:
                    graph += record_graph(item)
                return graph.serialize(format=fmt)

            return call

        for fmt, title in (("json-ld", "JSON-LD"), ("turtle", "Turtle")):
            p50, p99 = percentiles(timed(rdflib_page(fmt), max(5, args.requests // 20), warmup=1))
            rows.append((f"peer: rdflib builds + serialises a page of {len(page_items)}, {title}", p50, p99))

        validation = timed(lambda i: validate(sample[i % len(sample)]), args.validate_sample, warmup=2)
        official = None
        if OFFICIAL.is_dir():
            shapes = official_shapes(OFFICIAL)
            official = timed(
                lambda i: validate_graph(record_graph(sample[i % len(sample)]), shapes),
                max(3, args.validate_sample // 4),
                warmup=1,
            )
        runtime.close()

    print(
        f"\n{args.datasets} published records, {args.requests} timed requests each, pages of {args.per_page}"
    )
    print(f"  {'measurement':<62} {'p50 ms':>8} {'p99 ms':>8}")
    for title, p50, p99 in rows:
        print(f"  {title:<62} {p50:>8.1f} {p99:>8.1f}")
    floor = rows[0][1]
    print(f"\n  render a record when it changes (once per publish): {render_per_record * 1000:.1f} ms")
    print(f"  SHACL validation per record, our HealthDCAT-AP shapes: {statistics.median(validation):.0f} ms")
    if official:
        print(
            f"  SHACL validation per record, official DCAT-AP 3 shapes: {statistics.median(official):.0f} ms"
        )
    print("\nratios:")
    by_title = {title: (p50, p99) for title, p50, p99 in rows}
    jsonld_page = by_title[f"GET /catalog page of {args.per_page}, JSON-LD"][0]
    turtle_page = by_title[f"GET /catalog page of {args.per_page}, Turtle"][0]
    peer_jsonld = rows[-2][1]
    peer_turtle = rows[-1][1]
    print(f"  page over HTTP / HTTP floor (JSON-LD):                 {jsonld_page / floor:6.1f}x")
    print(f"  rdflib page (in-process) / our page over HTTP, JSON-LD: {peer_jsonld / jsonld_page:6.1f}x")
    print(f"  rdflib page (in-process) / our page over HTTP, Turtle:  {peer_turtle / turtle_page:6.1f}x")
    print()
    searches = [p50 for title, p50, _ in rows if title.startswith("search")]
    for label, value in (("page", max(jsonld_page, turtle_page)), ("search", max(searches))):
        verdict = "goal met" if value < 50 else "goal MISSED"
        print(f"verdict: {label} p50 {value:.1f} ms (goal < 50 ms): {verdict}")


if __name__ == "__main__":
    main()
