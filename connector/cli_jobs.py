"""The researcher's and AI team's commands (registered by connector.cli):

- `jobs submit|status|list|results|cancel`: compute-to-data jobs on a remote connector's API;
- `teams register-key`: a steward or DPO registers an AI team's package-signing key over the API;
- `model keygen|pack|sign`: a team's key pair, a model package and its signature, all offline;
  `model manifest-schema|manifest-example`: what a package's manifest.json holds.

Remote commands take `--url` and `--token` (or IMAGING_CONNECTOR_URL and IMAGING_CONNECTOR_TOKEN:
the connector's own settings loader refuses every unknown CONNECTOR_* variable, so a client's
variables must not use that prefix). They never load the connector's settings, print readable
text by default and JSON with `--json`. A denied submission exits 1 with the policy's reasons, a
refused one exits 2 with its problems, any other error exits 2 with one line. These commands never
print, log or write a token, and write a private key only to a new file readable by its owner.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from connector.cli import console, dataset_name_option, errors

# The HTTP client (httpx, jwt, pydantic manifests) loads with the first remote command, not --help.
if TYPE_CHECKING:
    from connector.client import ConnectorClient, ConnectorError, Job

URL_ENV = "IMAGING_CONNECTOR_URL"
TOKEN_ENV = "IMAGING_CONNECTOR_TOKEN"  # noqa: S105 (a variable's name, not a secret)
DEFAULT_URL = "http://127.0.0.1:8600"
ALGORITHMS = ("EdDSA", "ES256")

jobs_app = typer.Typer(
    help="Compute-to-data jobs on a connector (researchers): submit, follow, cancel, fetch results.",
    no_args_is_help=True,
)
teams_app = typer.Typer(
    help="AI teams' package-signing keys on a connector (stewards, DPOs).", no_args_is_help=True
)
model_app = typer.Typer(
    help="Model packages, offline: a team key pair, a package zip, the team's signature over it; "
    "the manifest's schema and an example.",
    no_args_is_help=True,
)

UrlOption = Annotated[
    str, typer.Option("--url", envvar=URL_ENV, help="The connector's base URL.", show_envvar=True)
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        help="Bearer token (prefer the environment variable: a command line is visible to others).",
        show_default=False,
        show_envvar=True,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(teams_app, name="teams")
    app.add_typer(model_app, name="model")


# --- helpers -------------------------------------------------------------------------------------


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Like connector.cli._fail, but the line is never wrapped (URLs and key ids stay whole)."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _read_text(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read the {what} file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text:
        raise _fail(f"the {what} file {path} is empty")
    return text


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None


def _write(path: Path, data: bytes, what: str, mode: int = 0o644) -> None:
    from connector.atomic_files import write_atomically

    try:
        write_atomically(path, data, mode=mode)
    except OSError as exc:
        raise _fail(f"cannot write the {what} {path}: {exc.strerror or exc}") from None


@contextmanager
def _remote(url: str, token: str | None) -> Iterator[ConnectorClient]:
    """A client for the connector at `url`; any ConnectorError left unhandled becomes one line."""
    if not token:
        raise _fail(f"a token is needed: pass --token or set {TOKEN_ENV}")
    if not url.startswith(("http://", "https://")):
        raise _fail(f"--url must start with http:// or https:// (got {url[:100]!r})")
    from connector.client import ConnectorClient, ConnectorError

    client = ConnectorClient(url, token)
    try:
        yield client
    except ConnectorError as exc:
        raise _fail(_one_line(exc)) from None
    finally:
        client.close()


def _one_line(exc: ConnectorError) -> str:
    return str(exc).replace("\n", " ")


def _error_json(exc: ConnectorError) -> dict[str, Any]:
    return {
        "status": exc.status,
        "error": exc.code,
        "detail": exc.detail,
        "problems": exc.problems,
        "reasons": exc.reasons,
        "job": exc.job,
    }


def _progress_text(job: Job) -> str:
    if not job.studies_total:
        return "-"
    skipped = f", {job.studies_skipped} skipped" if job.studies_skipped else ""
    return f"{job.studies_done}/{job.studies_total}{skipped}"


def _print_job(job: Job) -> None:
    from connector.client import JobState

    colour = {
        JobState.SUCCEEDED: "green",
        JobState.FAILED: "red",
        JobState.DENIED: "red",
        JobState.CANCELLED: "yellow",
    }.get(job.state)
    state = f"[{colour}]{job.state}[/]" if colour else job.state
    _say(f"job [bold]{job.id}[/]: {state}")
    rows = [
        ("dataset", job.dataset),
        ("purpose", job.purpose),
        ("model", job.model),
        ("package sha256", job.package_digest),
        ("policy version", job.policy_version),
        ("cohort (patients)", str(job.cohort_size)),
        ("studies", _progress_text(job)),
        ("created", job.created_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
        ("error", job.error_code),
        ("result", "ready (jobs results)" if job.has_result else ""),
    ]
    for label, value in rows:
        if value:
            _say(f"  {label}: {escape(value)}")
    for reason in job.reasons:
        _say(f"  reason: {escape(reason)}")


def _cohort_options(**values: list[str] | None) -> dict[str, list[str]]:
    return {name: list(chosen) for name, chosen in values.items() if chosen}


def _follow(client: ConnectorClient, job: Job, timeout: float, poll: float, quiet: bool) -> Job:
    """Poll the job to a final state, with a progress bar of studies done unless `quiet`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from connector.client import WaitTimeout

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        disable=quiet,
    ) as progress:
        task = progress.add_task(f"job {job.id[:12]} {job.state}", total=None)

        def update(current: Job) -> None:
            progress.update(
                task,
                description=f"job {current.id[:12]} {current.state}",
                total=current.studies_total or None,
                completed=current.studies_done + current.studies_skipped,
            )

        try:
            return client.wait(job.id, timeout=timeout, poll=poll, on_progress=update)
        except WaitTimeout as exc:
            raise _fail(f"{exc}; follow it with `connector jobs status {job.id}`", code=1) from None
        except KeyboardInterrupt:
            # Only the waiting stops: the job goes on at the connector.
            raise _fail(
                f"stopped waiting; job {job.id} goes on (`connector jobs status {job.id}`)", 130
            ) from None


