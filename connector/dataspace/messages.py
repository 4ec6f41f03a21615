"""Dataspace Protocol 2025-1 messages: the models incoming messages are validated with, and the
builders of every message this connector sends (compact JSON-LD with the DSP context).

Incoming messages are checked for their `@context`, their `@type` and the fields the protocol
requires, with their types; extension properties (JSON-LD allows them) are kept but never
trusted. This module never performs I/O and never decides anything: it only shapes messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DSP_VERSION = "2025-1"
DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
CONTEXT: list[str] = [DSP_CONTEXT]

# Transfer formats this connector offers (dct:format of its distributions).
COMPUTE_TO_DATA = "ComputeToData"
ENCRYPTED_PULL = "EncryptedDataset-PULL"
FORMATS = (COMPUTE_TO_DATA, ENCRYPTED_PULL)
HTTP_ENDPOINT_TYPE = "https://w3id.org/idsa/v4.1/HTTP"

NegotiationState = Literal[
    "REQUESTED", "OFFERED", "ACCEPTED", "AGREED", "VERIFIED", "FINALIZED", "TERMINATED"
]
TransferState = Literal["REQUESTED", "STARTED", "SUSPENDED", "COMPLETED", "TERMINATED"]

Pid = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(min_length=1, max_length=2048)]
_MAX_REASONS = 20
M = TypeVar("M", bound=BaseModel)


class MessageError(ValueError):
    """An incoming message is not a valid DSP message; `problems` names each fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Message(BaseModel):
    # Extension properties are allowed by JSON-LD and kept, but no code here reads them.
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    context: list[str] = Field(alias="@context", min_length=1, max_length=10)

    @field_validator("context")
    @classmethod
    def _dsp_context(cls, value: list[str]) -> list[str]:
        if DSP_CONTEXT not in value:
            raise ValueError(f"@context must contain {DSP_CONTEXT}")
        return value


class Constraint(BaseModel):
    model_config = ConfigDict(extra="allow")

    leftOperand: Text | None = None  # the protocol's camelCase names, kept as they are
    operator: Text | None = None
    rightOperand: str | list[Any] | dict[str, Any] | None = None


class Rule(BaseModel):
    model_config = ConfigDict(extra="allow")

    action: Text
    constraint: list[Constraint] = Field(default_factory=list, max_length=50)


