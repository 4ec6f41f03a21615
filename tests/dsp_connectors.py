"""Two real connectors for the Dataspace Protocol tests (and benchmarks/dsp.py): a hospital
(provider, "BE") and a research team's connector (consumer, "DE"), each its own `connector serve`
process with its own data directory, SQLite database, keys and trust list, on 127.0.0.1.

`prepare_pair(root)` builds both data directories (the provider with an ingested synthetic cohort,
activated terms, a published catalog record and a registered AI-team key), writes each one's trust
list naming the other, and returns their settings; `running(pair)` starts both services and stops
them afterwards. Test helper only: it never binds anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import catalog
from catalog.steward_file import load_steward_fields
from connector.cataloging import service
from connector.compute.demo_model import demo_package
from connector.compute.package_signing import TeamKeyRegistry, generate_team_key
from connector.datasets.ingest import ingest
from connector.dataspace.identity import own_participant
from connector.deid.options import DEFAULT_OPTIONS
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.synth import generate_cohort

DATASET = "screening-ct"
TEAM = "berlin-ai-lab"
RESEARCHER = "dr-mueller"
CONSUMER_ORG = "Charite AI Lab"
EXAMPLE = Path(catalog.__file__).parent / "examples" / "demo-cohort.toml"


@dataclass
class Side:
    name: str
    data_dir: Path
    port: int
    connector_id: str
    country: str
    organisation: str
    trust_list: Path
    embedded_worker: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dsp(self) -> str:
        return self.url + "/dsp"

    def settings_overrides(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "port": self.port,
            "public_url": self.url,
            "connector_id": self.connector_id,
            "country": self.country,
            "organisation": self.organisation,
            "trust_list_file": self.trust_list,
            "embedded_worker": self.embedded_worker,
            "dsp_process_timeout_seconds": 60.0,
        }

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
        for key, value in self.settings_overrides().items():
            env[f"CONNECTOR_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        env["CONNECTOR_LOG_LEVEL"] = "WARNING"
        return env

    def runtime(self) -> Runtime:
        return build_runtime(load_settings(**self.settings_overrides()))


@dataclass
class Pair:
    provider: Side
    consumer: Side
    team_key: tuple[bytes, bytes]
    package: tuple[bytes, str]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def activate_terms(runtime: Runtime, **terms: Any) -> None:
    files = dict(PolicyBundle.from_dir(default_policies_dir()).files)
    document = json.loads(files["data.json"])
    document["connector"]["settings"]["datasets"][DATASET] = {"k": 2, **terms}
    files["data.json"] = json.dumps(document)
    outcome = runtime.policy.activate(PolicyBundle(files), "dpo", "dataspace test terms")
    assert outcome.activated, outcome.reasons


def prepare_pair(root: Path, patients: int = 3, **terms: Any) -> Pair:
    provider = Side(
        "provider",
        root / "hospital",
        free_port(),
        "urn:connector:hospital-leuven",
        "BE",
        "UZ Leuven",
        root / "hospital-trust.json",
        True,
    )
    consumer = Side(
        "consumer",
        root / "research",
        free_port(),
        "urn:connector:charite-ai",
        "DE",
        CONSUMER_ORG,
        root / "research-trust.json",
        False,
    )
    for side in (provider, consumer):
        side.trust_list.write_text(json.dumps({"participants": []}))
    cohort = root / "cohort"
    generate_cohort(cohort, patients, seed=7)
    team_key = generate_team_key("EdDSA")
    entries = {}
    for side in (provider, consumer):
        runtime = side.runtime()
        try:
            if side is provider:
                ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
                activate_terms(runtime, **terms)
                fields = load_steward_fields(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
                service.set_description(runtime, DATASET, fields, "steward")
                service.publish_dataset(runtime, DATASET, [], "steward")
                TeamKeyRegistry(runtime.sessions).register(TEAM, team_key[1], "steward")
            entries[side.name] = own_participant(runtime).to_dict()
        finally:
            runtime.close()
    provider.trust_list.write_text(json.dumps({"participants": [entries["consumer"]]}))
    consumer.trust_list.write_text(json.dumps({"participants": [entries["provider"]]}))
    return Pair(provider, consumer, team_key, demo_package(team_key[0], TEAM))


@contextmanager
def serving(side: Side) -> Iterator[subprocess.Popen[bytes]]:
    log = (side.data_dir.parent / f"{side.name}.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "serve"], env=side.env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the {side.name} connector exited: see {log.name}")
            try:
                if httpx.get(side.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {side.name} connector did not start")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextmanager
def running(pair: Pair) -> Iterator[Pair]:
    with serving(pair.provider), serving(pair.consumer):
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
