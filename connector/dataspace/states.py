"""The DSP state machines: which message may move a contract negotiation or a transfer process
from which state, and who (provider or consumer) may send it.

It decides legality only; it never stores anything. An illegal move raises IllegalTransition,
which the protocol layer answers with a DSP error while the stored state stays as it was.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["provider", "consumer"]

NEGOTIATION_FINAL = frozenset({"FINALIZED", "TERMINATED"})
TRANSFER_FINAL = frozenset({"COMPLETED", "TERMINATED"})


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
_NEGOTIATION: dict[tuple[str, Role], tuple[frozenset[str], str]] = {
    ("ContractRequestMessage", "consumer"): (frozenset({"INITIAL", "OFFERED"}), "REQUESTED"),
    ("ContractOfferMessage", "provider"): (frozenset({"INITIAL", "REQUESTED"}), "OFFERED"),
    ("ACCEPTED", "consumer"): (frozenset({"OFFERED"}), "ACCEPTED"),
    ("ContractAgreementMessage", "provider"): (frozenset({"REQUESTED", "ACCEPTED"}), "AGREED"),
    ("ContractAgreementVerificationMessage", "consumer"): (frozenset({"AGREED"}), "VERIFIED"),
    ("FINALIZED", "provider"): (frozenset({"VERIFIED"}), "FINALIZED"),
}

_TRANSFER: dict[tuple[str, Role], tuple[frozenset[str], str]] = {
    ("TransferRequestMessage", "consumer"): (frozenset({"INITIAL"}), "REQUESTED"),
    ("TransferStartMessage", "provider"): (frozenset({"REQUESTED", "SUSPENDED"}), "STARTED"),
    # The consumer may ask to resume a transfer that it (not the provider) suspended; the
    # provider answers with its own start message.
    ("TransferStartMessage", "consumer"): (frozenset({"SUSPENDED"}), "SUSPENDED"),
    ("TransferSuspensionMessage", "provider"): (frozenset({"STARTED"}), "SUSPENDED"),
    ("TransferSuspensionMessage", "consumer"): (frozenset({"STARTED"}), "SUSPENDED"),
    ("TransferCompletionMessage", "provider"): (frozenset({"STARTED"}), "COMPLETED"),
    ("TransferCompletionMessage", "consumer"): (frozenset({"STARTED"}), "COMPLETED"),
}


def next_negotiation_state(state: str, message: str, sender: Role) -> str:
    """The state after `message` from `sender`; termination is allowed from every non-final state."""
    if message == "ContractNegotiationTerminationMessage":
        if state in NEGOTIATION_FINAL or state == "INITIAL":
            raise IllegalTransition("contract negotiation", state, message)
        return "TERMINATED"
    rule = _NEGOTIATION.get((message, sender))
    if rule is None or state not in rule[0]:
        raise IllegalTransition("contract negotiation", state, f"{message} from the {sender}")
    return rule[1]


def next_transfer_state(state: str, message: str, sender: Role) -> str:
    if message == "TransferTerminationMessage":
        if state in TRANSFER_FINAL or state == "INITIAL":
            raise IllegalTransition("transfer process", state, message)
        return "TERMINATED"
    rule = _TRANSFER.get((message, sender))
    if rule is None or state not in rule[0]:
        raise IllegalTransition("transfer process", state, f"{message} from the {sender}")
    return rule[1]
