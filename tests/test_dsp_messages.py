"""The Dataspace Protocol 2025-1 messages against the official schemas and examples.

Checks, without a runtime or a database: that the official examples validate (and the one known
upstream inconsistency still fails), that our incoming models accept every official example and
refuse malformed messages without echoing their values, that every builder's message validates
against its official schema and parses back, the negotiation and transfer state machines against
the specification's (written out here, independently of the module's tables), and the offer
comparison and agreement document of offers.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft201909Validator
from pydantic import BaseModel

from catalog.model import LegalBasis, Offer, Purpose
from connector.dataspace import messages as m
from connector.dataspace.offers import (
    OfferMismatch,
    agreement_document,
    narrowed,
    offer_constraints,
    requested_purpose,
)
from connector.dataspace.states import IllegalTransition, Role, next_negotiation_state, next_transfer_state
from tests import dsp_conformance
from tests.conftest import needs_conformance

# The tests that read the official schemas or examples skip without them; the rest always run.
NEEDS_DSP = needs_conformance("dsp")

DID_SERVICE_SCHEMA = dsp_conformance.BASE + "common/did-service-schema.json"
KNOWN_UPSTREAM_FAILURE = "dataservice-did-service.json"
SECRET = "SECRET-VALUE-7f3a9c"

PROVIDER_PID = "urn:uuid:provider-pid-1"
CONSUMER_PID = "urn:uuid:consumer-pid-1"
TARGET = "https://hospital.example/datasets/chest-ct"
OFFER_ID = TARGET + "#offer-0123456789abcdef"

# Message @type -> our model for it (what the connector reads from a peer).
MODELS: dict[str, type[BaseModel]] = {
    "CatalogRequestMessage": m.CatalogRequestMessage,
    "DatasetRequestMessage": m.DatasetRequestMessage,
    "ContractRequestMessage": m.ContractRequestMessage,
    "ContractOfferMessage": m.ContractOfferMessage,
    "ContractAgreementMessage": m.ContractAgreementMessage,
    "ContractAgreementVerificationMessage": m.ContractAgreementVerificationMessage,
    "ContractNegotiationEventMessage": m.ContractNegotiationEventMessage,
    "ContractNegotiationTerminationMessage": m.ContractNegotiationTerminationMessage,
    "TransferRequestMessage": m.TransferRequestMessage,
    "TransferStartMessage": m.TransferStartMessage,
    "TransferCompletionMessage": m.TransferCompletionMessage,
    "TransferSuspensionMessage": m.TransferSuspensionMessage,
    "TransferTerminationMessage": m.TransferTerminationMessage,
    "ContractNegotiation": m.ProcessMessage,
    "TransferProcess": m.ProcessMessage,
    "CatalogError": m.ErrorMessage,
    "ContractNegotiationError": m.ErrorMessage,
    "TransferError": m.ErrorMessage,
}
# Official examples no incoming model reads: catalogs are built, not parsed, by this connector.
UNPARSED = {"Catalog", "Dataset", "VersionResponse", "did-service"}


def _kind(example: dict[str, Any]) -> str:
    if "protocolVersions" in example:
        return "VersionResponse"
    if "serviceEndpoint" in example:
        return "did-service"
    return str(example["@type"])


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _example(name: str) -> dict[str, Any]:
    dsp_conformance.require()
    return _load(next(p for p in dsp_conformance.examples() if p.name == name))


def _did_service_errors(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    schema = dsp_conformance._schemas()[DID_SERVICE_SCHEMA]
    validator = Draft201909Validator(schema, registry=dsp_conformance._registry())
    return [
        ("/".join(map(str, e.absolute_path)), str(e.validator), e.message)
        for e in validator.iter_errors(message)
    ]


def _terms() -> Offer:
    def purpose(code: str) -> Purpose:
        return Purpose(code, code.title(), "EHDS art. 53", f"https://w3id.org/dpv#{code}")

    return Offer(
        purposes=(purpose("research"), purpose("education")),
        legal_basis=LegalBasis("public-interest", "https://w3id.org/dpv#PublicInterest", ()),
        countries=("BE", "NL"),
        k=10,
    )


def _ours() -> dict[str, Any]:
    """Our catalog offer, shaped as offers.offer_for shapes it (which needs a runtime)."""
    return {
        "@id": OFFER_ID,
        "@type": "Offer",
        "permission": [{"action": "use", "constraint": offer_constraints(_terms())}],
    }


def _agreement(valid_until: float = 1_900_000_000.0) -> dict[str, Any]:
    return agreement_document(
        "urn:uuid:agreement-1",
        _ours(),
        purpose="research",
        target=TARGET,
        provider="did:web:hospital.example",
        consumer="did:web:lab.example",
        country="BE",
        valid_until=valid_until,
    )


# --- 1. The official examples -----------------------------------------------------------------------


@NEEDS_DSP
def test_the_conformance_set_holds_the_27_official_examples() -> None:
    names = {p.name for p in dsp_conformance.examples()}
    assert len(names) == 27
    assert KNOWN_UPSTREAM_FAILURE in names


@NEEDS_DSP
@pytest.mark.parametrize(
    "path",
    [p for p in dsp_conformance.examples() if p.name != KNOWN_UPSTREAM_FAILURE],
    ids=lambda p: p.name,
)
def test_official_example_validates_against_its_schema(path: Path) -> None:
    example = _load(path)
    if _kind(example) == "did-service":
        assert _did_service_errors(example) == []
    else:
        assert dsp_conformance.check_typed(example) == []


@NEEDS_DSP
def test_dataservice_did_service_example_still_fails_upstream_on_the_endpoint_pattern() -> None:
    errors = _did_service_errors(_example(KNOWN_UPSTREAM_FAILURE))
    assert [(where, rule) for where, rule, _ in errors] == [("serviceEndpoint", "pattern")]
    assert "/catalog$" in errors[0][2]


@NEEDS_DSP
def test_schemas_refuse_what_they_should() -> None:
    """The validator is not vacuous: a wrong state or a context without DSP's is an error."""
    process = _example("contract-negotiation.json")
    assert dsp_conformance.check_typed({**process, "state": "STARTED"})
    assert dsp_conformance.check_typed({**process, "@context": ["https://example.com/ctx"]})
    assert dsp_conformance.check_typed({k: v for k, v in process.items() if k != "consumerPid"})


