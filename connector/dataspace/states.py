"""The DSP state machines: which message may move a contract negotiation or a transfer process
from which state, and who (provider or consumer) may send it.

It decides legality only; it never stores anything. An illegal move raises IllegalTransition,
which the protocol layer answers with a DSP error while the stored state stays as it was.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

Role = Literal["provider", "consumer"]


class NegotiationState(StrEnum):
    """A contract negotiation's state, as stored and as DSP names it (the values never change)."""

    INITIAL = "INITIAL"  # ours only: before the first message (never sent)
    REQUESTED = "REQUESTED"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    AGREED = "AGREED"
    VERIFIED = "VERIFIED"
    FINALIZED = "FINALIZED"
    TERMINATED = "TERMINATED"


class TransferState(StrEnum):
    """A transfer process's state, as stored and as DSP names it (the values never change)."""

    INITIAL = "INITIAL"  # ours only: before the first message (never sent)
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"


_N, _T = NegotiationState, TransferState
NEGOTIATION_FINAL = frozenset({_N.FINALIZED, _N.TERMINATED})
TRANSFER_FINAL = frozenset({_T.COMPLETED, _T.TERMINATED})


class ProcessSides:
    """The two process ids of a DSP process, whichever side we are (mixed into the views)."""

    pid: str  # ours
    role: str  # provider | consumer
    peer_pid: str  # theirs

    @property
    def provider_pid(self) -> str:
        return self.pid if self.role == "provider" else self.peer_pid

    @property
    def consumer_pid(self) -> str:
        return self.pid if self.role == "consumer" else self.peer_pid


class IllegalTransition(Exception):
    """A message arrived that the process's state does not allow; the state is unchanged."""

    def __init__(self, process: str, state: str, message: str) -> None:
        super().__init__(f"{message} is not allowed while the {process} is {state}")
        self.state = state


# (message, sender) -> (states it may arrive in, state it leads to)
_NEGOTIATION: dict[tuple[str, Role], tuple[frozenset[NegotiationState], NegotiationState]] = {
    ("ContractRequestMessage", "consumer"): (frozenset({_N.INITIAL, _N.OFFERED}), _N.REQUESTED),
    ("ContractOfferMessage", "provider"): (frozenset({_N.INITIAL, _N.REQUESTED}), _N.OFFERED),
    ("ACCEPTED", "consumer"): (frozenset({_N.OFFERED}), _N.ACCEPTED),
    ("ContractAgreementMessage", "provider"): (frozenset({_N.REQUESTED, _N.ACCEPTED}), _N.AGREED),
    ("ContractAgreementVerificationMessage", "consumer"): (frozenset({_N.AGREED}), _N.VERIFIED),
    ("FINALIZED", "provider"): (frozenset({_N.VERIFIED}), _N.FINALIZED),
}

_TRANSFER: dict[tuple[str, Role], tuple[frozenset[TransferState], TransferState]] = {
    ("TransferRequestMessage", "consumer"): (frozenset({_T.INITIAL}), _T.REQUESTED),
    ("TransferStartMessage", "provider"): (frozenset({_T.REQUESTED, _T.SUSPENDED}), _T.STARTED),
    # The consumer may ask to resume a transfer that it (not the provider) suspended; the
    # provider answers with its own start message.
    ("TransferStartMessage", "consumer"): (frozenset({_T.SUSPENDED}), _T.SUSPENDED),
    ("TransferSuspensionMessage", "provider"): (frozenset({_T.STARTED}), _T.SUSPENDED),
    ("TransferSuspensionMessage", "consumer"): (frozenset({_T.STARTED}), _T.SUSPENDED),
    ("TransferCompletionMessage", "provider"): (frozenset({_T.STARTED}), _T.COMPLETED),
    ("TransferCompletionMessage", "consumer"): (frozenset({_T.STARTED}), _T.COMPLETED),
}


def next_negotiation_state(state: str, message: str, sender: Role) -> NegotiationState:
    """The state after `message` from `sender`; termination is allowed from every non-final state."""
    if message == "ContractNegotiationTerminationMessage":
        if state in NEGOTIATION_FINAL or state == _N.INITIAL:
            raise IllegalTransition("contract negotiation", state, message)
        return _N.TERMINATED
    rule = _NEGOTIATION.get((message, sender))
    if rule is None or state not in rule[0]:
        raise IllegalTransition("contract negotiation", state, f"{message} from the {sender}")
    return rule[1]


def next_transfer_state(state: str, message: str, sender: Role) -> TransferState:
    if message == "TransferTerminationMessage":
        if state in TRANSFER_FINAL or state == _T.INITIAL:
            raise IllegalTransition("transfer process", state, message)
        return _T.TERMINATED
    rule = _TRANSFER.get((message, sender))
    if rule is None or state not in rule[0]:
        raise IllegalTransition("transfer process", state, f"{message} from the {sender}")
    return rule[1]
