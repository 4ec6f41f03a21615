"""The DPO's commands: `policy ...`, `consent ...` and `permit ...` (registered by connector.cli).

Every command prints a readable result by default and JSON with `--json`; a refused activation,
a failing test run or a denied decision exits 1, bad input exits 2 with one line saying why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from connector.cli import _fail, cli_actor, console, dataset_name_option, runtime_for, settings
from connector.policy import sandbox
from connector.policy.bundle import BundleError, PolicyBundle, default_policies_dir
from connector.policy.checker import has_errors
from connector.policy.decision import Decision
from connector.policy.engine import PolicyEngineError

# The consent registry and the policy service hold database models (SQLAlchemy): they load with
# the commands that use them, so that `--help` stays fast (tests/test_cli_startup.py).
if TYPE_CHECKING:
    from connector.policy.service import Activation

policy_app = typer.Typer(
    help="The DPO's Rego policies: check, test, decide, activate, diff.", no_args_is_help=True
)
consent_app = typer.Typer(help="The consent and opt-out registry.", no_args_is_help=True)
permit_app = typer.Typer(help="Data permits: the development HDAB, revocations.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
BundleDir = Annotated[
    Path | None,
    typer.Argument(help="Policy folder (default: the configured or shipped policies/).", file_okay=False),
]


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
    app.add_typer(consent_app, name="consent")
    app.add_typer(permit_app, name="permit")


def _bundle(folder: Path | None) -> PolicyBundle:
    try:
        return PolicyBundle.from_dir(folder or settings().policies_dir or default_policies_dir())
    except BundleError as exc:
        raise _fail(str(exc)) from None


def _print_json(document: Any) -> None:
    console.print_json(json.dumps(document))


def print_decision(decision: Decision) -> None:
    verdict = "[bold green]ALLOW[/]" if decision.allow else "[bold red]DENY[/]"
    console.print(f"{verdict}  (policy {decision.policy_version or 'none'})")
    for reason in decision.reasons:
        console.print(f"  reason: {reason}", highlight=False)
    for obligation in decision.obligations:
        console.print(f"  obligation: {obligation}", highlight=False)


@policy_app.command("check")
def policy_check(folder: BundleDir = None, as_json: JsonFlag = False) -> None:
    """Compile the bundle and lint it; exit 1 when it has errors."""
    bundle = _bundle(folder)
    try:
        findings = sandbox.check(bundle, settings().policy_eval_timeout_seconds)
    except sandbox.EvaluationTimeout as exc:
        raise _fail(f"evaluation_timeout: {exc}", code=1) from None
    except PolicyEngineError as exc:
        raise _fail(f"the bundle cannot be checked: {exc}") from None
    if as_json:
        _print_json({"digest": bundle.digest, "findings": [finding.to_json() for finding in findings]})
    else:
        for finding in findings:
            console.print(str(finding), highlight=False)
        errors = sum(finding.severity == "error" for finding in findings)
        console.print(f"{len(bundle.modules)} modules, {errors} errors, {len(findings) - errors} warnings")
    if has_errors(findings):
        raise typer.Exit(1)


@policy_app.command("test")
def policy_test(folder: BundleDir = None, as_json: JsonFlag = False) -> None:
    """Run the Rego unit tests with coverage; exit 1 when any fails."""
    bundle = _bundle(folder)
    try:
        report = sandbox.test(bundle, settings().policy_eval_timeout_seconds)
    except sandbox.EvaluationTimeout as exc:
        raise _fail(f"evaluation_timeout: {exc}", code=1) from None
    except PolicyEngineError as exc:
        raise _fail(f"the bundle does not compile: {exc}") from None
    if as_json:
        _print_json(report.to_json())
    else:
        for result in report.failed:
            console.print(f"[red]FAIL[/] {result.package}.{result.name} ({result.module}): {result.detail}")
        table = Table("module", "coverage", title="Coverage")
        for name, value in sorted(report.files.items()):
            table.add_row(name, f"{value:.1f}%")
        console.table(table)
        console.print(
            f"{len(report.results) - len(report.failed)}/{len(report.results)} tests passed, "
            f"coverage {report.coverage:.1f}%"
        )
    if not report.passed:
        raise typer.Exit(1)


@policy_app.command("decide")
def policy_decide(
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            help="A request JSON file (access, release or api), or an example of policies/examples/ "
            "(decided by the policy folder with the examples' state.json; not audited).",
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Decide on a request with the active policy, print the decision and its reasons (audited).

    A request that does not fit its format is bad input (one line, exit 2), not a denial. An
    example file ({"policy", "input", "expected"}) is a dry run: its prepared input is decided by
    the configured or shipped policy folder with the connector state of `state.json` beside it."""
    try:
        document = json.loads(input_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read {input_file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _fail(f"{input_file} is not JSON (line {exc.lineno}: {exc.msg})") from None
    if _is_example(document):
        _decide_example(input_file, document, as_json)
        return
    _check_request_format(input_file, document)
    with runtime_for(settings()) as runtime:
        decision = runtime.policy.decide_any(document, actor=cli_actor())
    if as_json:
        _print_json(decision.to_json())
    else:
        print_decision(decision)
    if not decision.allow:
        raise typer.Exit(1)


def _is_example(document: Any) -> bool:
    return isinstance(document, dict) and "action" not in document and {"policy", "input"} <= set(document)


def _check_request_format(input_file: Path, document: Any) -> None:
    """Exit 2 with every problem on one line when `document` fits none of the request formats
    (the API denies such a request with the same reasons; a person at a terminal made a mistake)."""
    from connector.policy.requests import parse_access, parse_release

    action = document.get("action") if isinstance(document, dict) else None
    if action not in ("access", "release", "api"):
        raise _fail(
            f'{input_file}: "action" must be access, release or api (got {action!r:.40}); an example of '
            'policies/examples/ has "policy" and "input" instead'
        )
    parsed = (
        parse_access(document)
        if action == "access"
        else parse_release(document)
        if action == "release"
        else None
    )
    if isinstance(parsed, list):
        raise _fail(f"{input_file} does not match the {action}-request format: {'; '.join(parsed)}")


def _decide_example(input_file: Path, document: dict[str, Any], as_json: bool) -> None:
    """An example's decision by the policy folder (sandboxed, under the evaluation deadline)."""
    from connector.policy.decision import POLICIES, decision_from_document

    policy = document["policy"]
    if policy not in POLICIES:
        raise _fail(f'{input_file}: "policy" must be one of {", ".join(POLICIES)} (got {policy!r:.40})')
    state_file = input_file.parent / "state.json"
    try:
        state = (
            json.loads(state_file.read_text(encoding="utf-8"))["connector"]["state"]
            if state_file.is_file()
            else {}
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise _fail(f"cannot read the examples' state {state_file}: {exc}") from None
    bundle = _bundle(None)
    try:
        answers = sandbox.run(
            "replay",
            bundle,
            settings().policy_eval_timeout_seconds,
            state=state,
            items=[[policy, document["input"]]],
        )["answers"]
    except PolicyEngineError as exc:
        raise _fail(f"the example cannot be decided: {exc}", code=1) from None
    answer = answers[0] if answers else {}
    if "document" not in answer:
        problem = answer.get("compile_error") or answer.get("error")
        raise _fail(f"the example cannot be decided: {problem}", code=1)
    decision = decision_from_document(answer["document"], f"folder {bundle.digest[:12]}")
    stated = document.get("expected")
    expected = stated.get("allow") if isinstance(stated, dict) else None
    if as_json:
        example = {"expected_allow": expected, "state": str(state_file)}
        _print_json({**decision.to_json(), "example": example})
    else:
        print_decision(decision)
        if expected is not None:
            verdict = "as the example expects" if decision.allow is expected else "NOT as the example expects"
            console.print(f"{verdict} ({'allow' if expected else 'deny'})", highlight=False)
        console.print(f"dry run with the state of {state_file}; not audited", highlight=False, markup=False)
    if not decision.allow:
        raise typer.Exit(1)


@policy_app.command("activate")
def policy_activate(
    folder: BundleDir = None,
    note: Annotated[str, typer.Option(help="Why this version (kept in the history).")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Check, test and activate a bundle as a new version; a refused bundle leaves the active one.

    In production mode the activation waits for a second DPO (`policy approve ID`)."""
    bundle = _bundle(folder)
    with runtime_for(settings()) as runtime:
        outcome = runtime.policy.activate(bundle, cli_actor(), note)
    _print_activation(outcome, as_json)


def _print_activation(outcome: Activation, as_json: bool) -> None:
    """An activation's outcome; exit 1 when refused (a pending one is not a failure)."""
    if as_json:
        _print_json(outcome.to_json())
    else:
        for finding in outcome.findings:
            console.print(str(finding), highlight=False)
        if outcome.tests is not None:
            for result in outcome.tests.failed:
                console.print(f"[red]FAIL[/] {result.package}.{result.name}: {result.detail}")
        if outcome.invariants is not None:
            for failed in outcome.invariants.failed:
                console.print(f"[red]INVARIANT[/] {failed.name}: {failed.detail}", highlight=False)
        if outcome.replay is not None:
            console.print(
                f"replayed {outcome.replay['replayed']} recent decisions: {outcome.replay['changed']} would "
                f"change, {outcome.replay['flip_count']} between allow and deny",
                highlight=False,
            )
            for flip in outcome.replay["flips"]:
                change = f"{flip['policy']} {flip['object']}: {flip['before']} -> {flip['after']}"
                console.print(f"  #{flip['seq']} {change}", highlight=False)
        label = outcome.version.label if outcome.version else "none"
        if outcome.pending is not None:
            console.print(
                f"[yellow]pending:[/] activation #{outcome.pending.id} awaits a second DPO "
                f"(`connector policy approve {outcome.pending.id}`); still active: {label}",
                highlight=False,
            )
        elif outcome.activated:
            console.print(f"[green]active:[/] {label} ({'; '.join(outcome.reasons)})", highlight=False)
        else:
            console.print(
                f"[red]refused:[/] {'; '.join(outcome.reasons)}; still active: {label}", highlight=False
            )
    if not outcome.activated and outcome.pending is None:
        raise typer.Exit(1)


@policy_app.command("pending")
def policy_pending(
    status: Annotated[str, typer.Option(help="pending, approved, rejected, refused or all.")] = "pending",
    as_json: JsonFlag = False,
) -> None:
    """Activations requested in production mode, waiting for a second DPO."""
    if status not in ("pending", "approved", "rejected", "refused", "all"):
        raise _fail(f"--status must be pending, approved, rejected, refused or all (got {status!r})")
    with runtime_for(settings()) as runtime:
        rows = runtime.policy.pending(None if status == "all" else status)
    if as_json:
        _print_json([row.to_json() for row in rows])
        return
    columns = ("id", "digest", "requested at", "by", "note", "changes", "status")
    table = Table(*columns, title="Pending activations")
    for row in rows:
        changes = f"{row.replay.get('changed', 0)} ({row.replay.get('flip_count', 0)} flips)"
        table.add_row(
            str(row.id), row.digest[:12], row.requested_at, row.requested_by, row.note, changes, row.status
        )
    console.table(table)


@contextmanager
def _approval_refusals() -> Iterator[None]:
    """An unknown approval id is a usage error (exit 2); a refused decision on one exits 1 with its code."""
    from connector.policy.service import ApprovalError

    try:
        yield
    except LookupError as exc:
        raise _fail(str(exc)) from None
    except ApprovalError as exc:
        raise _fail(f"{exc.code}: {exc}", code=1) from None


@policy_app.command("approve")
def policy_approve(
    approval_id: Annotated[int, typer.Argument(help="The pending activation's id.")],
    note: Annotated[str, typer.Option(help="Why approved (audited).")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Approve another DPO's pending activation: every check runs again, then it is activated."""
    with runtime_for(settings()) as runtime, _approval_refusals():
        outcome = runtime.policy.approve(approval_id, cli_actor(), note)
    _print_activation(outcome, as_json)


@policy_app.command("reject")
def policy_reject(
    approval_id: Annotated[int, typer.Argument(help="The pending activation's id.")],
    note: Annotated[str, typer.Option(help="Why rejected (audited).")] = "",
) -> None:
    """Reject a pending activation (its requester may withdraw it the same way)."""
    with runtime_for(settings()) as runtime, _approval_refusals():
        decided = runtime.policy.reject(approval_id, cli_actor(), note)
    console.print(f"activation #{decided.id} rejected", highlight=False)


@policy_app.command("diff")
def policy_diff(
    folder: BundleDir = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Recent decisions to replay.")] = 200,
    as_json: JsonFlag = False,
) -> None:
    """Replay recent recorded decisions under a draft bundle and list what would change."""
    bundle = _bundle(folder)
    with runtime_for(settings()) as runtime:
        try:
            report = runtime.policy.diff(bundle, limit)
        except sandbox.EvaluationTimeout as exc:
            raise _fail(f"evaluation_timeout: {exc}", code=1) from None
        except PolicyEngineError as exc:
            raise _fail(f"the draft cannot be replayed: {exc}") from None
    if as_json:
        _print_json(report.to_json())
        return
    for error in report.errors:
        console.print(f"[red]error:[/] {error}", highlight=False)
    for entry in report.changed:
        before = "allow" if entry.before["allow"] else "deny"
        after = "allow" if entry.after["allow"] else "deny"
        console.print(
            f"#{entry.seq} {entry.ts} {entry.policy} {entry.object}: {before} -> {after}", highlight=False
        )
        for reason in entry.after["reasons"]:
            console.print(f"    now: {reason}", highlight=False)
    console.print(f"{report.replayed} decisions replayed, {len(report.changed)} would change")


@policy_app.command("history")
def policy_history(as_json: JsonFlag = False) -> None:
    """Every activated version, newest first (the first line is in force)."""
    with runtime_for(settings()) as runtime:
        rows = runtime.policy.history()
    if as_json:
        _print_json([row.to_json() for row in rows])
        return
    table = Table("version", "digest", "activated at", "by", "note", title="Policy versions")
    for index, row in enumerate(rows):
        table.add_row(
            row.label + (" (active)" if index == 0 else ""),
            row.digest[:12],
            row.activated_at,
            row.activated_by,
            row.note,
        )
    console.table(table)


@policy_app.command("rollback")
def policy_rollback(
    version: Annotated[
        str, typer.Argument(help="The version to bring back, as `history` prints it (v2) or 2.")
    ],
) -> None:
    """Activate an earlier version again (re-checked and re-tested; recorded as a new version)."""
    number = version.strip().removeprefix("v").removeprefix("V")
    if not (number.isascii() and number.isdigit()) or int(number) < 1:
        raise _fail(f"a version is v1, v2, ... as `connector policy history` prints it (got {version!r:.40})")
    with runtime_for(settings()) as runtime:
        try:
            outcome = runtime.policy.rollback(int(number), cli_actor())
        except LookupError as exc:
            raise _fail(str(exc)) from None
    if outcome.pending is not None:
        console.print(
            f"pending: activation #{outcome.pending.id} awaits a second DPO "
            f"(`connector policy approve {outcome.pending.id}`)",
            highlight=False,
        )
        return
    if not outcome.activated:
        raise _fail(f"refused: {'; '.join(outcome.reasons)}", code=1)
    console.print(
        f"active: {outcome.version.label if outcome.version else '-'} ({'; '.join(outcome.reasons)})"
    )


_ROWS_SHOWN = 50  # per-row lines printed; the rest (and everything with --json) in the JSON report


@consent_app.command("import")
def consent_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV (first line: the column names) or JSON (a list of objects). Columns: status "
            "(opted-out, withdrawn or consented) and either patient_id [issuer] [dataset] - the hospital's "
            "id; without issuer the setting default_patient_id_issuer is used, as patients are keyed "
            "issuer|patient_id; without dataset the row applies to every dataset - or dataset + pseudonym."
        ),
    ],
    erase: Annotated[
        bool,
        typer.Option("--erase", help="Also crypto-shred the studies of opted-out or withdrawn patients."),
    ] = False,
    strict: Annotated[
        bool | None,
        typer.Option(
            "--strict/--no-strict",
            help="Fail, importing nothing, when a row matches no patient (default: on with --erase).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Import opt-outs, withdrawals and consents (all or nothing); every row is matched and reported."""
    from connector.policy.consent import ConsentImportError, first_row_of, read_rows
    from connector.policy.optout import UnmatchedRows, import_consent

    with runtime_for(settings()) as runtime:
        try:
            outcome = import_consent(
                runtime, read_rows(file), file.name, cli_actor(), erase, strict, first_row_of(file)
            )
        except UnmatchedRows as exc:
            for row in [row for row in exc.rows if not row.matched][:_ROWS_SHOWN]:
                console.print(f"row {row.row}: {row.status}: matches no patient")
            raise _fail(f"nothing imported: {exc}", code=1) from None
        except ConsentImportError as exc:
            raise _fail(f"nothing imported: {exc}") from None
    if as_json:
        _print_json(outcome.to_json())
        return
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.result.by_status.items()))
    console.print(
        f"imported {outcome.result.entries} entries ({counts}) for {', '.join(outcome.result.datasets)}"
    )
    for row in outcome.rows[:_ROWS_SHOWN]:
        found = ", ".join(
            f"{match.dataset} {match.pseudonym} "
            + ("(erased before)" if match.erased else f"({match.studies} studies)")
            for match in row.datasets
            if match.studies or match.erased
        )
        matched = f"matched {found}" if found else "matches NO patient"
        console.print(f"row {row.row}: {row.status}: {matched}")
    if outcome.unmatched:
        console.print(
            f"{len(outcome.unmatched)} row(s) matched no patient and exclude nobody now: check the issuer "
            "(setting default_patient_id_issuer) and the ids"
        )
    for dataset, pseudonym, studies in outcome.shredded:
        console.print(f"shredded {studies} studies of {pseudonym} in {dataset}")


@consent_app.command("readmit")
def consent_readmit(
    dataset: Annotated[
        str, typer.Option(help="The dataset that refuses the patient.", callback=dataset_name_option)
    ],
    patient: Annotated[str, typer.Option(help="The patient's pseudonym in that dataset (PSN-...).")],
    reason: Annotated[str, typer.Option(help="Why the erased patient may come back (audited).")],
) -> None:
    """Lift the refusal of a shredded or erased patient: a later ingest stores their studies again."""
    from connector.datasets.refusals import readmit

    with runtime_for(settings()) as runtime:
        try:
            readmit(runtime, dataset, patient, reason, cli_actor())
        except (LookupError, ValueError) as exc:
            raise _fail(str(exc)) from None
    console.print(f"patient {patient} may be ingested into {dataset} again (consent entry unchanged)")


@consent_app.command("refused")
def consent_refused(
    dataset: Annotated[
        str | None, typer.Option(help="Only this dataset.", callback=dataset_name_option)
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Patients that ingest refuses (shredded or erased), by pseudonym."""
    from dataclasses import asdict

    from connector.datasets.refusals import list_refusals

    with runtime_for(settings()) as runtime:
        rows = list_refusals(runtime.sessions, dataset)
    if as_json:
        _print_json([asdict(row) for row in rows])
        return
    table = Table("dataset", "pseudonym", "reason", "since", "by", title="Refused (erased) patients")
    for row in rows:
        table.add_row(row.dataset, row.pseudonym, row.reason, row.recorded_at, row.recorded_by)
    console.table(table)


@consent_app.command("list")
def consent_list(
    dataset: Annotated[
        str | None, typer.Option(help="Only this dataset.", callback=dataset_name_option)
    ] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000)] = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Registry entries (pseudonyms only, never hospital identifiers)."""
    from connector.policy.consent import list_entries

    with runtime_for(settings()) as runtime:
        rows = list_entries(runtime.sessions, dataset, status, limit)
    if as_json:
        _print_json(rows)
        return
    table = Table("dataset", "pseudonym", "status", "recorded", "by", title="Consent registry")
    for row in rows:
        table.add_row(row["dataset"], row["pseudonym"], row["status"], row["recorded_at"], row["recorded_by"])
    console.table(table)


@permit_app.command("issue")
def permit_issue(
    requester: Annotated[str, typer.Option(help="The requester's id (becomes `sub`).")],
    organisation: Annotated[str, typer.Option(help="The requester's organisation.")],
    country: Annotated[str, typer.Option(help="Country the data may be processed from (alpha-2).")],
    purpose: Annotated[list[str], typer.Option(help="Permitted purpose code (repeatable).")],
    dataset: Annotated[
        list[str], typer.Option(help="Dataset covered (repeatable).", callback=dataset_name_option)
    ],
    valid_days: Annotated[int, typer.Option(help="Validity in days.")] = 30,
    condition: Annotated[list[str] | None, typer.Option(help="Condition attached (repeatable).")] = None,
) -> None:
    """Print a permit signed by the development HDAB (trusted only in development mode).

    The permit (a JWT) goes to stdout alone, so `PERMIT=$(connector permit issue ...)` keeps
    working; its id, which `permit revoke` takes, goes to stderr."""
    from connector.cli import errors
    from connector.policy.permits import new_permit_id

    with runtime_for(settings()) as runtime:
        if runtime.permit_issuer is None:
            raise _fail(
                "the development HDAB is off (dev_issuer_enabled = false): permits come from a real HDAB"
            )
        permit_id = new_permit_id()
        try:
            permit = runtime.permit_issuer.issue(
                requester,
                organisation,
                purpose,
                dataset,
                [country],
                valid_days,
                condition or [],
                permit_id=permit_id,
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        # Recorded so that `permit revoke` knows the id was issued here (and the DPO sees who asked).
        runtime.audit.record(
            cli_actor(),
            "permit.issue",
            permit_id,
            "success",
            details={"requester": requester, "datasets": dataset, "purposes": purpose, "days": valid_days},
        )
    errors.print(
        f"permit {permit_id} for {requester} ({', '.join(dataset)}; {', '.join(purpose)}), "
        f"valid {valid_days} days, from the development HDAB:",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    print(permit)


@permit_app.command("revoke")
def permit_revoke(
    permit_id: Annotated[str, typer.Argument(help="The permit id (its `jti`).")],
    reason: Annotated[str, typer.Option(help="Why (shown in every denial).")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Revoke an id this connector has never seen (a real HDAB's permit not presented here yet).",
        ),
    ] = False,
) -> None:
    """Revoke a data permit: every later decision that presents it is denied.

    The id must be one this connector knows: issued by its development HDAB (`permit issue`) or
    presented in a recorded access decision. A real HDAB's permit may be revoked before it ever
    reaches this connector: `--force` does that, with a warning; a typo is refused without it."""
    from rich.markup import escape

    from connector.cli import errors
    from connector.policy.permits import permit_id_problem

    problem = permit_id_problem(permit_id)
    if problem is not None:
        raise _fail(problem)
    with runtime_for(settings()) as runtime:
        seen = _permit_seen(runtime, permit_id)
        if not seen and not force:
            raise _fail(
                f"permit {permit_id} was never issued by this connector's development HDAB nor presented "
                "to it: check the id (`connector audit show --action 'policy.access'`), or revoke it "
                "anyway with --force"
            )
        try:
            runtime.policy.revoke_permit(permit_id, reason, cli_actor())
        except ValueError as exc:
            raise _fail(str(exc)) from None
    if not seen:
        errors.print(
            f"[yellow]warning:[/] permit {escape(permit_id)} was never seen by this connector; "
            "revoked anyway (--force)",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"permit {permit_id} revoked", highlight=False, markup=False)


def _permit_seen(runtime: Any, permit_id: str) -> bool:
    """Whether this connector issued the permit (audited `permit.issue`) or decided on a request
    that presented it (its verified claims are in the recorded decision's input)."""
    if any(record.object == permit_id for record in runtime.audit.iter_entries(action="permit.issue")):
        return True
    needle = json.dumps(permit_id)  # the canonical JSON of the details holds it as a JSON string
    for record in runtime.audit.iter_entries(action="policy.access"):
        if needle not in record.details:
            continue
        document = json.loads(record.details).get("input")
        check = document.get("permit_check") if isinstance(document, dict) else None
        claims = check.get("claims") if isinstance(check, dict) else None
        if isinstance(claims, dict) and claims.get("permit_id") == permit_id:
            return True
    return False


@permit_app.command("revoked")
def permit_revoked(as_json: JsonFlag = False) -> None:
    """List revoked permits."""
    with runtime_for(settings()) as runtime:
        rows = runtime.policy.revoked_permits()
    if as_json:
        _print_json(rows)
        return
    table = Table("permit", "reason", "revoked at", "by", title="Revoked permits")
    for row in rows:
        table.add_row(row["permit_id"], row["reason"], row["revoked_at"], row["revoked_by"])
    console.table(table)