class Policy(BaseModel):
    """An ODRL offer or agreement as DSP carries it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: Pid = Field(alias="@id")
    type: Literal["Offer", "Agreement"] = Field(alias="@type")
    target: Pid | None = None
    assigner: Pid | None = None
    assignee: Pid | None = None
    timestamp: str | None = None
    permission: list[Rule] = Field(default_factory=list, max_length=20)
    prohibition: list[Rule] = Field(default_factory=list, max_length=20)
    obligation: list[Rule] = Field(default_factory=list, max_length=20)


class CatalogRequestMessage(_Message):
    type: Literal["CatalogRequestMessage"] = Field(alias="@type")
    filter: list[Any] = Field(default_factory=list, max_length=20)


class DatasetRequestMessage(_Message):
    type: Literal["DatasetRequestMessage"] = Field(alias="@type")
    dataset: Pid


class ContractRequestMessage(_Message):
    type: Literal["ContractRequestMessage"] = Field(alias="@type")
    providerPid: Pid | None = None
    consumerPid: Pid
    offer: Policy
    callbackAddress: Text | None = None


class ContractOfferMessage(_Message):
    type: Literal["ContractOfferMessage"] = Field(alias="@type")
    providerPid: Pid
    consumerPid: Pid | None = None
    offer: Policy
    callbackAddress: Text | None = None


class ContractAgreementMessage(_Message):
    type: Literal["ContractAgreementMessage"] = Field(alias="@type")
    providerPid: Pid
    consumerPid: Pid
    agreement: Policy


class ContractAgreementVerificationMessage(_Message):
    type: Literal["ContractAgreementVerificationMessage"] = Field(alias="@type")
    providerPid: Pid
    consumerPid: Pid


class ContractNegotiationEventMessage(_Message):
    type: Literal["ContractNegotiationEventMessage"] = Field(alias="@type")
    providerPid: Pid
    consumerPid: Pid
    eventType: Literal["ACCEPTED", "FINALIZED"]


class _CodeMessage(_Message):
    providerPid: Pid
    consumerPid: Pid
    code: Annotated[str, Field(max_length=64)] | None = None
    reason: list[Any] = Field(default_factory=list, max_length=_MAX_REASONS)


class ContractNegotiationTerminationMessage(_CodeMessage):
    type: Literal["ContractNegotiationTerminationMessage"] = Field(alias="@type")


class DataAddressProperty(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["EndpointProperty"] = Field(alias="@type")
    name: Text
    value: Annotated[str, Field(max_length=16_384)]


class DataAddress(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["DataAddress"] = Field(alias="@type")
    endpointType: Text
    endpoint: Text | None = None
    endpointProperties: list[DataAddressProperty] = Field(default_factory=list, max_length=20)

    def property(self, name: str) -> str | None:
        return next((item.value for item in self.endpointProperties if item.name == name), None)


class TransferRequestMessage(_Message):
    type: Literal["TransferRequestMessage"] = Field(alias="@type")
    consumerPid: Pid
    agreementId: Pid
    format: Text
    dataAddress: DataAddress | None = None
    callbackAddress: Text


class TransferStartMessage(_Message):
    type: Literal["TransferStartMessage"] = Field(alias="@type")
    providerPid: Pid
    consumerPid: Pid
    dataAddress: DataAddress | None = None


class TransferCompletionMessage(_Message):
    type: Literal["TransferCompletionMessage"] = Field(alias="@type")
    providerPid: Pid
    consumerPid: Pid


class TransferSuspensionMessage(_CodeMessage):
    type: Literal["TransferSuspensionMessage"] = Field(alias="@type")


class TransferTerminationMessage(_CodeMessage):
    type: Literal["TransferTerminationMessage"] = Field(alias="@type")


class ProcessMessage(_Message):
    """A ContractNegotiation or TransferProcess, as a peer answers with one."""

    type: Literal["ContractNegotiation", "TransferProcess"] = Field(alias="@type")
    providerPid: Pid
    consumerPid: Pid
    state: Text


class ErrorMessage(BaseModel):
    """A peer's CatalogError, ContractNegotiationError or TransferError (read leniently: it explains)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: str = Field(alias="@type", default="")
    code: str | None = None
    reason: list[Any] = Field(default_factory=list)


def parse(model: type[M], body: Any) -> M:
    """`body` as a `model`, or MessageError naming every problem (never echoing values)."""
    if not isinstance(body, dict):
        raise MessageError(["the message must be a JSON object"])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "the message"
            problems.append(f"{where}: {error['msg']}")
        raise MessageError(problems[:20]) from None


# --- Builders of outgoing messages ----------------------------------------------------------------


def _message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"@context": CONTEXT, "@type": kind, **{k: v for k, v in fields.items() if v is not None}}


def negotiation(provider_pid: str, consumer_pid: str, state: str) -> dict[str, Any]:
    return _message("ContractNegotiation", providerPid=provider_pid, consumerPid=consumer_pid, state=state)


def transfer_process(provider_pid: str, consumer_pid: str, state: str) -> dict[str, Any]:
    return _message("TransferProcess", providerPid=provider_pid, consumerPid=consumer_pid, state=state)


def contract_request(
    consumer_pid: str, offer: dict[str, Any], callback: str | None, provider_pid: str | None = None
) -> dict[str, Any]:
    return _message(
        "ContractRequestMessage",
        providerPid=provider_pid,
        consumerPid=consumer_pid,
        offer=offer,
        # The schema wants exactly one of the two: a counter-request goes to a known process.
        callbackAddress=callback if provider_pid is None else None,
    )


def contract_offer(provider_pid: str, consumer_pid: str, offer: dict[str, Any]) -> dict[str, Any]:
    return _message("ContractOfferMessage", providerPid=provider_pid, consumerPid=consumer_pid, offer=offer)


def contract_agreement(provider_pid: str, consumer_pid: str, agreement: dict[str, Any]) -> dict[str, Any]:
    return _message(
        "ContractAgreementMessage", providerPid=provider_pid, consumerPid=consumer_pid, agreement=agreement
    )