# --- 2. Incoming models -----------------------------------------------------------------------------


@NEEDS_DSP
def test_every_official_message_example_has_an_incoming_model() -> None:
    kinds = {_kind(_load(p)) for p in dsp_conformance.examples()}
    assert kinds - UNPARSED == set(MODELS)


@NEEDS_DSP
@pytest.mark.parametrize(
    "path",
    [p for p in dsp_conformance.examples() if _kind(_load(p)) in MODELS],
    ids=lambda p: p.name,
)
def test_incoming_model_accepts_the_official_example(path: Path) -> None:
    example = _load(path)
    parsed = m.parse(MODELS[_kind(example)], example)
    dumped = parsed.model_dump(by_alias=True, exclude_none=True)
    for field in ("@type", "providerPid", "consumerPid", "agreementId", "dataset", "eventType", "code"):
        assert dumped.get(field) == example.get(field)


def _transfer_request() -> dict[str, Any]:
    return _example("transfer-request-message.json")


def _contract_request() -> dict[str, Any]:
    return _example("contract-request-message_initial.json")


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


REFUSALS: list[tuple[str, type[BaseModel], Callable[[], Any], str]] = [
    ("no @context", m.TransferRequestMessage, lambda: _without(_transfer_request(), "@context"), "@context"),
    (
        "foreign @context",
        m.TransferRequestMessage,
        lambda: {**_transfer_request(), "@context": [f"https://example.com/{SECRET}"]},
        "@context",
    ),
    ("wrong @type", m.TransferRequestMessage, lambda: {**_transfer_request(), "@type": SECRET}, "@type"),
    (
        "another message's @type",
        m.TransferStartMessage,
        lambda: _example("transfer-completion-message.json"),
        "@type",
    ),
    (
        "no consumerPid",
        m.ContractRequestMessage,
        lambda: _without(_contract_request(), "consumerPid"),
        "consumerPid",
    ),
    ("no offer", m.ContractRequestMessage, lambda: _without(_contract_request(), "offer"), "offer"),
    (
        "no agreementId",
        m.TransferRequestMessage,
        lambda: _without(_transfer_request(), "agreementId"),
        "agreementId",
    ),
    (
        "no callbackAddress",
        m.TransferRequestMessage,
        lambda: _without(_transfer_request(), "callbackAddress"),
        "callbackAddress",
    ),
    (
        "no agreement",
        m.ContractAgreementMessage,
        lambda: _without(_example("contract-agreement-message.json"), "agreement"),
        "agreement",
    ),
    (
        "number as consumerPid",
        m.TransferRequestMessage,
        lambda: {**_transfer_request(), "consumerPid": 73919739},
        "consumerPid",
    ),
    (
        "number as a permission's action",
        m.ContractRequestMessage,
        lambda: {
            **_contract_request(),
            "offer": {**_contract_request()["offer"], "permission": [{"action": 73919739}]},
        },
        "offer.permission.0.action",
    ),
    (
        "offer as a string",
        m.ContractRequestMessage,
        lambda: {**_contract_request(), "offer": SECRET},
        "offer",
    ),
    (
        "an unknown event type",
        m.ContractNegotiationEventMessage,
        lambda: {**_example("contract-negotiation-event-message.json"), "eventType": SECRET},
        "eventType",
    ),
    (
        "an overlong pid",
        m.TransferRequestMessage,
        lambda: {**_transfer_request(), "consumerPid": SECRET * 40},
        "consumerPid",
    ),
    (
        "too many reasons",
        m.TransferTerminationMessage,
        lambda: {**_example("transfer-termination-message.json"), "reason": [SECRET] * 21},
        "reason",
    ),
    (
        "too many filters",
        m.CatalogRequestMessage,
        lambda: {**_example("catalog-request-message.json"), "filter": [SECRET] * 21},
        "filter",
    ),
    (
        "too many endpoint properties",
        m.TransferStartMessage,
        lambda: {
            **_example("transfer-start-message.json"),
            "dataAddress": {
                "@type": "DataAddress",
                "endpointType": m.HTTP_ENDPOINT_TYPE,
                "endpointProperties": [{"@type": "EndpointProperty", "name": "n", "value": SECRET}] * 21,
            },
        },
        "dataAddress.endpointProperties",
    ),
]