# --- jobs ----------------------------------------------------------------------------------------


@jobs_app.command("submit")
def jobs_submit(
    package: Annotated[Path, typer.Option("--package", help="The model package (zip).", dir_okay=False)],
    signature: Annotated[
        Path,
        typer.Option("--signature", help="File holding the team's JWS over the package.", dir_okay=False),
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", help="The dataset to run on.", callback=dataset_name_option)
    ],
    purpose: Annotated[str, typer.Option("--purpose", help="EHDS purpose code, e.g. ai-development.")],
    permit: Annotated[
        Path,
        typer.Option("--permit", help="File holding the data permit (a JWT from the HDAB).", dir_okay=False),
    ],
    modality: Annotated[list[str] | None, typer.Option("--modality", help="e.g. CT (repeatable).")] = None,
    body_part: Annotated[
        list[str] | None, typer.Option("--body-part", help="e.g. CHEST (repeatable).")
    ] = None,
    sex: Annotated[list[str] | None, typer.Option("--sex", help="F, M or O (repeatable).")] = None,
    age_band: Annotated[list[str] | None, typer.Option("--age-band", help="e.g. 60-69 (repeatable).")] = None,
    study_year: Annotated[
        list[str] | None, typer.Option("--study-year", help="e.g. 2024 (repeatable).")
    ] = None,
    manufacturer: Annotated[list[str] | None, typer.Option("--manufacturer", help="(repeatable).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=256, help="Studies per batch.")] = 8,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job to its end with a progress bar.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="With --wait: give up after seconds.")
    ] = 3600,
    poll: Annotated[
        float, typer.Option("--poll", min=0.05, help="With --wait: seconds between polls.")
    ] = 1.0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a signed model package to run on a dataset; with --wait, follow it to its end.

    Exits 1 when the policy denies the job (or it ends other than succeeded), 2 when the submission
    is refused (signature, package, request) or the connector cannot be reached.
    """
    from connector.client import ConnectorError, JobState

    content = _read_bytes(package, "package")
    jws = _read_text(signature, "signature")
    permit_token = _read_text(permit, "permit")
    cohort = _cohort_options(
        modality=modality,
        body_part=body_part,
        sex=sex,
        age_band=age_band,
        study_year=study_year,
        manufacturer=manufacturer,
    )
    with _remote(url, token) as client:
        try:
            job = client.submit_job(
                content,
                jws,
                dataset=dataset,
                purpose=purpose,
                permit=permit_token,
                cohort=cohort,
                batch_size=batch_size,
            )
        except ConnectorError as exc:
            raise _submission_refused(exc, as_json) from None
        if not as_json:
            _say(f"job [bold]{job.id}[/] {job.state}: {escape(job.model)} on {escape(job.dataset)}")
        if wait:
            job = _follow(client, job, timeout, poll, quiet=as_json)
    if as_json:
        _print_json(job.to_json())
    elif wait:
        _print_job(job)
    if wait and job.state != JobState.SUCCEEDED:
        raise typer.Exit(1)


def _submission_refused(exc: ConnectorError, as_json: bool) -> typer.Exit:
    """Denied (exit 1, with the policy's reasons) or refused (exit 2, with the problems)."""
    denied = exc.code == "access_denied"
    if not denied and not exc.problems and exc.status not in (413, 422):
        return _fail(_one_line(exc))
    if as_json:
        _print_json(_error_json(exc))
    elif denied:
        _say(f"[bold red]DENIED[/] by the access policy{f' (job {exc.job})' if exc.job else ''}")
        for reason in exc.reasons or [exc.detail]:
            _say(f"  reason: {escape(reason)}")
    else:
        _say(f"[red]refused[/] ({escape(exc.code)}): {escape(exc.detail)}")
        for problem in exc.problems:
            _say(f"  - {escape(problem)}")
    return typer.Exit(1 if denied else 2)


JobId = Annotated[str, typer.Argument(help="The job id.")]


@jobs_app.command("status")
def jobs_status(
    job_id: JobId, url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonFlag = False
) -> None:
    """A job's state, progress and, when it ended without a result, why."""
    with _remote(url, token) as client:
        job = client.job(job_id)
    if as_json:
        _print_json(job.to_json())
    else:
        _print_job(job)


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many jobs.")] = 100,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Your jobs on the connector, newest first."""
    from connector.client import JobState

    with _remote(url, token) as client:
        jobs = client.jobs(limit)
    if as_json:
        _print_json([job.to_json() for job in jobs])
        return
    if not jobs:
        _say("no jobs")
    # One line per job (ids stay whole at any terminal width), then why it ended without a result.
    for job in jobs:
        studies = f"  {job.studies_done}/{job.studies_total} studies" if job.studies_total else ""
        _say(
            f"{job.id}  {job.state:<9}  {escape(job.model or '?')} on {escape(job.dataset)}{studies}  "
            f"[dim]{job.created_at[:16].replace('T', ' ')}[/]"
        )
        if job.state in (JobState.FAILED, JobState.DENIED, JobState.CANCELLED):
            for reason in job.reasons or [job.error_code]:
                _say(f"    {escape(reason)}")


@jobs_app.command("results")
def jobs_results(
    job_id: JobId,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the signed result (default: JOB_ID.jws; '-' for stdout)."),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the connector's signature before writing.")
    ] = True,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key", help="Verify with this JWKS or JWK file instead of the key the connector serves."
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Download a job's signed result (a JWS); with --verify (default) check it and print its body.

    A result that fails verification is not written, and the command exits 1.
    """
    from connector.client import ResultError, verify_with

    keys: dict[str, Any] | None = None
    if public_key is not None:
        try:
            keys = json.loads(_read_text(public_key, "public key"))
        except ValueError:
            raise _fail(f"the public key file {public_key} is not JSON (a JWKS or a JWK)") from None
        if not isinstance(keys, dict):
            raise _fail(f"the public key file {public_key} is not a JWKS or a JWK")
    with _remote(url, token) as client:
        token_text = client.result(job_id)
        body: dict[str, Any] | None = None
        if verify:
            try:
                body = verify_with(token_text, keys if keys is not None else client.connector_keys())
            except ResultError as exc:
                errors.print(f"[red]NOT VERIFIED[/red]: {escape(str(exc))}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
    target = out if out is not None else Path(f"{job_id}.jws")
    to_stdout = str(target) == "-"
    if to_stdout:
        sys.stdout.write(token_text + "\n")
    else:
        _write(target, token_text.encode("ascii") + b"\n", "result")
    if as_json:
        if not to_stdout:
            _print_json({"job": job_id, "file": str(target), "verified": body is not None, "body": body})
        return
    say = _say if not to_stdout else (lambda text: errors.print(text, highlight=False, soft_wrap=True))
    if not to_stdout:
        say(f"result of job {job_id} written to {target}")
    if body is not None:
        say(
            f"[green]verified[/]: job {escape(str(body.get('job')))} on {escape(str(body.get('dataset')))}, "
            f"model {escape(str(body.get('model')))}"
        )
        if not to_stdout:
            console.print_json(data=body)
    elif not to_stdout:
        say("[yellow]not verified[/] (--no-verify): check it with `connector verify-result`")


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: JobId, url: UrlOption = DEFAULT_URL, token: TokenOption = None, as_json: JsonFlag = False
) -> None:
    """Cancel a job: a queued one at once, a running one at its next batch; nothing is released."""
    from connector.client import JobState

    with _remote(url, token) as client:
        job = client.cancel(job_id)
    if as_json:
        _print_json(job.to_json())
    elif job.state == JobState.CANCELLED:
        _say(f"job {job.id}: cancelled")
    elif job.state == JobState.RUNNING:
        _say(f"job {job.id}: cancellation requested; it stops at its next batch")
    else:
        _say(f"job {job.id} had already ended: {job.state}")


# --- teams ---------------------------------------------------------------------------------------


@teams_app.command("register-key")
def teams_register_key(
    team: Annotated[str, typer.Argument(help="The AI team's id, e.g. leuven-ai-lab.")],
    public_key_file: Annotated[Path, typer.Argument(help="The team's public key (PEM).", dir_okay=False)],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Register an AI team's package-signing public key on the connector (steward or DPO token)."""
    pem = _read_text(public_key_file, "public key")
    if "PRIVATE KEY" in pem:
        raise _fail(f"{public_key_file} holds a PRIVATE key: register the public one (team-public.pem)")
    with _remote(url, token) as client:
        info = client.register_team_key(team, pem)
    if as_json:
        _print_json(info)
        return
    _say(
        f"team {escape(str(info.get('team')))}: key {info.get('key_id')} ({info.get('algorithm')}) "
        f"registered by {escape(str(info.get('registered_by')))} at {info.get('registered_at')}"
    )


# --- model (offline) -----------------------------------------------------------------------------


def _package_problems(problems: list[str], what: str) -> NoReturn:
    _say(f"[red]{escape(what)} has problems:[/]")
    for problem in problems:
        _say(f"  - {escape(problem)}")
    raise typer.Exit(2)


@model_app.command("keygen")
def model_keygen(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for team-private.pem and team-public.pem.", file_okay=False)
    ],
    alg: Annotated[str, typer.Option("--alg", help="EdDSA (Ed25519) or ES256 (P-256).")] = "EdDSA",
    as_json: JsonFlag = False,
) -> None:
    """Make a team's signing key pair: the private key (mode 0600, never replaced) and the public one."""
    from connector.compute.package_signing import generate_team_key, key_id_of, parse_public_key
    from connector.crypto.keyfile import KeyFileError, write_private_file

    if alg not in ALGORITHMS:
        raise _fail(f"--alg must be one of {', '.join(ALGORITHMS)}")
    private_path, public_path = out_dir / "team-private.pem", out_dir / "team-public.pem"
    private_pem, public_pem = generate_team_key(alg)
    try:
        write_private_file(private_path, private_pem)
    except (KeyFileError, OSError) as exc:
        raise _fail(str(exc)) from None
    _write(public_path, public_pem, "public key")
    key_id = key_id_of(parse_public_key(public_pem))
    if as_json:
        _print_json(
            {"key_id": key_id, "algorithm": alg, "private": str(private_path), "public": str(public_path)}
        )
        return
    _say(f"{alg} key {key_id}: private key in {private_path} (keep it secret), public key in {public_path}")
    _say("have a data steward register the public key: connector teams register-key TEAM team-public.pem")


@model_app.command("manifest-schema")
def model_manifest_schema() -> None:
    """Print the JSON Schema of a package's manifest.json (what the connector accepts, field by field)."""
    from connector.compute.manifest import Manifest

    _print_json(Manifest.model_json_schema())


@model_app.command("manifest-example")
def model_manifest_example() -> None:
    """Print a complete manifest.json: the demo model's (connector/compute/demo_model.py), to edit."""
    # The demo's own builder, so the example is one the connector has accepted and run (it loads
    # torch for that: a moment, once).
    from connector.compute.demo_model import demo_manifest

    _print_json(demo_manifest().model_dump(mode="json", exclude_none=True))


@model_app.command("pack")
def model_pack(
    manifest_file: Annotated[Path, typer.Argument(help="The manifest (JSON).", dir_okay=False)],
    weights_file: Annotated[Path, typer.Argument(help="The weights (safetensors).", dir_okay=False)],
    out_zip: Annotated[Path, typer.Argument(help="The package to write.", dir_okay=False)],
    readme: Annotated[Path | None, typer.Option("--readme", help="A README.md to include.")] = None,
    license_file: Annotated[Path | None, typer.Option("--license", help="A LICENSE to include.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Build a model package (byte-identical for the same inputs), checked as the connector checks it."""
    from connector.compute.package import (
        PackageError,
        build_package,
        package_digest,
        parse_manifest,
        read_package,
    )

    try:
        manifest = parse_manifest(_read_bytes(manifest_file, "manifest"))
    except PackageError as exc:
        _package_problems(exc.problems, str(manifest_file))
    weights = _read_bytes(weights_file, "weights")
    readme_text = _read_text(readme, "README") if readme else ""
    license_text = _read_text(license_file, "LICENSE") if license_file else ""
    package = build_package(manifest, weights, readme=readme_text, license_text=license_text)
    try:
        read_package(package)
    except PackageError as exc:
        _package_problems(exc.problems, "the package")
    _write(out_zip, package, "package")
    digest = package_digest(package)
    if as_json:
        _print_json(
            {
                "package": str(out_zip),
                "model": f"{manifest.name}@{manifest.version}",
                "bytes": len(package),
                "sha256": digest,
            }
        )
        return
    _say(
        f"{escape(manifest.name)}@{escape(manifest.version)}: {out_zip} "
        f"({len(package)} bytes, sha256 {digest})"
    )


@model_app.command("sign")
def model_sign(
    package_file: Annotated[Path, typer.Argument(help="The model package (zip).", dir_okay=False)],
    key: Annotated[Path, typer.Option("--key", help="The team's private key (PEM).", dir_okay=False)],
    team: Annotated[str, typer.Option("--team", help="The team's id, as registered on the connector.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="The JWS file (default: PACKAGE with .jws).")
    ] = None,
    expires_in: Annotated[
        int | None, typer.Option("--expires-in", min=1, help="The signature expires after these seconds.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Sign a package as a team (a JWS over its sha256); the package is checked first."""
    import jwt

    from connector.compute.package import PackageError, package_digest, read_package
    from connector.compute.package_signing import KeyRegistryError, sign_package

    package = _read_bytes(package_file, "package")
    try:
        read_package(package)
    except PackageError as exc:
        _package_problems(exc.problems, str(package_file))
    private_pem = _read_bytes(key, "private key")
    try:
        token = sign_package(package, private_pem, team, expires_in=expires_in)
    except KeyRegistryError as exc:
        raise _fail(exc.detail) from None
    except (ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    target = out if out is not None else package_file.with_suffix(".jws")
    _write(target, token.encode("ascii") + b"\n", "signature")
    key_id = str(jwt.get_unverified_header(token).get("kid"))
    if as_json:
        _print_json(
            {"signature": str(target), "team": team, "key_id": key_id, "sha256": package_digest(package)}
        )
        return
    _say(f"{package_file} signed by team {escape(team)} with key {key_id}: {target}")
