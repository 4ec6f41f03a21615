"""The demo's cross-border step: the Italian AI team's own connector, a second `connector serve`
process with its own folder, database and keys, finds the Belgian hospital's dataset in its DSP
catalog, negotiates a contract the hospital's policy decides (a refusal first, with its reasons),
starts a ComputeToData transfer and runs its signed model under the agreement.

It touches only the demo folder and 127.0.0.1, like the rest of the demo.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from connector.client import ConnectorClient, ConnectorError
from connector.dataspace import messages as m
from connector.dataspace.identity import own_participant
from connector.dataspace.negotiations import get_negotiation, start_negotiation
from connector.dataspace.peer_client import call
from connector.dataspace.states import NEGOTIATION_FINAL, NegotiationState, TransferState
from connector.dataspace.transfers import end, get_transfer, start_transfer
from connector.jobs.runner import Worker, sandbox_limits
from connector.jobs.schemas import JobState
from connector.local_connector import LocalConnector, free_port, write_trust_list
from connector.runtime import Runtime

TEAM_CONNECTOR = "urn:connector:istituto-tumori-milano"
RESEARCHER = ("researcher-chiara", "Istituto Tumori AI Lab", "IT")


# Callable[..., object]: callers bind values as lambda defaults, which mypy cannot infer against ().
def _until(check: Callable[..., object], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


def show_dataspace(
    console: Console, hospital: Runtime, data_dir: Path, package: bytes, signature: str
) -> None:
    console.rule("8. Across a border: the AI team's own connector negotiates through the Dataspace Protocol")
    researcher, organisation, country = RESEARCHER
    team = LocalConnector(
        "research-connector",
        data_dir / "research-connector",
        free_port(),
        TEAM_CONNECTOR,
        country,
        organisation,
        data_dir / "research-connector-trust.json",
    )
    # The data space's trust anchor lists both connectors (keys, organisation, country).
    hospital_entry = own_participant(hospital).to_dict()
    write_trust_list(team.trust_list, [hospital_entry])
    assert hospital.settings.trust_list_file is not None  # the demo configures the hospital with one
    write_trust_list(hospital.settings.trust_list_file, [team.participant_entry()])
    console.print(
        f"trust list: {hospital.settings.connector_id} ({hospital.settings.country}) and "
        f"{TEAM_CONNECTOR} ({country}); each request carries a 60 s token signed by its connector"
    )
    with team.serving():
        consumer = team.runtime()
        worker = Worker(hospital, sandbox_limits(hospital.settings), poll_seconds=0.2)
        worker.start()
        try:
            _negotiate_and_run(console, hospital, consumer, researcher, package, signature)
        finally:
            worker.stop()
            consumer.close()


def _negotiate_and_run(
    console: Console, hospital: Runtime, consumer: Runtime, researcher: str, package: bytes, signature: str
) -> None:
    provider = consumer.trust.get(hospital.settings.connector_id)
    assert provider is not None and hospital.permit_issuer is not None
    catalog = (
        call(consumer, provider.id, "POST", provider.dsp + "/catalog/request", m.catalog_request()) or {}
    )
    dataset = catalog["dataset"][0]
    offer = dataset["hasPolicy"][0]
    purposes = offer["permission"][0]["constraint"][0]["rightOperand"]
    console.print(
        f"DSP catalog of {catalog['participantId']}: {dataset['@id']} offered for {', '.join(purposes)} "
        f"as {', '.join(d['format'] for d in dataset['distribution'])}"
    )
    permit = hospital.permit_issuer.issue(
        researcher, RESEARCHER[1], ["ai-development"], ["demo-cohort"], [RESEARCHER[2]], valid_days=90
    )
    for purpose in ("education", "ai-development"):
        view = start_negotiation(consumer, provider, dataset["@id"], offer, researcher, permit, purpose)
        _until(lambda pid=view.pid: get_negotiation(consumer, pid).state in NEGOTIATION_FINAL)
        view = get_negotiation(consumer, view.pid)
        colour = "green" if view.state == NegotiationState.FINALIZED else "red"
        console.print(f"contract request for purpose {purpose}: [{colour}]{view.state}[/{colour}]")
        for reason in view.reasons[:2]:
            console.print(f"  - {reason}")
    if view.state != NegotiationState.FINALIZED:
        return
    console.print(
        f"agreement {view.agreement_id}, signed by the hospital's key and stored by both connectors"
    )
    transfer = start_transfer(consumer, view.agreement_id, m.COMPUTE_TO_DATA)
    _until(lambda: get_transfer(consumer, transfer.pid).state != TransferState.REQUESTED)
    transfer = get_transfer(consumer, transfer.pid)
    address = m.DataAddress.model_validate(transfer.data_address or {})
    console.print(
        f"ComputeToData transfer {transfer.state}: jobs go to {address.endpoint} with a token bound to it"
    )
    client = ConnectorClient(str(address.endpoint), address.property("authorization"))
    job = client.submit_job(
        package, signature, dataset="demo-cohort", purpose="ai-development", permit=permit
    )
    job = client.wait(job.id, timeout=300, poll=0.2)
    if job.state == JobState.SUCCEEDED:
        result = client.verified_result(job.id)
        console.print(
            f"job {job.state} under the agreement; signed result verified: {result['aggregate']['studies']} "
            f"studies, predicted {result['aggregate']['predicted']}"
        )
    else:
        console.print(f"job {job.state}: {'; '.join(job.reasons)}")
    end(consumer, transfer.pid, "TransferCompletionMessage", [])
    try:
        client.job(job.id)
    except ConnectorError as exc:
        console.print(f"transfer completed: its token is refused from now on ({exc.status} {exc.code})")
