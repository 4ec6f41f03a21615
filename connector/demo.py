"""The end-to-end demo on embedded defaults: nothing to install, nothing left running.

It synthesises an identified cohort, ingests it, starts the real service on a free loopback port,
authenticates as each user role and shows what each may see, then lets the DPO activate the
policies and import an opt-out, and a researcher's access requests be decided. It must only ever touch its own
data folder (marked by a `.connector-demo` file) and 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

import catalog
from connector.api.app import create_app
from connector.datasets.use_cases import export_dataset_audited, ingest_dataset, shred_dataset
from connector.deid.options import DEFAULT_OPTIONS
from connector.deid.summary import render_summary
from connector.demo_dataspace import show_dataspace
from connector.identity.roles import Role
from connector.local_connector import free_port, write_trust_list
from connector.observability.logging import configure_logging
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings

MARKER = ".connector-demo"
# The steward's description of the demo cohort: the example every steward can start from.
EXAMPLE_DESCRIPTION = Path(catalog.__file__).parent / "examples" / "demo-cohort.toml"

# Who the demo signs in as: one person or system per role.
PEOPLE = {
    Role.STEWARD: ("steward-anna", "Example University Hospital", "BE"),
    Role.DPO: ("dpo-bruno", "Example University Hospital", "BE"),
    Role.RESEARCHER: ("researcher-chiara", "Istituto Tumori AI Lab", "IT"),
    Role.HDAB: ("hdab-be", "Belgian Health Data Agency", "BE"),
    Role.PEER: ("connector-nl-umc", "NL University Medical Centre", "NL"),
}
# The actors of the steps the demo runs in-process, before anyone signs in.
STEWARD = "demo:steward-anna"
DPO = "demo:dpo-bruno"


def prepare_data_dir(data_dir: Path) -> None:
    """Start from an empty demo folder, refusing to wipe anything the demo did not create."""
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / MARKER).exists():
            raise RuntimeError(f"{data_dir} is not empty and is not a demo folder; choose another --data-dir")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("created by `connector demo`; deleted by the next demo run\n")


@contextmanager
def serving(runtime: Runtime, port: int = 0) -> Iterator[str]:
    """Run the real API on 127.0.0.1:`port` (0: a free one) in a thread; yield its base URL."""
    # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
    # they are TCP, and with Nagle on every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the demo service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _mark(status: int) -> str:
    return {200: "[green]200[/]", 401: "[red]401[/]", 403: "[yellow]403[/]"}.get(status, str(status))


def show_access(console: Console, client: httpx.Client, tokens: dict[Role, str]) -> None:
    """Call every read route as every role and print what each may see."""
    probes = [
        ("GET", "/v1/me"),
        ("GET", "/v1/config"),
        ("GET", "/v1/audit?limit=5"),
        ("GET", "/v1/audit/verify"),
    ]
    table = Table(
        "route",
        *[role.value for role in tokens],
        "none",
        title="What each role may see (200 allowed, 403 forbidden, 401 no token)",
    )
    for method, path in probes:
        cells = [
            _mark(client.request(method, path, headers={"authorization": f"Bearer {token}"}).status_code)
            for token in tokens.values()
        ]
        cells.append(_mark(client.request(method, path).status_code))
        table.add_row(f"{method} {path}", *cells)
    console.print(table)


def _decision_line(console: Console, title: str, decision: dict[str, Any]) -> None:
    verdict = "[bold green]ALLOW[/]" if decision["allow"] else "[bold red]DENY[/]"
    console.print(f"{title}: {verdict} (policy {decision['policy_version']})")
    for reason in decision["reasons"] if not decision["allow"] else []:
        console.print(f"    reason: {reason}", highlight=False)
    for obligation in decision["obligations"]:
        console.print(f"    obligation: {obligation}", highlight=False)


def _still_indexed_patient(runtime: Runtime, incoming: Path) -> dict[str, str]:
    """The hospital identifier of a patient whose studies are still stored (not the shredded one)."""
    import pydicom
    from sqlalchemy import select

    from connector.crypto.dataset_secrets import load_or_create_dataset_secret
    from connector.datasets.models import StudyRecord
    from connector.deid.keys import DatasetKeys, patient_key

    keys = DatasetKeys(load_or_create_dataset_secret(runtime.settings.keys_dir, "demo-cohort"))
    with runtime.sessions() as session:
        stored = set(session.execute(select(StudyRecord.patient_pseudonym)).scalars())
    for path in sorted(incoming.rglob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        patient_id, issuer = str(header.PatientID), str(header.get("IssuerOfPatientID", ""))
        if keys.pseudonym(patient_key(patient_id, issuer)) in stored:
            return {"patient_id": patient_id, "issuer": issuer}
    raise RuntimeError("no patient of the demo cohort is left to opt out")


def show_policies(
    console: Console, client: httpx.Client, runtime: Runtime, tokens: dict[Role, str], data_dir: Path
) -> None:
    """The DPO reviews and activates the policies, imports an opt-out; a researcher asks for access."""
    console.rule("5. The DPO's policies: test, activate, import opt-outs; access requests decided by OPA")
    dpo = {"authorization": f"Bearer {tokens[Role.DPO]}"}
    files = dict(PolicyBundle.from_dir(runtime.settings.policies_dir or default_policies_dir()).files)
    terms = json.loads(files["data.json"])
    # The DPO's review: the demo cohort is synthetic (no real person), so k may be 2 for it.
    terms["connector"]["settings"]["datasets"]["demo-cohort"]["k"] = 2
    files["data.json"] = json.dumps(terms, indent=2)
    tested = client.post("/v1/policy/test", json={"files": files}, headers=dpo).json()
    console.print(
        f"Rego unit tests: {tested['tests']} run, passed: {tested['passed']}, "
        f"coverage {tested['coverage_percent']}%"
    )
    reply = client.post(
        "/v1/policy/activate", json={"files": files, "note": "demo cohort: k = 2"}, headers=dpo
    )
    version = reply.json()["version"]
    console.print(f"activated {version['label']} ({version['digest'][:12]}) by {version['activated_by']}")
    history = client.get("/v1/policy/history", headers=dpo).json()
    console.print("history: " + ", ".join(f"{row['label']} ({row['note']})" for row in history))

    # One patient of the hospital's opt-out register, by the hospital's own identifier: the
    # connector turns it into the dataset's pseudonym and stores only that.
    optout = {**_still_indexed_patient(runtime, data_dir / "incoming"), "status": "opted-out"}
    imported = client.post(
        "/v1/consent/import", json={"entries": [optout], "source": "national opt-out register"}, headers=dpo
    ).json()
    console.print(
        f"opt-out register imported: {imported['entries']} entry ({imported['by_status']}); "
        "the hospital identifier was turned into the dataset pseudonym and dropped"
    )

    researcher_id, organisation, country = PEOPLE[Role.RESEARCHER]
    assert runtime.permit_issuer is not None
    permit = runtime.permit_issuer.issue(
        researcher_id,
        organisation,
        ["ai-development"],
        ["demo-cohort"],
        [country],
        valid_days=90,
        conditions=["publish results as open access"],
    )
    console.print(f"the HDAB (development issuer) grants {researcher_id} a data permit for ai-development")
    researcher = {"authorization": f"Bearer {tokens[Role.RESEARCHER]}"}
    base = {
        "action": "access",
        "dataset": "demo-cohort",
        "purpose": "ai-development",
        "requester": {"id": researcher_id, "organisation": organisation, "country": country},
        "permit": permit,
        "cohort": {"size": 2},
    }
    cases = [
        ("allowed request (ai-development, with permit)", base),
        (
            "prohibited purpose (insurance-or-credit-decision)",
            {**base, "purpose": "insurance-or-credit-decision"},
        ),
        ("no data permit", {**base, "permit": None}),
        ("cohort too small (1 patient)", {**base, "cohort": {"size": 1}}),
    ]
    for title, request in cases:
        _decision_line(
            console, title, client.post("/v1/access/decide", json=request, headers=researcher).json()
        )


def show_catalog(console: Console, client: httpx.Client, tokens: dict[Role, str], data_dir: Path) -> None:
    """The steward describes the dataset, the record is validated and published; anyone reads it."""
    from catalog.steward_file import load_steward_fields, steward_fields_to_mapping

    console.rule("6. The steward publishes the dataset in the HealthDCAT-AP catalog")
    steward = {"authorization": f"Bearer {tokens[Role.STEWARD]}"}
    example = EXAMPLE_DESCRIPTION.read_text(encoding="utf-8")
    fields = steward_fields_to_mapping(load_steward_fields(example, str(EXAMPLE_DESCRIPTION)))
    broken = {**fields, "title": {"en": ""}, "contact": {**fields["contact"], "email": "not-an-address"}}
    refused = client.put("/v1/catalog/datasets/demo-cohort/description", json=broken, headers=steward)
    console.print(f"an incomplete description is refused ({refused.status_code}):")
    for problem in refused.json().get("problems", []):
        console.print(f"  - {problem}")
    described = client.put("/v1/catalog/datasets/demo-cohort/description", json=fields, headers=steward)
    console.print(f"the description from {EXAMPLE_DESCRIPTION.name}: {described.json()['status']}")
    published = client.post(
        "/v1/catalog/datasets/demo-cohort/publish", json={"to": []}, headers=steward
    ).json()
    entry = published["entry"]
    console.print(
        f"validated against the HealthDCAT-AP shapes and published: version {entry['version']} "
        f"({len(entry['warnings'])} recommendations)"
    )
    _record_summary(console, client, data_dir)
    page = client.get("/catalog", params={"modality": "CT"}, headers={"accept": "application/ld+json"})
    console.print(
        f"search GET /catalog?modality=CT as JSON-LD: {page.status_code}, {len(page.content)} bytes"
    )


def _record_summary(console: Console, client: httpx.Client, data_dir: Path) -> None:
    """The public record in a few lines (its full Turtle, hundreds of lines, goes to a file)."""
    from connector.cli_dataspace import plain_texts

    turtle = client.get("/catalog/datasets/demo-cohort", headers={"accept": "text/turtle"}).text
    turtle_file = data_dir / "catalog-record-demo-cohort.ttl"
    turtle_file.write_text(turtle, encoding="utf-8")
    document = client.get("/catalog/datasets/demo-cohort", headers={"accept": "application/ld+json"}).json()
    nodes = [node for node in document.get("@graph", []) if isinstance(node, dict)]
    # Flat nodes without blank nodes (catalog.render): each value of each property is one triple.
    triples = sum(
        len(value) if isinstance(value, list) else 1
        for node in nodes
        for key, value in node.items()
        if key != "@id"
    )
    dataset = next((node for node in nodes if "Dataset" in str(node.get("@type"))), {})

    def field(name: str) -> str:
        # The reader's language of a multilingual text; every value of a list (keywords, laws).
        return ", ".join(plain_texts(dataset.get(name))) or "-"

    console.print("the public record (GET /catalog/datasets/demo-cohort):")
    console.print(f"  title:       {field('dct:title')}", highlight=False, markup=False)
    console.print(
        f"  counts:      {field('healthdcatap:numberOfRecords')} records of "
        f"{field('healthdcatap:numberOfUniqueIndividuals')} individuals",
        highlight=False,
        markup=False,
    )
    console.print(f"  keywords:    {field('dcat:keyword')}", highlight=False, markup=False)
    console.print(f"  legislation: {field('dcatap:applicableLegislation')}", highlight=False, markup=False)
    console.print(
        f"  {triples} triples about {len(nodes)} subjects; the full Turtle: {turtle_file}",
        highlight=False,
        markup=False,
        soft_wrap=True,  # a path cut across lines cannot be copied
    )


def _submit(
    client: httpx.Client, researcher: dict[str, str], request: dict[str, Any], package: bytes, signature: str
) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        data={"job": json.dumps(request), "signature": signature},
        files={"package": ("demo-model.zip", package, "application/zip")},
        headers=researcher,
    )


def show_jobs(
    console: Console, client: httpx.Client, runtime: Runtime, tokens: dict[Role, str]
) -> tuple[bytes, str]:
    """An AI team's signed model runs on the data; only a signed, policy-checked result leaves.
    Returns the team's signed package, which it later sends through its own connector."""
    from connector.compute.demo_model import demo_package
    from connector.compute.package_signing import generate_team_key
    from connector.jobs.runner import Worker, sandbox_limits

    console.rule("7. Compute-to-data: a signed model runs next to the data; a signed result leaves")
    team = "istituto-tumori-ai-lab"
    private_pem, public_pem = generate_team_key("EdDSA")
    steward = {"authorization": f"Bearer {tokens[Role.STEWARD]}"}
    key = client.post(
        "/v1/teams/keys", json={"team": team, "public_key": public_pem.decode()}, headers=steward
    )
    console.print(f"the steward registers the team's signing key {key.json()['key_id'][:16]}... ({team})")
    package, signature = demo_package(private_pem, team)
    console.print(
        f"the team trains a small MONAI network on synthetic images and signs its package "
        f"({len(package) / 1024:.0f} kB, EdDSA)"
    )
    researcher_id, organisation, country = PEOPLE[Role.RESEARCHER]
    assert runtime.permit_issuer is not None
    permit = runtime.permit_issuer.issue(
        researcher_id, organisation, ["ai-development"], ["demo-cohort"], [country], valid_days=90
    )
    researcher = {"authorization": f"Bearer {tokens[Role.RESEARCHER]}"}
    request = {
        "dataset": "demo-cohort",
        "purpose": "ai-development",
        "permit": permit,
        "cohort": {"modality": ["CT"]},
    }
    forged = _submit(client, researcher, request, package, signature[:-8] + "AAAAAAAA")
    console.print(f"a package whose signature does not match: {forged.status_code} {forged.json()['error']}")
    denied = _submit(client, researcher, {**request, "purpose": "advertising"}, package, signature)
    console.print(f"a job for a prohibited purpose: {denied.status_code} {denied.json()['detail'][:110]}")
    submitted = _submit(client, researcher, request, package, signature).json()
    console.print(
        f"job {submitted['id'][:12]} queued; a worker runs it (model in its own process, no network)"
    )
    worker = Worker(runtime, sandbox_limits(runtime.settings), poll_seconds=0.2)
    worker.start()
    try:
        job = submitted
        for _ in range(600):
            job = client.get(f"/v1/jobs/{submitted['id']}", headers=researcher).json()
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(0.2)
    finally:
        worker.stop()
    console.print(
        f"job {job['state']}: {job['studies_done']} of {job['studies_total']} studies, "
        f"{job['cohort_size']} patients after opt-outs"
    )
    if job["state"] != "succeeded":
        console.print(f"  reasons: {'; '.join(job['reasons'])}")
        return package, signature
    token = client.get(f"/v1/jobs/{submitted['id']}/result", headers=researcher).text
    from connector.jobs.results import verify_result

    body = verify_result(token, client.get("/v1/connector/keys").json()["keys"][0])
    console.print(
        f"signed result verified with the connector's public key: model {body['model']}, "
        f"{body['aggregate']['studies']} studies, predicted {body['aggregate']['predicted']}, "
        f"mean probabilities {body['aggregate']['mean']}"
    )
    return package, signature


