"""Two connectors, two processes, two countries: a research team's connector (DE) finds a hospital's
dataset (BE) in its DSP catalog, negotiates a contract the hospital's policy decides, starts a
ComputeToData transfer and runs a signed model under the agreement, getting a signed result; and
every refusal on the way: untrusted or replayed identities, schema faults, unknown processes,
illegal transitions, policy denials, revoked transfers, and a peer that goes silent.

Every message either side answers with is validated against the official DSP 2025-1 schemas.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from connector.client import ConnectorClient, ConnectorError
from connector.dataspace import messages as m
from connector.dataspace.housekeeping import Housekeeper
from connector.dataspace.identity import peer_token
from connector.dataspace.models import Agreement, Negotiation
from connector.dataspace.negotiations import (
    DspError,
    expire_negotiations,
    get_negotiation,
    new_pid,
    start_negotiation,
    terminate,
)
from connector.dataspace.states import NEGOTIATION_FINAL
from connector.dataspace.transfers import end, get_transfer, resume, start_transfer
from connector.jobs.models import Job
from connector.local_connector import write_trust_list
from connector.runtime import Runtime
from tests import dsp_conformance
from tests.conftest import needs_conformance
from tests.dsp_connectors import DATASET, RESEARCHER, Pair, permit_for, prepare_pair, running

# Every flow here checks the messages on the wire against the official schemas as it goes.
pytestmark = needs_conformance("dsp")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    prepared = prepare_pair(tmp_path_factory.mktemp("dsp"))
    with running(prepared):
        yield prepared


@pytest.fixture(scope="module")
def provider(pair: Pair) -> Iterator[Runtime]:
    runtime = pair.provider.runtime()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def consumer(pair: Pair) -> Iterator[Runtime]:
    runtime = pair.consumer.runtime()
    yield runtime
    runtime.close()


def conforms(message: dict[str, Any]) -> dict[str, Any]:
    problems = dsp_conformance.check_typed(message)
    assert not problems, problems
    return message


def as_consumer(
    consumer: Runtime, provider_id: str, method: str, url: str, body: Any = None, **claims: Any
) -> httpx.Response:
    token = peer_token(consumer, provider_id, claims)
    return httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def catalog_of(consumer: Runtime, pair: Pair) -> dict[str, Any]:
    answer = as_consumer(
        consumer,
        pair.provider.connector_id,
        "POST",
        pair.provider.dsp + "/catalog/request",
        m.catalog_request(),
    )
    assert answer.status_code == 200, answer.text
    return conforms(answer.json())


def offer_of(catalog: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    dataset = catalog["dataset"][0]
    return dataset["@id"], dataset["hasPolicy"][0]


def wait_final(runtime: Runtime, pid: str, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    view = get_negotiation(runtime, pid)
    while view.state not in NEGOTIATION_FINAL and time.monotonic() < deadline:
        time.sleep(0.05)
        view = get_negotiation(runtime, pid)
    return view


def wait_transfer(runtime: Runtime, pid: str, states: set[str], seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    view = get_transfer(runtime, pid)
    while view.state not in states and time.monotonic() < deadline:
        time.sleep(0.05)
        view = get_transfer(runtime, pid)
    return view


def negotiate(
    pair: Pair, provider: Runtime, consumer: Runtime, purpose: str | None = "ai-development", **permit: Any
) -> Any:
    dataset_iri, offer = offer_of(catalog_of(consumer, pair))
    participant = consumer.trust.get(pair.provider.connector_id)
    assert participant is not None
    view = start_negotiation(
        consumer, participant, dataset_iri, offer, RESEARCHER, permit_for(provider, **permit), purpose
    )
    return wait_final(consumer, view.pid)


def test_the_version_and_catalog_are_served_to_trusted_peers_in_dsp_form(
    pair: Pair, consumer: Runtime
) -> None:
    version = httpx.get(pair.provider.url + "/.well-known/dspace-version", timeout=10)
    assert version.status_code == 200
    conforms(version.json())
    assert version.json()["protocolVersions"][0]["version"] == "2025-1"

    catalog = catalog_of(consumer, pair)
    assert catalog["participantId"] == pair.provider.connector_id
    dataset_iri, offer = offer_of(catalog)
    assert dataset_iri.endswith(f"/catalog/datasets/{DATASET}")
    constraints = {c["leftOperand"]: c for c in offer["permission"][0]["constraint"]}
    assert "ai-development" in constraints["purpose"]["rightOperand"]
    assert constraints["absoluteSize"] == {
        "leftOperand": "absoluteSize",
        "operator": "gteq",
        "rightOperand": "2",
    }
    # The HealthDCAT-AP record travels with it: title, and the counts under their full IRIs.
    dataset = catalog["dataset"][0]
    assert "dct:title" in dataset
    assert any(key.startswith("http://healthdataportal.eu/ns/health#") for key in dataset)
    assert [d["format"] for d in dataset["distribution"]] == ["ComputeToData"]

    single = as_consumer(
        consumer, pair.provider.connector_id, "GET", pair.provider.dsp + "/catalog/datasets/" + dataset_iri
    )
    assert single.status_code == 200
    assert dsp_conformance.check("Dataset", single.json()) == []
    missing = as_consumer(
        consumer, pair.provider.connector_id, "GET", pair.provider.dsp + "/catalog/datasets/nope"
    )
    assert missing.status_code == 404
    assert conforms(missing.json())["@type"] == "CatalogError"


def test_a_cross_border_compute_to_data_job_runs_under_a_signed_agreement(
    pair: Pair, provider: Runtime, consumer: Runtime
) -> None:
    view = negotiate(pair, provider, consumer)
    assert view.state == "FINALIZED", view.reasons
    assert view.purpose == "ai-development"

    # Both sides hold the agreement; the provider's signature verifies against its trust-list key.
    with provider.sessions() as session:
        theirs = session.get(Agreement, view.agreement_id)
        provider_side = session.execute(
            select(Negotiation).where(Negotiation.agreement_id == view.agreement_id)
        ).scalar_one()
    assert theirs is not None and theirs.consumer == pair.consumer.connector_id and theirs.country == "DE"
    assert provider_side.state == "FINALIZED" and provider_side.policy_version
    with consumer.sessions() as session:
        ours = session.get(Agreement, view.agreement_id)
    assert ours is not None
    signed = jwt.decode(ours.signature, options={"verify_signature": False})
    assert signed["agreement"] == json.loads(ours.document)
    assert json.loads(ours.document)["assigner"] == pair.provider.connector_id

    transfer = start_transfer(consumer, view.agreement_id, m.COMPUTE_TO_DATA)
    transfer = wait_transfer(consumer, transfer.pid, {"STARTED", "TERMINATED"})
    assert transfer.state == "STARTED", transfer.reasons
    address = m.DataAddress.model_validate(transfer.data_address)
    assert address.endpoint == pair.provider.url
    token = address.property("authorization")
    assert token and address.property("dataset") == DATASET

    client = ConnectorClient(address.endpoint, token)
    package, signature = pair.package
    job = client.submit_job(
        package, signature, dataset=DATASET, purpose="ai-development", permit=permit_for(provider)
    )
    job = client.wait(job.id, timeout=120, poll=0.2)
    assert job.state == "succeeded", job.reasons
    result = client.verified_result(job.id)
    assert result["job"] == job.id and result["dataset"] == DATASET
    with provider.sessions() as session:
        stored = session.get(Job, job.id)
    assert stored is not None and stored.agreement_id == view.agreement_id and stored.submitter == RESEARCHER

    # The agreement covers one dataset and purpose: anything else is refused before it is stored.
    with pytest.raises(ConnectorError) as refused:
        client.submit_job(
            package, signature, dataset=DATASET, purpose="education", permit=permit_for(provider)
        )
    assert refused.value.code == "not_under_agreement"
    # The token is good for the jobs routes only.
    other = httpx.get(
        pair.provider.url + "/v1/policy/active", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert other.status_code == 403

    # Completing the transfer revokes the token at once.
    end(consumer, transfer.pid, "TransferCompletionMessage", [])
    with pytest.raises(ConnectorError) as revoked:
        client.job(job.id)
    assert (revoked.value.status, revoked.value.code) == (403, "agreement_inactive")


def test_a_request_for_every_purpose_gets_a_counter_offer_for_the_permits_purpose(
    pair: Pair, provider: Runtime, consumer: Runtime
) -> None:
    view = negotiate(pair, provider, consumer, purpose=None)
    assert view.state == "FINALIZED", view.reasons
    assert view.purpose == "ai-development"
    # Each move is audited just after it is stored: give the last entry a moment to land.
    deadline = time.monotonic() + 10
    while len(events := _audit_actions(consumer, view.pid)) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [a.rsplit(".", 1)[1] for a in events] == [
        "requested",
        "offered",
        "accepted",
        "agreed",
        "verified",
        "finalized",
    ]


def _audit_actions(runtime: Runtime, pid: str) -> list[str]:
    from connector.audit.models import AuditEntry

    with runtime.sessions() as session:
        return list(
            session.execute(
                select(AuditEntry.action).where(AuditEntry.object == pid).order_by(AuditEntry.seq)
            ).scalars()
        )


@pytest.mark.parametrize(
    ("purpose", "permit", "expected"),
    [
        ("education", {}, "the data permit does not cover purpose"),  # offered, but not the permit's
        ("ai-development", {"datasets": ["another-dataset"]}, "dataset"),
        ("ai-development", {"organisation": "Someone Else"}, "organisation"),
        ("advertising", {}, "purpose may only be narrowed"),  # prohibited: never offered
    ],
)
def test_the_providers_policy_refuses_with_its_reasons(
    pair: Pair, provider: Runtime, consumer: Runtime, purpose: str, permit: dict[str, Any], expected: str
) -> None:
    view = negotiate(pair, provider, consumer, purpose=purpose, **permit)
    assert view.state == "TERMINATED"
    assert any(expected in reason for reason in view.reasons), view.reasons
    assert view.agreement_id == ""


def test_untrusted_replayed_and_expired_identities_are_refused(pair: Pair, consumer: Runtime) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    url = pair.provider.dsp + "/catalog/request"

    def ask(token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(url, json=m.catalog_request(), headers=headers, timeout=10)

    def signed(issuer: str, key: Any, jti: str, issued: int, lifetime: int = 60) -> str:
        claims = {"iss": issuer, "sub": issuer, "aud": pair.provider.connector_id, "iat": issued}
        return jwt.encode({**claims, "exp": issued + lifetime, "jti": jti}, key, algorithm="EdDSA")

    anonymous = ask(None)
    assert anonymous.status_code == 401 and conforms(anonymous.json())["code"] == "missing_token"

    token = peer_token(consumer, pair.provider.connector_id)
    first, again = ask(token), ask(token)
    assert first.status_code == 200
    assert again.status_code == 401 and again.json()["code"] == "replayed_token"

    answer = ask(peer_token(consumer, "urn:connector:someone-else"))
    assert answer.status_code == 401 and answer.json()["code"] == "wrong_audience"

    now = int(time.time())
    me = pair.consumer.connector_id
    answer = ask(signed(me, consumer.signing_key.jws_key, "expired-token-1", now - 600, lifetime=300))
    assert answer.status_code == 401 and answer.json()["code"] == "expired_token"

    # A stranger with a key of its own, claiming to be the consumer, fails the signature check.
    answer = ask(signed(me, Ed25519PrivateKey.generate(), "forged-token-1", now))
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_signature"

    answer = ask(signed("urn:connector:stranger", Ed25519PrivateKey.generate(), "stranger-token-1", now))
    assert answer.status_code == 401 and answer.json()["code"] == "untrusted_peer"


def test_bad_messages_unknown_processes_and_illegal_transitions_change_nothing(
    pair: Pair, provider: Runtime, consumer: Runtime
) -> None:
    provider_id, dsp = pair.provider.connector_id, pair.provider.dsp
    not_json = httpx.post(
        dsp + "/negotiations/request",
        content=b"{oops",
        headers={
            "Authorization": f"Bearer {peer_token(consumer, provider_id)}",
            "content-type": "application/json",
        },
        timeout=10,
    )
    assert not_json.status_code == 400 and conforms(not_json.json())["code"] == "invalid_json"

    schema_fault = as_consumer(
        consumer,
        provider_id,
        "POST",
        dsp + "/negotiations/request",
        {"@context": m.CONTEXT, "@type": "ContractRequestMessage", "consumerPid": 5},
    )
    assert schema_fault.status_code == 400
    body = conforms(schema_fault.json())
    assert body["@type"] == "ContractNegotiationError" and body["code"] == "invalid_message"
    assert any("offer" in reason for reason in body["reason"])

    unknown = as_consumer(
        consumer, provider_id, "GET", dsp + "/negotiations/urn:uuid:00000000-0000-0000-0000-000000000000"
    )
    assert unknown.status_code == 404 and conforms(unknown.json())["code"] == "unknown_process"
    unknown_transfer = as_consumer(
        consumer,
        provider_id,
        "POST",
        dsp + "/transfers/urn:uuid:0/completion",
        m.transfer_completion("urn:uuid:0", "urn:uuid:1"),
    )
    assert (
        unknown_transfer.status_code == 404 and conforms(unknown_transfer.json())["@type"] == "TransferError"
    )

    view = negotiate(pair, provider, consumer)
    assert view.state == "FINALIZED"
    with provider.sessions() as session:
        before = session.execute(select(Negotiation).where(Negotiation.pid == view.peer_pid)).scalar_one()
        state_before, updated_before = before.state, before.updated_at
    illegal = as_consumer(
        consumer,
        provider_id,
        "POST",
        dsp + f"/negotiations/{view.peer_pid}/agreement/verification",
        m.agreement_verification(view.peer_pid, view.pid),
    )
    assert illegal.status_code == 409 and conforms(illegal.json())["code"] == "illegal_transition"
    with provider.sessions() as session:
        after = session.execute(select(Negotiation).where(Negotiation.pid == view.peer_pid)).scalar_one()
    assert (after.state, after.updated_at) == (state_before, updated_before)

    # Another peer's process is not yours to read: the provider answers as if it did not exist.
    state = as_consumer(consumer, provider_id, "GET", dsp + f"/negotiations/{view.peer_pid}")
    assert state.status_code == 200 and conforms(state.json())["state"] == "FINALIZED"

    # A transfer for an agreement the consumer does not hold, or in a format not agreed, is refused.
    bogus = as_consumer(
        consumer,
        provider_id,
        "POST",
        dsp + "/transfers/request",
        m.transfer_request("urn:uuid:c1", "urn:uuid:nope", m.COMPUTE_TO_DATA, pair.consumer.dsp),
    )
    assert bogus.status_code == 404 and conforms(bogus.json())["code"] == "unknown_agreement"
    with pytest.raises(DspError) as not_agreed:
        start_transfer(consumer, view.agreement_id, m.ENCRYPTED_PULL)
    assert "format_not_agreed" in str(not_agreed.value) or "not agreed" in str(not_agreed.value)


def test_a_provider_that_disappears_mid_negotiation_leaves_a_terminated_process(
    pair: Pair, provider: Runtime, consumer: Runtime
) -> None:
    participant = consumer.trust.get(pair.provider.connector_id)
    assert participant is not None
    dataset_iri, offer = offer_of(catalog_of(consumer, pair))
    view = start_negotiation(
        consumer, participant, dataset_iri, offer, RESEARCHER, permit_for(provider), "ai-development"
    )
    view = wait_final(consumer, view.pid)
    assert view.state == "FINALIZED"
    # A negotiation stuck in REQUESTED (its provider never answers) times out into TERMINATED.
    from dataclasses import replace

    gone = replace(participant, dsp="http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DspError):
        start_negotiation(
            consumer, gone, dataset_iri, offer, RESEARCHER, permit_for(provider), "ai-development"
        )
    with consumer.sessions() as session:
        stuck = session.execute(
            select(Negotiation).where(Negotiation.peer_address == "http://127.0.0.1:9")
        ).scalar_one()
    assert stuck.state == "TERMINATED"
    assert any("refused" in reason or "reached" in reason for reason in json.loads(stuck.reasons))

    # And one that was requested but never answered is terminated once its deadline passes.
    with consumer.sessions() as session, session.begin():
        live = session.execute(select(Negotiation).where(Negotiation.pid == view.pid)).scalar_one()
        live.state, live.deadline = "REQUESTED", 0.0
    assert view.pid in Housekeeper(consumer, interval_seconds=1).run_once()
    assert get_negotiation(consumer, view.pid).state == "TERMINATED"
    assert expire_negotiations(consumer) == []  # once terminated, it stays as it is


def test_the_trust_list_is_re_read_when_the_trust_anchor_changes_it(pair: Pair, consumer: Runtime) -> None:
    listed = json.loads(pair.provider.trust_list.read_text())
    url = pair.provider.dsp + "/catalog/request"

    def ask() -> httpx.Response:
        return as_consumer(consumer, pair.provider.connector_id, "POST", url, m.catalog_request())

    assert ask().status_code == 200
    try:
        write_trust_list(pair.provider.trust_list, [])  # the consumer is struck off
        refused = ask()
        assert refused.status_code == 401 and refused.json()["code"] == "untrusted_peer"
        write_trust_list(pair.provider.trust_list, listed["participants"])
        assert ask().status_code == 200
        pair.provider.trust_list.write_text("{not json")  # a broken update keeps the last good list
        assert ask().status_code == 200
    finally:
        write_trust_list(pair.provider.trust_list, listed["participants"])
    assert ask().status_code == 200


def test_an_encrypted_copy_is_pulled_only_where_the_policy_allows_copies(tmp_path: Path) -> None:
    from connector.dataspace.encrypted_copy import load_copy, open_copied

    copyable = prepare_pair(tmp_path, copies=True)
    with running(copyable):
        provider, consumer = copyable.provider.runtime(), copyable.consumer.runtime()
        try:
            catalog = catalog_of(consumer, copyable)
            assert [d["format"] for d in catalog["dataset"][0]["distribution"]] == [
                "ComputeToData",
                "EncryptedDataset-PULL",
            ]
            view = negotiate(copyable, provider, consumer)
            assert view.state == "FINALIZED", view.reasons
            transfer = start_transfer(consumer, view.agreement_id, m.ENCRYPTED_PULL)
            transfer = wait_transfer(consumer, transfer.pid, {"COMPLETED", "TERMINATED"}, seconds=60)
            assert transfer.state == "COMPLETED", transfer.reasons
            copy_name = transfer.pid.removeprefix("urn:uuid:")
            manifest = load_copy(consumer, copy_name)
            assert manifest.objects
            first = manifest.objects[0]
            plaintext = open_copied(consumer, copy_name, first.key)
            assert plaintext[128:132] == b"DICM"
            # What the consumer holds at rest is the provider's ciphertext, never the plaintext.
            stored = consumer.objects.get(f"peer-copies/{copy_name}/objects/{first.key}")
            assert b"DICM" not in stored
            # The copy token died with the transfer.
            provider_view = wait_transfer(provider, transfer.peer_pid, {"COMPLETED"})
            assert provider_view.state == "COMPLETED"
        finally:
            provider.close()
            consumer.close()


def test_a_suspended_transfer_refuses_its_token_until_resumed_and_a_provider_can_terminate_it(
    pair: Pair, provider: Runtime, consumer: Runtime
) -> None:
    view = negotiate(pair, provider, consumer)
    assert view.state == "FINALIZED", view.reasons
    transfer = start_transfer(consumer, view.agreement_id, m.COMPUTE_TO_DATA)
    transfer = wait_transfer(consumer, transfer.pid, {"STARTED", "TERMINATED"})
    assert transfer.state == "STARTED", transfer.reasons
    first = m.DataAddress.model_validate(transfer.data_address).property("authorization")

    def jobs_with(token: str | None) -> int:
        return httpx.get(
            pair.provider.url + "/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).status_code

    assert jobs_with(first) == 200
    suspended = end(consumer, transfer.pid, "TransferSuspensionMessage", ["pausing over the weekend"])
    assert suspended.state == "SUSPENDED"
    assert wait_transfer(provider, transfer.peer_pid, {"SUSPENDED"}).state == "SUSPENDED"
    assert jobs_with(first) == 403

    resume(consumer, transfer.pid)
    resumed = wait_transfer(consumer, transfer.pid, {"STARTED", "TERMINATED"})
    assert resumed.state == "STARTED", resumed.reasons
    second = m.DataAddress.model_validate(resumed.data_address).property("authorization")
    assert second != first and jobs_with(second) == 200

    # The provider ends it: the consumer learns it, and neither token works any more.
    ended = end(
        provider, transfer.peer_pid, "TransferTerminationMessage", ["the hospital ends this transfer"]
    )
    assert ended.state == "TERMINATED"
    assert wait_transfer(consumer, transfer.pid, {"TERMINATED"}).state == "TERMINATED"
    assert get_transfer(consumer, transfer.pid).reasons == ["the hospital ends this transfer"]
    assert jobs_with(second) == 403
    # A terminated process takes no further message.
    late = as_consumer(
        consumer,
        pair.provider.connector_id,
        "POST",
        pair.provider.dsp + f"/transfers/{transfer.peer_pid}/completion",
        m.transfer_completion(transfer.peer_pid, transfer.pid),
    )
    assert late.status_code == 409 and conforms(late.json())["code"] == "illegal_transition"


def final_state_of(runtime: Runtime, pid: str) -> Negotiation:
    """The negotiation `pid` once it reached a final state (or as it stands after 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        with runtime.sessions() as session:
            row = session.get(Negotiation, pid)
        assert row is not None
        if row.state in NEGOTIATION_FINAL or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def test_the_consumer_can_terminate_a_live_negotiation_and_both_sides_end_alike(
    pair: Pair, provider: Runtime, consumer: Runtime
) -> None:
    participant = consumer.trust.get(pair.provider.connector_id)
    assert participant is not None
    dataset_iri, offer = offer_of(catalog_of(consumer, pair))
    outcomes = set()
    # The provider agrees at once, so our termination races its agreement and our verification:
    # usually ours wins, sometimes theirs. Whichever wins, the two sides must end in the same state;
    # rounds go on until ours has won once (the common case, so ten rounds are plenty).
    for _ in range(10):
        view = start_negotiation(
            consumer, participant, dataset_iri, offer, RESEARCHER, permit_for(provider), "ai-development"
        )
        try:
            ended = terminate(consumer, view.pid, ["we changed our minds"])
        except DspError as exc:
            # Our verification had gone out: the provider's FINALIZED decides, and we follow it.
            assert exc.status == 409 and exc.code == "verification_sent"
            ours = final_state_of(consumer, view.pid)
            assert ours.state == "FINALIZED"
        else:
            assert ended.state == "TERMINATED"
            ours = final_state_of(consumer, view.pid)
        theirs = final_state_of(provider, view.peer_pid)
        assert (ours.state, theirs.state) in {("TERMINATED", "TERMINATED"), ("FINALIZED", "FINALIZED")}
        if theirs.state == "TERMINATED":
            # With our reason, or because we refused its agreement once we had terminated.
            reasons = json.loads(theirs.reasons)
            assert reasons == ["we changed our minds"] or "illegal_transition" in reasons[0], reasons
        outcomes.add(theirs.state)
        if "TERMINATED" in outcomes:
            break
    assert "TERMINATED" in outcomes


def test_a_consumer_that_has_verified_may_not_terminate_any_more(pair: Pair, consumer: Runtime) -> None:
    # A negotiation of ours caught between our verification and the provider's FINALIZED.
    pid, now = new_pid(), "2026-01-01T00:00:00Z"
    with consumer.sessions() as session, session.begin():
        session.add(
            Negotiation(
                pid=pid,
                role="consumer",
                peer_pid=new_pid(),
                peer=pair.provider.connector_id,
                peer_address=pair.provider.dsp,
                state="VERIFIED",
                target="urn:example:dataset",
                offer="{}",
                created_at=now,
                updated_at=now,
                deadline=time.time() + 60,
            )
        )
    with pytest.raises(DspError) as refused:
        terminate(consumer, pid, ["too late"])
    assert refused.value.status == 409 and refused.value.code == "verification_sent"
    assert get_negotiation(consumer, pid).state == "VERIFIED"


def test_the_research_team_uses_the_cli_from_catalog_to_job_token(
    pair: Pair, provider: Runtime, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from connector.cli import app

    env = {key: value for key, value in pair.consumer.env().items() if key.startswith("CONNECTOR_")}
    runner = CliRunner()
    shown = runner.invoke(app, ["peer", "catalog", pair.provider.dsp, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    catalog = conforms(json.loads(shown.output))
    dataset_iri, offer = offer_of(catalog)
    table = runner.invoke(app, ["peer", "catalog", pair.provider.dsp], env=env)
    assert table.exit_code == 0 and "UZ Leuven (BE): urn:connector:hospital-leuven" in table.output
    assert "@value" not in table.output and "@language" not in table.output  # titles as plain text

    permit = tmp_path / "permit.jwt"
    permit.write_text(permit_for(provider))
    agreed = runner.invoke(
        app,
        [
            "negotiate",
            pair.provider.dsp,
            "--dataset",
            dataset_iri,
            "--offer",
            offer["@id"],
            "--permit",
            str(permit),
            "--purpose",
            "ai-development",
            "--json",
        ],
        env=env,
    )
    assert agreed.exit_code == 0, agreed.output
    outcome = json.loads(agreed.output)
    assert outcome["state"] == "FINALIZED" and outcome["agreement"]

    refused = runner.invoke(
        app,
        [
            "negotiate",
            pair.provider.dsp,
            "--dataset",
            dataset_iri,
            "--offer",
            offer["@id"],
            "--permit",
            str(permit),
            "--purpose",
            "education",
            "--json",
        ],
        env=env,
    )
    assert refused.exit_code == 1
    assert json.loads(refused.output)["state"] == "TERMINATED"

    started = runner.invoke(
        app, ["transfer", "start", "--agreement", outcome["agreement"], "--json"], env=env
    )
    assert started.exit_code == 0, started.output
    transfer = json.loads(started.output)
    assert transfer["state"] == "STARTED" and transfer["endpoint"] == pair.provider.url and transfer["token"]

    unknown = runner.invoke(
        app,
        ["negotiate", "http://127.0.0.1:9/dsp", "--dataset", "x", "--offer", "y", "--permit", str(permit)],
        env=env,
    )
    assert unknown.exit_code == 2 and "not the DSP address" in " ".join(unknown.output.split())
    identity = runner.invoke(app, ["peer", "identity"], env=env)
    assert json.loads(identity.output)["id"] == pair.consumer.connector_id
    completed = runner.invoke(app, ["transfer", "complete", transfer["transfer"]], env=env)
    assert completed.exit_code == 0 and "COMPLETED" in completed.output
