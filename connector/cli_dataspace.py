"""The Dataspace Protocol from the command line (registered by connector.cli):
`peer identity|catalog|negotiations|transfers`, `negotiate URL --dataset ID --offer ID`, and
`transfer start|status|complete|suspend|terminate`.

These commands act as this connector (its key, its trust list, its database): the connector's
service must be running to receive the peer's callbacks, and the commands wait for the process
to reach a final state. A refusal prints the peer's or the policy's reasons (exit 1); bad input
exits 2. Tokens are printed only where asked for (`transfer start` prints the data address).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from connector.cli import _fail, console, runtime_for, settings

# The dataspace modules (pydantic messages, the database, the job queue) load inside the commands,
# so that `--help` stays fast (tests/test_cli_startup.py).
if TYPE_CHECKING:
    from connector.dataspace.negotiations import DspError
    from connector.dataspace.peer_client import PeerError
    from connector.dataspace.trust import Participant
    from connector.runtime import Runtime

# connector.dataspace.messages.COMPUTE_TO_DATA, spelled out for the option's default so that the
# messages module need not load with the command tree (tests/test_cli_startup.py checks they match).
COMPUTE_TO_DATA = "ComputeToData"

peer_app = typer.Typer(
    help="Peer connectors: this connector's identity, their catalogs, our processes.", no_args_is_help=True
)
transfer_app = typer.Typer(help="Transfer processes under a contract agreement.", no_args_is_help=True)
WaitOption = Annotated[float, typer.Option("--wait", help="Seconds to wait for a final state.")]


def register(app: typer.Typer) -> None:
    app.add_typer(peer_app, name="peer")
    app.add_typer(transfer_app, name="transfer")
    app.command("negotiate")(negotiate)


def _provider(runtime: Runtime, url: str) -> Participant:
    participant = runtime.trust.by_address(url) or runtime.trust.get(url)
    if participant is None:
        raise _fail(f"{url} is not the DSP address (or identifier) of a participant on the trust list")
    return participant


def _peer_failed(exc: PeerError | DspError) -> typer.Exit:
    console.print(f"[red]refused:[/red] {exc.code}")
    for reason in exc.reasons:
        console.print(f"  - {reason}")
    return typer.Exit(1)


@peer_app.command("identity")
def identity() -> None:
    """Print this connector's trust-list entry (identifier, organisation, country, public keys, DSP URL)."""
    from connector.dataspace.identity import own_participant

    with runtime_for(settings()) as runtime:
        print(json.dumps(own_participant(runtime).to_dict(), indent=2))


