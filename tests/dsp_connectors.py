"""Two real connectors for the Dataspace Protocol tests and benchmarks/dsp.py: a hospital
(provider, "BE") and a research team's connector (consumer, "DE"), each its own `connector serve`
process (connector.local_connector) with its own data directory, SQLite database, keys and trust
list, on 127.0.0.1.

`prepare_pair(root)` builds both data directories (the provider with an ingested synthetic cohort,
activated terms, a published catalog record and a registered AI-team key), writes each one's trust
list naming the other, and returns them; `running(pair)` starts both services and stops them
afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import catalog
from catalog.steward_file import load_steward_fields
from connector.cataloging import service
from connector.compute.demo_model import demo_package
from connector.compute.package_signing import TeamKeyRegistry, generate_team_key
from connector.datasets.ingest import ingest
from connector.deid.options import DEFAULT_OPTIONS
from connector.local_connector import LocalConnector, free_port, write_trust_list
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.runtime import Runtime
from connector.synth import generate_cohort

DATASET = "screening-ct"
TEAM = "berlin-ai-lab"
RESEARCHER = "dr-mueller"
CONSUMER_ORG = "Charite AI Lab"
EXAMPLE = Path(catalog.__file__).parent / "examples" / "demo-cohort.toml"


@dataclass
class Pair:
    provider: LocalConnector
    consumer: LocalConnector
    team_key: tuple[bytes, bytes]
    package: tuple[bytes, str]


def activate_terms(runtime: Runtime, **terms: Any) -> None:
    files = dict(PolicyBundle.from_dir(default_policies_dir()).files)
    document = json.loads(files["data.json"])
    document["connector"]["settings"]["datasets"][DATASET] = {"k": 2, **terms}
    files["data.json"] = json.dumps(document)
    outcome = runtime.policy.activate(PolicyBundle(files), "dpo", "dataspace test terms")
    assert outcome.activated, outcome.reasons


def prepare_pair(root: Path, patients: int = 3, **terms: Any) -> Pair:
    provider = LocalConnector(
        "provider",
        root / "hospital",
        free_port(),
        "urn:connector:hospital-leuven",
        "BE",
        "UZ Leuven",
        root / "hospital-trust.json",
        embedded_worker=True,
    )
    consumer = LocalConnector(
        "consumer",
        root / "research",
        free_port(),
        "urn:connector:charite-ai",
        "DE",
        CONSUMER_ORG,
        root / "research-trust.json",
    )
    cohort = root / "cohort"
    generate_cohort(cohort, patients, seed=7)
    team_key = generate_team_key("EdDSA")
    runtime = provider.runtime()
    try:
        ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
        activate_terms(runtime, **terms)
        fields = load_steward_fields(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
        service.set_description(runtime, DATASET, fields, "steward")
        service.publish_dataset(runtime, DATASET, [], "steward")
        TeamKeyRegistry(runtime.sessions).register(TEAM, team_key[1], "steward")
    finally:
        runtime.close()
    write_trust_list(provider.trust_list, [consumer.participant_entry()])
    write_trust_list(consumer.trust_list, [provider.participant_entry()])
    return Pair(provider, consumer, team_key, demo_package(team_key[0], TEAM))


@contextmanager
def running(pair: Pair) -> Iterator[Pair]:
    with pair.provider.serving(), pair.consumer.serving():
        yield pair


def permit_for(provider_runtime: Runtime, **changes: Any) -> str:
    """A data permit from the provider's development HDAB (both sides' HDAB in these tests)."""
    assert provider_runtime.permit_issuer is not None
    arguments: dict[str, Any] = {
        "requester": RESEARCHER,
        "organisation": CONSUMER_ORG,
        "purposes": ["ai-development"],
        "datasets": [DATASET],
        "countries": ["DE"],
    }
    arguments.update(changes)
    return provider_runtime.permit_issuer.issue(**arguments)