def agreement_verification(provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    return _message(
        "ContractAgreementVerificationMessage", providerPid=provider_pid, consumerPid=consumer_pid
    )


def negotiation_event(provider_pid: str, consumer_pid: str, event: str) -> dict[str, Any]:
    return _message(
        "ContractNegotiationEventMessage", providerPid=provider_pid, consumerPid=consumer_pid, eventType=event
    )


def negotiation_termination(
    provider_pid: str, consumer_pid: str, code: str, reasons: list[str]
) -> dict[str, Any]:
    return _message(
        "ContractNegotiationTerminationMessage",
        providerPid=provider_pid,
        consumerPid=consumer_pid,
        code=code,
        reason=reasons,
    )


def negotiation_error(provider_pid: str, consumer_pid: str, code: str, reasons: list[str]) -> dict[str, Any]:
    return _message(
        "ContractNegotiationError",
        providerPid=provider_pid,
        consumerPid=consumer_pid,
        code=code,
        reason=reasons,
    )


def catalog_error(code: str, reasons: list[str]) -> dict[str, Any]:
    return _message("CatalogError", code=code, reason=reasons)


def transfer_error(provider_pid: str, consumer_pid: str, code: str, reasons: list[str]) -> dict[str, Any]:
    return _message(
        "TransferError", providerPid=provider_pid, consumerPid=consumer_pid, code=code, reason=reasons
    )


def error_for_path(path: str, code: str, detail: str, _request_id: str = "") -> dict[str, Any]:
    """The error message for a request refused before its route ran (the API's body size and JSON
    depth limits), typed for the process the `/dsp` path names; no process ids are known yet."""
    if path.startswith("/dsp/negotiations"):
        return negotiation_error("", "", code, [detail])
    if path.startswith("/dsp/transfers"):
        return transfer_error("", "", code, [detail])
    return catalog_error(code, [detail])


def data_address(endpoint: str, properties: dict[str, str]) -> dict[str, Any]:
    return {
        "@type": "DataAddress",
        "endpointType": HTTP_ENDPOINT_TYPE,
        "endpoint": endpoint,
        "endpointProperties": [
            {"@type": "EndpointProperty", "name": name, "value": value} for name, value in properties.items()
        ],
    }


def transfer_request(consumer_pid: str, agreement_id: str, fmt: str, callback: str) -> dict[str, Any]:
    return _message(
        "TransferRequestMessage",
        consumerPid=consumer_pid,
        agreementId=agreement_id,
        format=fmt,
        callbackAddress=callback,
    )


def transfer_start(
    provider_pid: str, consumer_pid: str, address: dict[str, Any] | None = None
) -> dict[str, Any]:
    return _message(
        "TransferStartMessage", providerPid=provider_pid, consumerPid=consumer_pid, dataAddress=address
    )


def transfer_completion(provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    return _message("TransferCompletionMessage", providerPid=provider_pid, consumerPid=consumer_pid)


def transfer_suspension(
    provider_pid: str, consumer_pid: str, code: str, reasons: list[str]
) -> dict[str, Any]:
    return _message(
        "TransferSuspensionMessage",
        providerPid=provider_pid,
        consumerPid=consumer_pid,
        code=code,
        reason=reasons,
    )


def transfer_termination(
    provider_pid: str, consumer_pid: str, code: str, reasons: list[str]
) -> dict[str, Any]:
    return _message(
        "TransferTerminationMessage",
        providerPid=provider_pid,
        consumerPid=consumer_pid,
        code=code,
        reason=reasons,
    )


def catalog_request() -> dict[str, Any]:
    return _message("CatalogRequestMessage", filter=[])


def dataset_request(dataset: str) -> dict[str, Any]:
    return _message("DatasetRequestMessage", dataset=dataset)


def version_document(path: str) -> dict[str, Any]:
    return {
        "protocolVersions": [
            {
                "version": DSP_VERSION,
                "path": path,
                "binding": "HTTPS",
                "auth": {"protocol": "connector-jwt", "version": "1", "profile": ["EdDSA"]},
            }
        ]
    }