@pytest.mark.parametrize(("model", "body", "field"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_incoming_model_refuses_naming_the_field_without_echoing_the_value(
    model: type[BaseModel], body: Callable[[], Any], field: str
) -> None:
    with pytest.raises(m.MessageError) as caught:
        m.parse(model, body())
    problems = caught.value.problems
    assert any(problem.startswith(f"{field}:") for problem in problems), problems
    text = "; ".join(problems) + str(caught.value)
    assert SECRET not in text
    assert "73919739" not in text


@pytest.mark.parametrize("body", [[SECRET], SECRET, 73919739, None], ids=["list", "string", "number", "null"])
def test_a_body_that_is_not_an_object_is_refused(body: Any) -> None:
    with pytest.raises(m.MessageError) as caught:
        m.parse(m.TransferRequestMessage, body)
    assert caught.value.problems == ["the message must be a JSON object"]


def test_problems_are_capped_at_twenty() -> None:
    body = {**_contract_request(), "consumerPid": 1, "offer": {**_contract_request()["offer"]}}
    body["offer"]["permission"] = [{"action": 73919739}] * 20
    with pytest.raises(m.MessageError) as caught:
        m.parse(m.ContractRequestMessage, body)
    assert len(caught.value.problems) == 20
    assert caught.value.problems[0].startswith("consumerPid:")


# --- 3. Builders ------------------------------------------------------------------------------------

ADDRESS = m.data_address(
    "https://hospital.example/dsp/pull/abc", {"authorization": "Bearer t", "authType": "bearer"}
)


def _built() -> list[tuple[str, dict[str, Any]]]:
    offer = narrowed(_ours(), "research", TARGET)
    return [
        ("negotiation", m.negotiation(PROVIDER_PID, CONSUMER_PID, "REQUESTED")),
        ("transfer_process", m.transfer_process(PROVIDER_PID, CONSUMER_PID, "STARTED")),
        ("contract_request initial", m.contract_request(CONSUMER_PID, offer, "https://lab.example/dsp/cb")),
        ("contract_request counter", m.contract_request(CONSUMER_PID, offer, None, PROVIDER_PID)),
        ("contract_offer", m.contract_offer(PROVIDER_PID, CONSUMER_PID, offer)),
        ("contract_agreement", m.contract_agreement(PROVIDER_PID, CONSUMER_PID, _agreement())),
        ("agreement_verification", m.agreement_verification(PROVIDER_PID, CONSUMER_PID)),
        ("negotiation_event accepted", m.negotiation_event(PROVIDER_PID, CONSUMER_PID, "ACCEPTED")),
        ("negotiation_event finalized", m.negotiation_event(PROVIDER_PID, CONSUMER_PID, "FINALIZED")),
        (
            "negotiation_termination",
            m.negotiation_termination(PROVIDER_PID, CONSUMER_PID, "policy", ["purpose not offered"]),
        ),
        ("negotiation_error", m.negotiation_error(PROVIDER_PID, CONSUMER_PID, "400", ["bad offer"])),
        ("catalog_error", m.catalog_error("401", ["not a member"])),
        ("transfer_error", m.transfer_error(PROVIDER_PID, CONSUMER_PID, "409", ["not allowed now"])),
        (
            "transfer_request",
            m.transfer_request(
                CONSUMER_PID, "urn:uuid:agreement-1", m.COMPUTE_TO_DATA, "https://lab.example/cb"
            ),
        ),
        ("transfer_start with address", m.transfer_start(PROVIDER_PID, CONSUMER_PID, ADDRESS)),
        ("transfer_start without address", m.transfer_start(PROVIDER_PID, CONSUMER_PID)),
        ("transfer_completion", m.transfer_completion(PROVIDER_PID, CONSUMER_PID)),
        ("transfer_suspension", m.transfer_suspension(PROVIDER_PID, CONSUMER_PID, "paused", ["maintenance"])),
        ("transfer_termination", m.transfer_termination(PROVIDER_PID, CONSUMER_PID, "ended", ["revoked"])),
        ("catalog_request", m.catalog_request()),
        ("dataset_request", m.dataset_request(TARGET)),
        ("version_document", m.version_document("/dsp")),
    ]


BUILT = _built()


@NEEDS_DSP
@pytest.mark.parametrize("message", [b[1] for b in BUILT], ids=[b[0] for b in BUILT])
def test_built_message_validates_against_its_official_schema(message: dict[str, Any]) -> None:
    assert dsp_conformance.check_typed(json.loads(json.dumps(message))) == []


@pytest.mark.parametrize(
    "message", [b[1] for b in BUILT if b[0] != "version_document"], ids=[b[0] for b in BUILT[:-1]]
)
def test_built_message_parses_back_with_our_own_model(message: dict[str, Any]) -> None:
    wire = json.loads(json.dumps(message))
    parsed = m.parse(MODELS[wire["@type"]], wire)
    assert parsed.model_dump(by_alias=True, exclude_unset=True) == wire


def test_builders_cover_every_message_type_of_the_protocol() -> None:
    built = {_kind(b[1]) for b in BUILT}
    assert built == set(dsp_conformance.SCHEMAS) - {"Catalog", "Dataset"}


def test_builders_leave_out_absent_optional_fields() -> None:
    initial = m.contract_request(CONSUMER_PID, _ours(), "https://lab.example/cb")
    assert "providerPid" not in initial
    assert "dataAddress" not in m.transfer_start(PROVIDER_PID, CONSUMER_PID)
    assert m.transfer_start(PROVIDER_PID, CONSUMER_PID, ADDRESS)["dataAddress"]["endpointProperties"][0] == {
        "@type": "EndpointProperty",
        "name": "authorization",
        "value": "Bearer t",
    }
    parsed = m.parse(m.TransferStartMessage, m.transfer_start(PROVIDER_PID, CONSUMER_PID, ADDRESS))
    assert parsed.dataAddress is not None
    assert parsed.dataAddress.property("authType") == "bearer"
    assert parsed.dataAddress.property("missing") is None


def test_version_document_offers_2025_1_at_the_given_path() -> None:
    (version,) = m.version_document("/dsp")["protocolVersions"]
    assert (version["version"], version["path"], version["binding"]) == ("2025-1", "/dsp", "HTTPS")


# --- 4. State machines ------------------------------------------------------------------------------

SENDERS: tuple[Role, Role] = ("provider", "consumer")
NEGOTIATION_STATES = (
    "INITIAL",
    "REQUESTED",
    "OFFERED",
    "ACCEPTED",
    "AGREED",
    "VERIFIED",
    "FINALIZED",
    "TERMINATED",
)
NEGOTIATION_MESSAGES = (
    "ContractRequestMessage",
    "ContractOfferMessage",
    "ACCEPTED",
    "ContractAgreementMessage",
    "ContractAgreementVerificationMessage",
    "FINALIZED",
    "ContractNegotiationTerminationMessage",
)
# DSP 2025-1, contract negotiation state machine: (state, message, sender) -> next state.
SPEC_NEGOTIATION: dict[tuple[str, str, Role], str] = {
    ("INITIAL", "ContractRequestMessage", "consumer"): "REQUESTED",
    ("OFFERED", "ContractRequestMessage", "consumer"): "REQUESTED",  # counter-request
    ("INITIAL", "ContractOfferMessage", "provider"): "OFFERED",
    ("REQUESTED", "ContractOfferMessage", "provider"): "OFFERED",  # counter-offer
    ("OFFERED", "ACCEPTED", "consumer"): "ACCEPTED",
    ("REQUESTED", "ContractAgreementMessage", "provider"): "AGREED",
    ("ACCEPTED", "ContractAgreementMessage", "provider"): "AGREED",
    ("AGREED", "ContractAgreementVerificationMessage", "consumer"): "VERIFIED",
    ("VERIFIED", "FINALIZED", "provider"): "FINALIZED",
    **{
        (state, "ContractNegotiationTerminationMessage", sender): "TERMINATED"
        for state in ("REQUESTED", "OFFERED", "ACCEPTED", "AGREED", "VERIFIED")
        for sender in SENDERS
    },
}
TRANSFER_STATES = ("INITIAL", "REQUESTED", "STARTED", "SUSPENDED", "COMPLETED", "TERMINATED")
TRANSFER_MESSAGES = (
    "TransferRequestMessage",
    "TransferStartMessage",
    "TransferSuspensionMessage",
    "TransferCompletionMessage",
    "TransferTerminationMessage",
)
# DSP 2025-1, transfer process state machine, with the module's documented choice for a
# consumer's start (a request to resume: the state stays SUSPENDED until the provider starts).
SPEC_TRANSFER: dict[tuple[str, str, Role], str] = {
    ("INITIAL", "TransferRequestMessage", "consumer"): "REQUESTED",
    ("REQUESTED", "TransferStartMessage", "provider"): "STARTED",
    ("SUSPENDED", "TransferStartMessage", "provider"): "STARTED",
    ("SUSPENDED", "TransferStartMessage", "consumer"): "SUSPENDED",
    **{
        (state, msg, sender): nxt
        for state, msg, nxt in (
            ("STARTED", "TransferSuspensionMessage", "SUSPENDED"),
            ("STARTED", "TransferCompletionMessage", "COMPLETED"),
            ("REQUESTED", "TransferTerminationMessage", "TERMINATED"),
            ("STARTED", "TransferTerminationMessage", "TERMINATED"),
            ("SUSPENDED", "TransferTerminationMessage", "TERMINATED"),
        )
        for sender in SENDERS
    },
}


def _outcome(move: Callable[[str, str, Role], str], state: str, message: str, sender: Role) -> str:
    try:
        return move(state, message, sender)
    except IllegalTransition as exc:
        assert exc.state == state
        return "IllegalTransition"


def _table_mismatches(
    move: Callable[[str, str, Role], str],
    states: tuple[str, ...],
    messages: tuple[str, ...],
    expected: dict[tuple[str, str, Role], str],
) -> list[str]:
    mismatches = []
    for state in states:
        for message in messages:
            for sender in SENDERS:
                want = expected.get((state, message, sender), "IllegalTransition")
                got = _outcome(move, state, message, sender)
                if got != want:
                    mismatches.append(f"{state} --{message} from {sender}--> {got}, expected {want}")
    return mismatches


def test_negotiation_state_machine_matches_the_specification() -> None:
    expected = SPEC_NEGOTIATION
    assert _table_mismatches(next_negotiation_state, NEGOTIATION_STATES, NEGOTIATION_MESSAGES, expected) == []


def test_transfer_state_machine_matches_the_specification() -> None:
    expected = SPEC_TRANSFER
    assert _table_mismatches(next_transfer_state, TRANSFER_STATES, TRANSFER_MESSAGES, expected) == []


def test_the_tables_are_not_vacuous() -> None:
    """Each table names real moves for both senders and every state appears as a source."""
    for spec, states in ((SPEC_NEGOTIATION, NEGOTIATION_STATES), (SPEC_TRANSFER, TRANSFER_STATES)):
        assert {s for s, _, _ in spec} == set(states) - {"FINALIZED", "COMPLETED", "TERMINATED"}
        assert {sender for _, _, sender in spec} == set(SENDERS)


@pytest.mark.parametrize("sender", SENDERS)
def test_termination_from_every_non_final_state_and_never_from_a_final_one(sender: Role) -> None:
    for state in ("REQUESTED", "OFFERED", "ACCEPTED", "AGREED", "VERIFIED"):
        assert next_negotiation_state(state, "ContractNegotiationTerminationMessage", sender) == "TERMINATED"
    for state in ("FINALIZED", "TERMINATED"):
        with pytest.raises(IllegalTransition):
            next_negotiation_state(state, "ContractNegotiationTerminationMessage", sender)
    for state in ("REQUESTED", "STARTED", "SUSPENDED"):
        assert next_transfer_state(state, "TransferTerminationMessage", sender) == "TERMINATED"
    for state in ("COMPLETED", "TERMINATED"):
        with pytest.raises(IllegalTransition):
            next_transfer_state(state, "TransferTerminationMessage", sender)


def test_a_full_happy_negotiation_and_transfer_walk_through() -> None:
    state = "INITIAL"
    for message, sender in (
        ("ContractRequestMessage", "consumer"),
        ("ContractOfferMessage", "provider"),
        ("ContractRequestMessage", "consumer"),
        ("ContractOfferMessage", "provider"),
        ("ACCEPTED", "consumer"),
        ("ContractAgreementMessage", "provider"),
        ("ContractAgreementVerificationMessage", "consumer"),
        ("FINALIZED", "provider"),
    ):
        state = next_negotiation_state(state, message, sender)  # type: ignore[arg-type]
    assert state == "FINALIZED"
    state = "INITIAL"
    for message, sender in (
        ("TransferRequestMessage", "consumer"),
        ("TransferStartMessage", "provider"),
        ("TransferSuspensionMessage", "consumer"),
        ("TransferStartMessage", "consumer"),
        ("TransferStartMessage", "provider"),
        ("TransferCompletionMessage", "consumer"),
    ):
        state = next_transfer_state(state, message, sender)  # type: ignore[arg-type]
    assert state == "COMPLETED"


# --- 5. requested_purpose ---------------------------------------------------------------------------


def _policy(body: dict[str, Any]) -> m.Policy:
    return m.Policy.model_validate(body)


def test_our_offer_unchanged_is_accepted_with_no_narrowing() -> None:
    assert requested_purpose(_ours(), _policy(_ours()), TARGET) is None
    assert requested_purpose(_ours(), _policy({**_ours(), "target": TARGET}), TARGET) is None


@pytest.mark.parametrize("purpose", ["research", "education"])
def test_our_offer_narrowed_to_one_offered_purpose_returns_it(purpose: str) -> None:
    assert requested_purpose(_ours(), _policy(narrowed(_ours(), purpose, TARGET)), TARGET) == purpose


def _constraint(offer: dict[str, Any], left: str) -> dict[str, Any]:
    return next(c for c in offer["permission"][0]["constraint"] if c["leftOperand"] == left)


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        offer = copy.deepcopy(narrowed(_ours(), "research", TARGET))
        change(offer)
        return offer

    return build


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(offer: dict[str, Any]) -> None:
        offer[key] = value

    return change


MISMATCHES: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
    ("another offer id", "not a current offer", _edit(_set("@id", OFFER_ID + "x"))),
    ("another target", "target", _edit(_set("target", TARGET + "-other"))),
    (
        "spatial widened",
        "spatial constraint differs",
        _edit(lambda o: _constraint(o, "spatial").update(rightOperand=["BE", "NL", "US"])),
    ),
    (
        "spatial operator changed",
        "spatial constraint differs",
        _edit(lambda o: _constraint(o, "spatial").update(operator="eq")),
    ),
    (
        "absoluteSize lowered",
        "absoluteSize constraint differs",
        _edit(lambda o: _constraint(o, "absoluteSize").update(rightOperand="2")),
    ),
    (
        "a constraint added",
        "must keep the constraints",
        _edit(
            lambda o: o["permission"][0]["constraint"].append(
                {"leftOperand": "dateTime", "operator": "lteq", "rightOperand": "2099-01-01T00:00:00Z"}
            )
        ),
    ),
    (
        "a constraint removed",
        "must keep the constraints",
        _edit(lambda o: o["permission"][0]["constraint"].remove(_constraint(o, "absoluteSize"))),
    ),
    (
        "a constraint repeated",
        "once",
        _edit(lambda o: o["permission"][0]["constraint"].append(dict(_constraint(o, "spatial")))),
    ),
    ("a prohibition added", "exactly one permission", _edit(_set("prohibition", [{"action": "distribute"}]))),
    ("an obligation added", "exactly one permission", _edit(_set("obligation", [{"action": "delete"}]))),
    (
        "a purpose not offered",
        "purpose may only be narrowed",
        _edit(lambda o: _constraint(o, "purpose").update(rightOperand="marketing")),
    ),
    (
        "purpose narrowed with neq",
        "purpose may only be narrowed",
        _edit(lambda o: _constraint(o, "purpose").update(operator="neq")),
    ),
    (
        "purpose narrowed with isAnyOf one",
        "purpose may only be narrowed",
        _edit(lambda o: _constraint(o, "purpose").update(operator="isAnyOf", rightOperand=["research"])),
    ),
    (
        "two permissions",
        "exactly one permission",
        _edit(lambda o: o["permission"].append(copy.deepcopy(o["permission"][0]))),
    ),
    ("no permission", "exactly one permission", _edit(_set("permission", []))),
    (
        "action other than use",
        "action must be use",
        _edit(lambda o: o["permission"][0].update(action="distribute")),
    ),
]


@pytest.mark.parametrize(("why", "requested"), [c[1:] for c in MISMATCHES], ids=[c[0] for c in MISMATCHES])
def test_requested_offer_that_is_not_ours_is_refused(
    why: str, requested: Callable[[], dict[str, Any]]
) -> None:
    with pytest.raises(OfferMismatch, match=why):
        requested_purpose(_ours(), _policy(requested()), TARGET)


# --- 6. agreement_document --------------------------------------------------------------------------


@NEEDS_DSP
def test_agreement_document_validates_inside_a_contract_agreement_message() -> None:
    agreement = _agreement()
    message = m.contract_agreement(PROVIDER_PID, CONSUMER_PID, agreement)
    assert dsp_conformance.check("ContractAgreementMessage", message) == []
    parsed = m.parse(m.ContractAgreementMessage, message)
    assert (parsed.agreement.type, parsed.agreement.target) == ("Agreement", TARGET)
    assert (parsed.agreement.assigner, parsed.agreement.assignee) == (
        "did:web:hospital.example",
        "did:web:lab.example",
    )
    datetime.strptime(agreement["timestamp"], "%Y-%m-%dT%H:%M:%SZ")


def test_agreement_document_narrows_the_offer_and_bounds_it_in_time() -> None:
    until = datetime(2030, 6, 1, 12, 30, tzinfo=UTC).timestamp()
    (permission,) = _agreement(until)["permission"]
    assert permission["action"] == "use"
    assert permission["constraint"] == [
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"},
        {"leftOperand": "spatial", "operator": "eq", "rightOperand": "BE"},
        {"leftOperand": "absoluteSize", "operator": "gteq", "rightOperand": "10"},
        {"leftOperand": "dateTime", "operator": "lteq", "rightOperand": "2030-06-01T12:30:00Z"},
    ]


def test_agreement_document_does_not_alter_the_offer() -> None:
    ours = _ours()
    before = copy.deepcopy(ours)
    agreement_document(
        "urn:uuid:a",
        ours,
        purpose="education",
        target=TARGET,
        provider="p",
        consumer="c",
        country="NL",
        valid_until=0,
    )
    assert ours == before