def run_demo(data_dir: Path, patients: int, console: Console) -> None:
    from connector.synth import generate_cohort

    # The demo shows refusals on purpose; their log lines would only clutter its story.
    configure_logging("ERROR", "console")
    prepare_data_dir(data_dir)
    # The hospital's own address is known before anything is published: catalog IRIs, the DSP
    # callbacks and job endpoints handed to peers all name it.
    port = free_port()
    trust_list = data_dir / "trust-list.json"
    write_trust_list(trust_list, [])
    settings = load_settings(
        data_dir=data_dir, public_url=f"http://127.0.0.1:{port}", trust_list_file=trust_list
    )
    console.print(
        Panel.fit("Imaging data-space connector: end-to-end demo (embedded defaults)", style="bold")
    )

    console.rule("1. A synthetic identified cohort, as a hospital PACS would hold it")
    summary = generate_cohort(data_dir / "incoming", patients, seed=2026)
    console.print(
        f"{summary.files} DICOM files, {summary.studies} studies of {summary.patients} patients "
        f"({summary.bytes / 1e6:.1f} MB) with PHI planted everywhere real files carry it"
    )

    console.rule("2. The data steward ingests it: de-identified, verified, encrypted, stored, indexed")
    runtime = build_runtime(settings)
    ingested = ingest_dataset(
        runtime, data_dir / "incoming", "demo-cohort", DEFAULT_OPTIONS, actor=STEWARD, roles=["steward"]
    ).summary
    render_summary(console, ingested.deid)
    objects = list(settings.effective_objects_dir.rglob("*.enc"))
    plaintext = [path for path in objects if b"DICM" in path.read_bytes()]
    console.print(
        f"{ingested.stored} objects encrypted (AES-256-GCM, one key per study) "
        f"in {settings.effective_objects_dir}: "
        f"{len(plaintext)} of them hold plaintext DICOM; {ingested.studies} studies indexed"
    )
    exported = export_dataset_audited(
        runtime, "demo-cohort", data_dir / "exported", actor=STEWARD, roles=["steward"]
    )
    console.print(
        f"export: {exported} files decrypted into {data_dir / 'exported'}, each checked against its SHA-256"
    )
    victim = sorted(path.name for path in (data_dir / "exported").iterdir())[0]
    shredded = shred_dataset(
        runtime,
        "demo-cohort",
        actor=DPO,
        patient=victim,
        roles=["dpo"],
        audit_reason=f"erasure of patient {victim}",
    ).result
    console.print(
        f"erasure: patient {victim} crypto-shredded ({shredded.studies} studies, {shredded.objects} objects "
        f"deleted, dataset key rotated to {shredded.new_key_id}: backups cannot decrypt them either)"
    )

    console.rule("3. The connector service on 127.0.0.1")
    try:
        with serving(runtime, port) as base, httpx.Client(base_url=base, timeout=30) as client:
            ready = client.get("/readyz").json()
            console.print(f"service at {base}: {ready['status']} {ready['checks']}")

            console.rule("4. Each user group signs in (tokens from the embedded development issuer)")
            assert runtime.dev_issuer is not None
            tokens = {
                role: runtime.dev_issuer.issue(
                    sub, [role], ttl_seconds=900, organisation=org, country=country
                )
                for role, (sub, org, country) in PEOPLE.items()
            }
            for role, token in tokens.items():
                me = client.get("/v1/me", headers={"authorization": f"Bearer {token}"}).json()
                routes = ", ".join(
                    f"{item['method']} {item['path']}"
                    for item in me["may_call"]
                    if item["path"].startswith("/v1")
                )
                console.print(
                    f"[bold]{role.value:<10}[/] {me['subject']} ({me['organisation']}, {me['country']}) "
                    f"may call: {routes}"
                )
            show_access(console, client, tokens)
            forged = tokens[Role.DPO][:-6] + "AAAAAA"
            reply = client.get("/v1/audit", headers={"authorization": f"Bearer {forged}"})
            console.print(
                f"a forged DPO token: {reply.status_code} {reply.json()['error']}: {reply.json()['detail']}"
            )

            show_policies(console, client, runtime, tokens, data_dir)

            show_catalog(console, client, tokens, data_dir)
            package, signature = show_jobs(console, client, runtime, tokens)
            show_dataspace(console, runtime, data_dir, package, signature)

            console.rule("9. The DPO checks the tamper-evident audit trail")
            dpo = {"authorization": f"Bearer {tokens[Role.DPO]}"}
            client.post("/v1/audit/checkpoint", headers=dpo)
            entries = client.get("/v1/audit", params={"action": "auth.*"}, headers=dpo).json()["entries"]
            for entry in entries:
                console.print(
                    f"  #{entry['seq']} {entry['actor']} {entry['action']} {entry['object']}: "
                    f"{entry['outcome']} ({'; '.join(entry['reasons'])})"
                )
            verdict = client.get("/v1/audit/verify", headers=dpo).json()
            console.print(
                f"audit chain intact: {verdict['ok']} ({verdict['entries_checked']} entries, "
                f"{verdict['checkpoints_checked']} signed checkpoints)"
            )
    finally:
        runtime.close()
    console.rule("Done")
    console.print(f"Everything the demo made is in {data_dir}; run it again to start over.")