@peer_app.command("catalog")
def peer_catalog(
    url: Annotated[str, typer.Argument(help="The provider's DSP address (as on the trust list).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the DSP Catalog message as received.")
    ] = False,
) -> None:
    """Request a peer's DSP catalog: its datasets, offers and transfer formats."""
    from connector.dataspace import messages as m
    from connector.dataspace.peer_client import PeerError, call

    with runtime_for(settings()) as runtime:
        provider = _provider(runtime, url)
        try:
            catalog = call(
                runtime, provider.id, "POST", provider.dsp + "/catalog/request", m.catalog_request()
            )
        except PeerError as exc:
            raise _peer_failed(exc) from None
    if as_json:
        print(json.dumps(catalog, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{provider.organisation} ({provider.country}): {provider.id}")
    for column in ("dataset", "title", "offer", "purposes", "formats"):
        table.add_column(column, overflow="fold")
    for dataset in (catalog or {}).get("dataset", []):
        offer = (dataset.get("hasPolicy") or [{}])[0]
        constraints = (offer.get("permission") or [{}])[0].get("constraint", [])
        purposes: Any = next(
            (c.get("rightOperand") for c in constraints if c.get("leftOperand") == "purpose"), []
        )
        table.add_row(
            str(dataset.get("@id")),
            plain_text(dataset.get("dct:title", dataset.get("http://purl.org/dc/terms/title"))),
            str(offer.get("@id")),
            ", ".join(purposes) if isinstance(purposes, list) else str(purposes),
            ", ".join(d.get("format", "") for d in dataset.get("distribution", [])),
        )
    console.table(table)


def _languages() -> list[str]:
    """The reader's languages, best first: the locale's (LC_ALL, LC_MESSAGES, LANG), then English."""
    import os

    wanted = []
    for variable in ("LC_ALL", "LC_MESSAGES", "LANG"):
        code = os.environ.get(variable, "").split(".")[0].split("_")[0].lower()
        if code and code not in ("c", "posix"):
            wanted.append(code)
    return [*dict.fromkeys([*wanted, "en"])]


def plain_texts(value: Any, languages: list[str] | None = None) -> list[str]:
    """A JSON-LD value as plain texts: strings, {"@value", "@language"} objects, {"@id"}s or a list
    of them; every text in the best of `languages` (default: the reader's), else every untagged
    one, else those in the first language given (keywords: all of them in one language)."""
    items = value if isinstance(value, list) else [] if value is None else [value]
    texts: list[tuple[str, str]] = []  # (language, text)
    for item in items:
        if isinstance(item, dict) and "@value" in item:
            texts.append((str(item.get("@language") or "").lower(), str(item["@value"])))
        elif isinstance(item, dict) and "@id" in item:  # a resource (a law, a licence): its IRI
            texts.append(("", str(item["@id"])))
        elif isinstance(item, str | int | float):
            texts.append(("", str(item)))
    if not texts:
        return []
    for wanted in languages if languages is not None else _languages():
        # "en" also picks "en-GB": a regional tag is still the reader's language.
        found = [text for tag, text in texts if tag == wanted or tag.startswith(wanted + "-")]
        if found:
            return found
    untagged = [text for tag, text in texts if not tag]
    return untagged or [text for tag, text in texts if tag == texts[0][0]]


def plain_text(value: Any, languages: list[str] | None = None) -> str:
    """One text of a JSON-LD value (a title), as `plain_texts` chooses; "" when it has none."""
    texts = plain_texts(value, languages)
    return texts[0] if texts else ""


def _permit(value: str) -> str:
    path = Path(value)
    if value.count(".") == 2 and not path.exists():
        return value
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise _fail(f"--permit must be a permit JWT or a file holding one ({exc.strerror})") from None


def _actor(permit: str, actor: str | None) -> str:
    if actor:
        return actor
    import jwt

    try:
        # Only to name whom we act for; the provider verifies the permit itself.
        claims = jwt.decode(permit, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _fail("--permit is not a JWT") from None
    return str(claims.get("sub", ""))


def negotiate(
    url: Annotated[str, typer.Argument(help="The provider's DSP address (as on the trust list).")],
    dataset: Annotated[str, typer.Option("--dataset", help="The dataset's @id from the peer's catalog.")],
    offer: Annotated[str, typer.Option("--offer", help="The offer's @id from the peer's catalog.")],
    permit: Annotated[
        str, typer.Option("--permit", help="The HDAB data permit (JWT, or a file holding it).")
    ],
    purpose: Annotated[
        str | None, typer.Option("--purpose", help="Narrow the offer to this purpose code.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Whom we act for (default: the permit's subject).")
    ] = None,
    wait: WaitOption = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Negotiate a contract for a peer's dataset offer, through to FINALIZED or TERMINATED."""
    from connector.dataspace.negotiations import DspError, get_negotiation, start_negotiation
    from connector.dataspace.peer_client import PeerError, call
    from connector.dataspace.states import NEGOTIATION_FINAL, NegotiationState

    token = _permit(permit)
    with runtime_for(settings()) as runtime:
        provider = _provider(runtime, url)
        try:
            found = call(runtime, provider.id, "GET", provider.dsp + "/catalog/datasets/" + dataset)
        except PeerError as exc:
            raise _peer_failed(exc) from None
        offers = [o for o in (found or {}).get("hasPolicy", []) if o.get("@id") == offer]
        if not offers:
            raise _fail(f"dataset {dataset} has no offer {offer} (run `connector peer catalog {url}`)")
        try:
            view = start_negotiation(
                runtime, provider, dataset, offers[0], _actor(token, actor), token, purpose
            )
        except DspError as exc:
            raise _peer_failed(exc) from None
        deadline = time.monotonic() + wait
        while view.state not in NEGOTIATION_FINAL and time.monotonic() < deadline:
            time.sleep(0.05)
            view = get_negotiation(runtime, view.pid)
    outcome = {
        "negotiation": view.pid,
        "state": view.state,
        "agreement": view.agreement_id,
        "purpose": view.purpose,
        "reasons": view.reasons,
    }
    if as_json:
        print(json.dumps(outcome, indent=2))
    else:
        colour = "green" if view.state == NegotiationState.FINALIZED else "red"
        console.print(f"negotiation {view.pid}: [{colour}]{view.state}[/{colour}]")
        if view.agreement_id:
            console.print(f"agreement {view.agreement_id} (purpose {view.purpose})")
        for reason in view.reasons:
            console.print(f"  - {reason}")
    if view.state != NegotiationState.FINALIZED:
        raise typer.Exit(1)


@transfer_app.command("start")
def transfer_start(
    agreement: Annotated[str, typer.Option("--agreement", help="The contract agreement's id.")],
    fmt: Annotated[
        str, typer.Option("--format", help="ComputeToData or EncryptedDataset-PULL.")
    ] = COMPUTE_TO_DATA,
    wait: WaitOption = 30.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the transfer and its data address as JSON.")
    ] = False,
) -> None:
    """Request a transfer; print the data address (ComputeToData: the job endpoint and its token)."""
    from connector.dataspace import messages as m
    from connector.dataspace.negotiations import DspError
    from connector.dataspace.states import TRANSFER_FINAL, TransferState
    from connector.dataspace.transfers import get_transfer, start_transfer

    if fmt not in m.FORMATS:
        raise _fail(f"--format must be one of {', '.join(m.FORMATS)}")
    with runtime_for(settings()) as runtime:
        try:
            view = start_transfer(runtime, agreement, fmt)
        except DspError as exc:
            raise _peer_failed(exc) from None
        deadline = time.monotonic() + wait
        wanted = TRANSFER_FINAL | ({TransferState.STARTED} if fmt == m.COMPUTE_TO_DATA else set())
        while view.state not in wanted and time.monotonic() < deadline:
            time.sleep(0.05)
            view = get_transfer(runtime, view.pid)
    _print_transfer(view, as_json)
    if view.state not in (TransferState.STARTED, TransferState.COMPLETED):
        raise typer.Exit(1)


def _transfer_dict(view: Any) -> dict[str, Any]:
    from connector.dataspace import messages as m

    address = m.DataAddress.model_validate(view.data_address) if view.data_address else None
    return {
        "transfer": view.pid,
        "state": view.state,
        "format": view.format,
        "agreement": view.agreement_id,
        "endpoint": address.endpoint if address else None,
        "token": address.property("authorization") if address else None,
        "dataset": address.property("dataset") if address else None,
        "purpose": address.property("purpose") if address else None,
        "reasons": view.reasons,
    }


def _print_transfer(view: Any, as_json: bool) -> None:
    data = _transfer_dict(view)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from connector.dataspace.states import TransferState

    console.print(f"transfer {view.pid} ({view.format}): {view.state}")
    for reason in view.reasons:
        console.print(f"  - {reason}")
    if data["endpoint"] and view.state == TransferState.STARTED:
        console.print("Submit jobs to the provider with:", highlight=False)
        sys.stdout.write(
            f"export IMAGING_CONNECTOR_URL={data['endpoint']}\n"
            f"export IMAGING_CONNECTOR_TOKEN={data['token']}\n"
        )


@transfer_app.command("status")
def transfer_status(
    pid: Annotated[str, typer.Argument(help="The transfer's id (ours).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one transfer process."""
    from connector.dataspace.negotiations import DspError
    from connector.dataspace.transfers import get_transfer

    with runtime_for(settings()) as runtime:
        try:
            view = get_transfer(runtime, pid)
        except DspError as exc:
            raise _fail("; ".join(exc.reasons)) from None
    _print_transfer(view, as_json)


def _end(pid: str, kind: str, reason: str) -> None:
    from connector.dataspace.negotiations import DspError
    from connector.dataspace.transfers import end

    with runtime_for(settings()) as runtime:
        try:
            view = end(runtime, pid, kind, [reason] if reason else [])
        except DspError as exc:
            raise _fail("; ".join(exc.reasons)) from None
        except ValueError as exc:
            raise _fail(str(exc)) from None
    console.print(f"transfer {view.pid}: {view.state}")


@transfer_app.command("complete")
def transfer_complete(pid: Annotated[str, typer.Argument(help="The transfer's id (ours).")]) -> None:
    """Complete a started transfer (its token stops working)."""
    _end(pid, "TransferCompletionMessage", "")


@transfer_app.command("suspend")
def transfer_suspend(
    pid: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option("--reason")] = "suspended by an operator",
) -> None:
    """Suspend a started transfer (its token stops working until it is started again)."""
    _end(pid, "TransferSuspensionMessage", reason)


@transfer_app.command("resume")
def transfer_resume(
    pid: Annotated[str, typer.Argument(help="The transfer's id (ours).")], wait: WaitOption = 30.0
) -> None:
    """Ask the provider to start a suspended transfer again (it decides again; a fresh token)."""
    from connector.dataspace.negotiations import DspError
    from connector.dataspace.states import TransferState
    from connector.dataspace.transfers import get_transfer, resume

    with runtime_for(settings()) as runtime:
        try:
            view = resume(runtime, pid)
        except DspError as exc:
            raise _peer_failed(exc) from None
        deadline = time.monotonic() + wait
        while view.state == TransferState.SUSPENDED and time.monotonic() < deadline:
            time.sleep(0.05)
            view = get_transfer(runtime, pid)
    _print_transfer(view, False)
    if view.state != TransferState.STARTED:
        raise typer.Exit(1)


@transfer_app.command("terminate")
def transfer_terminate(
    pid: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option("--reason")] = "terminated by an operator",
) -> None:
    """Terminate a transfer for good."""
    _end(pid, "TransferTerminationMessage", reason)


@peer_app.command("negotiations")
def negotiations_list() -> None:
    """Our contract negotiations, as provider and as consumer, newest first."""
    from connector.dataspace.negotiations import list_negotiations

    with runtime_for(settings()) as runtime:
        rows = list_negotiations(runtime)
    table = Table()
    for column in ("negotiation", "role", "peer", "state", "dataset", "purpose", "agreement"):
        table.add_column(column, overflow="fold")
    for v in rows:
        table.add_row(v.pid, v.role, v.peer, v.state, v.dataset or v.target, v.purpose, v.agreement_id)
    console.table(table)


@peer_app.command("transfers")
def transfers_list() -> None:
    """Our transfer processes, newest first."""
    from connector.dataspace.transfers import list_transfers

    with runtime_for(settings()) as runtime:
        rows = list_transfers(runtime)
    table = Table()
    for column in ("transfer", "role", "peer", "state", "format", "agreement"):
        table.add_column(column, overflow="fold")
    for v in rows:
        table.add_row(v.pid, v.role, v.peer, v.state, v.format, v.agreement_id)
    console.table(table)
