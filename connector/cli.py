"""The `connector` command: every user group's entry point (typer).

Each command loads the settings once, reports a bad configuration or an unreachable database as
one readable line with a non-zero exit, and never prints a secret or a token it did not mint.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from connector import __version__

# Only typer, rich and the standard library load with the command tree, so that `--help` answers
# at once: settings, the database, crypto and every domain module are imported by the commands
# that use them (tests/test_cli_startup.py checks that no heavy library loads for --help).
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from connector.runtime import Runtime
    from connector.settings import Settings

app = typer.Typer(
    help="Secure data-space connector for cross-border medical imaging exchange.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the metadata database schema.", no_args_is_help=True)
token_app = typer.Typer(
    help="Development tokens from the embedded issuer (demo and tests only).", no_args_is_help=True
)
audit_app = typer.Typer(help="Read and verify the tamper-evident audit trail.", no_args_is_help=True)
datasets_app = typer.Typer(help="Encrypted datasets and their de-identified index.", no_args_is_help=True)
keys_app = typer.Typer(help="The key store: dataset keys, rotation.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.add_typer(datasets_app, name="datasets")
app.add_typer(keys_app, name="keys")


class CliConsole(Console):
    """The commands' stdout console, with `table()`: tables that never cut a value."""

    def table(self, table: Table) -> None:
        """Print `table` whole: dataset names, pseudonyms and ids are never cut with an ellipsis.
        On a terminal long cells fold within its width; piped or captured output (scripts, grep,
        logs) gets the table's full natural width, whatever COLUMNS says."""
        from rich.measure import Measurement

        for column in table.columns:
            column.overflow = "fold"
        if self.is_terminal:
            self.print(table)
            return
        natural = Measurement.get(self, self.options.update_width(_UNCUT_WIDTH), table).maximum
        Console(file=self.file, width=max(self.width, natural), no_color=self.no_color).print(table)


_UNCUT_WIDTH = 100_000  # "unlimited" for rich, which measures against a width

console = CliConsole()
errors = Console(stderr=True)


class CliState:
    config_file: Path | None = None


def _fail(message: str, code: int = 2) -> typer.Exit:
    # One line whatever the terminal width; the message is text, never markup (it may hold input).
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def dataset_name_option(value: Any) -> Any:
    """Typer callback for every option or argument naming a local dataset: the one name rule
    (connector.crypto.dataset_secrets), checked before anything opens, so a bad name such as
    `../../etc` is one line and exit 2, never a path outside the data directory or a traceback."""
    from connector.crypto.dataset_secrets import validate_dataset_name

    for name in value if isinstance(value, list | tuple) else [] if value is None else [value]:
        try:
            validate_dataset_name(name)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    return value


def settings() -> Settings:
    from connector.settings import SettingsError, load_settings

    try:
        return load_settings(CliState.config_file)
    except SettingsError as exc:
        raise _fail(str(exc)) from None


@contextmanager
def runtime_for(loaded: Settings) -> Iterator[Runtime]:
    """The assembled connector, with start-up failures turned into one readable line."""
    from connector.crypto.keyfile import KeyFileError
    from connector.crypto.keystore import KeyStoreError
    from connector.dataspace.trust import TrustListError
    from connector.db.engine import DatabaseUnavailable
    from connector.runtime import build_runtime

    try:
        runtime = build_runtime(loaded)
    except (DatabaseUnavailable, KeyFileError, KeyStoreError, TrustListError) as exc:
        raise _fail(str(exc)) from None
    try:
        yield runtime
    finally:
        runtime.close()


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def _version(value: bool) -> None:
    if value:
        console.print(f"imaging-connector {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (also CONNECTOR_CONFIG).", dir_okay=False),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    CliState.config_file = config


# uvicorn.run's exit status when the server could not start (uvicorn.main.STARTUP_FAILURE).
_UVICORN_STARTUP_FAILURE = 3


class _EmbeddedWorker:
    """`connector serve`'s job worker, built once the service answers: the job runner's imports
    (torch, MONAI: seconds of start-up) wait until /readyz is up instead of delaying it. Stopping
    before it was built builds nothing."""

    def __init__(self, runtime: Any, loaded: Settings, ready: Callable[[], bool]) -> None:
        self._stopping = threading.Event()
        self._worker: Any = None
        self._thread = threading.Thread(
            target=self._start_when_ready, args=(runtime, loaded, ready), name="job-worker-start", daemon=True
        )
        self._thread.start()

    def _start_when_ready(self, runtime: Any, loaded: Settings, ready: Callable[[], bool]) -> None:
        while not ready():
            if self._stopping.wait(0.05):
                return
        try:
            from connector.jobs.runner import Worker, sandbox_limits

            worker = Worker(runtime, sandbox_limits(loaded), loaded.worker_poll_seconds)
        except Exception:
            logging.getLogger("connector.jobs").exception("the embedded job worker could not start")
            return
        if not self._stopping.is_set():  # stop() joins this thread before it looks at _worker
            worker.start()
            self._worker = worker

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        if self._worker is not None:
            self._worker.stop()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: setting `host`).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: setting `port`).")] = None,
) -> None:
    """Start the API service (OpenAPI docs at /docs, probes at /healthz and /readyz)."""
    import uvicorn

    from connector.api.app import create_app
    from connector.observability.logging import configure_logging

    loaded = settings()
    configure_logging(loaded.log_level, loaded.log_format)
    with runtime_for(loaded) as runtime:
        runtime.audit.record(
            cli_actor(), "service.start", loaded.connector_id, "success", details={"version": __version__}
        )
        from connector.dataspace.housekeeping import Housekeeper

        housekeeper = Housekeeper(runtime)
        housekeeper.start()
        from connector.audit.timer import AuditCheckpointer

        # Signs a moved head every audit_checkpoint_seconds even when nothing is recorded.
        audit_timer = AuditCheckpointer(runtime.audit, loaded.audit_checkpoint_seconds)
        audit_timer.start()
        config = uvicorn.Config(
            create_app(runtime), host=host or loaded.host, port=port or loaded.port, log_config=None
        )
        server = uvicorn.Server(config)
        worker = _EmbeddedWorker(runtime, loaded, lambda: server.started) if loaded.embedded_worker else None
        try:
            # What uvicorn.run does for one process, with the server at hand for the worker's start.
            with suppress(KeyboardInterrupt):
                server.run()
            if not server.started:
                sys.exit(_UVICORN_STARTUP_FAILURE)
        finally:
            housekeeper.stop()
            if worker is not None:
                worker.stop()
            audit_timer.stop()  # last: it signs whatever the others recorded while stopping


@app.command()
def worker() -> None:
    """Run compute-to-data jobs from the shared queue until interrupted (one per GPU or node)."""
    from connector.jobs.runner import Worker, sandbox_limits
    from connector.observability.logging import configure_logging

    loaded = settings()
    configure_logging(loaded.log_level, loaded.log_format)
    with runtime_for(loaded) as runtime:
        from connector.jobs.executors import executor_for

        limits = sandbox_limits(loaded)
        running = Worker(runtime, limits, loaded.worker_poll_seconds, executor_for(runtime, limits))
        console.print(
            f"worker {running.name} takes jobs ({running.executor.name} executor, device "
            f"{running.limits.device}); Ctrl-C stops it"
        )
        try:
            running.serve(on_job=lambda job_id, state: console.print(f"job {job_id}: {state}"))
        except KeyboardInterrupt:
            console.print("worker stopped")
        finally:
            running.executor.close()


@app.command("verify-result")
def verify_result_command(
    file: Annotated[Path, typer.Argument(help="A result as downloaded (a JWS).")],
    public_key: Annotated[
        Path | None,
        typer.Option(help="The connector's JWKS or JWK file (default: this connector's own key)."),
    ] = None,
) -> None:
    """Check that a job result was signed by the connector and not altered; print what it says."""
    from connector.jobs.results import ResultError, verify_result

    token = file.read_text(encoding="utf-8").strip()
    if public_key is not None:
        try:
            document = json.loads(public_key.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read the key file {public_key}: {exc}") from None
        jwk = document["keys"][0] if isinstance(document, dict) and "keys" in document else document
    else:
        with runtime_for(settings()) as runtime:
            jwk = runtime.signing_key.public_jwk
    try:
        body = verify_result(token, jwk)
    except ResultError as exc:
        console.print(f"[red]NOT VERIFIED[/red]: {exc}")
        raise typer.Exit(1) from None
    console.print(f"verified: job {body.get('job')} on {body.get('dataset')}, model {body.get('model')}")
    console.print_json(data=body)


@config_app.command("show")
def config_show(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the effective settings with secrets masked."""
    data = settings().masked()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table("setting", "value", title="Effective settings")
    for key, value in data.items():
        table.add_row(key, json.dumps(value) if isinstance(value, list | dict) else str(value))
    console.table(table)


def _reachable_engine(loaded: Settings) -> Engine:
    """An engine for the configured database, or a one-line error when it cannot be reached."""
    from connector.db.engine import DatabaseUnavailable, check_database, make_engine

    engine = make_engine(loaded.effective_database_url)
    try:
        check_database(engine)
    except DatabaseUnavailable as exc:
        raise _fail(str(exc)) from None
    return engine


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all pending migrations."""
    from connector.db.engine import safe_url
    from connector.db.migrate import current_revision, upgrade

    loaded = settings()
    engine = _reachable_engine(loaded)
    upgrade(engine)
    console.print(
        f"database {safe_url(loaded.effective_database_url)} at revision {current_revision(engine)}"
    )


@db_app.command("status")
def db_status() -> None:
    """Show the schema revision of the database and the one this connector needs."""
    from connector.db.engine import safe_url
    from connector.db.migrate import current_revision, head_revision

    loaded = settings()
    engine = _reachable_engine(loaded)
    current, head = current_revision(engine), head_revision()
    console.print(f"database {safe_url(loaded.effective_database_url)}: revision {current}, needed {head}")
    if current != head:
        raise typer.Exit(1)


@token_app.command("issue")
def token_issue(
    role: Annotated[
        list[str], typer.Option("--role", "-r", help="steward, dpo, researcher, hdab or peer (repeatable).")
    ],
    sub: Annotated[str, typer.Option("--sub", help="The subject (user or system id).")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.", min=60, max=86400)] = 3600,
    org: Annotated[str | None, typer.Option(help="The subject's organisation.")] = None,
    country: Annotated[str | None, typer.Option(help="ISO 3166-1 alpha-2 country of the subject.")] = None,
) -> None:
    """Mint a token from the embedded development issuer and print it on stdout."""
    loaded = settings()
    if not loaded.dev_issuer_enabled:
        raise _fail("the development issuer is disabled (dev_issuer_enabled = false)")
    with runtime_for(loaded) as runtime:
        assert runtime.dev_issuer is not None  # dev_issuer_enabled, checked above, builds it
        try:
            token = runtime.dev_issuer.issue(sub, role, ttl_seconds=ttl, organisation=org, country=country)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        runtime.audit.record(
            cli_actor(), "token.issue", sub, "success", details={"roles": sorted(role), "ttl": ttl}
        )
    print(token)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (
        (value if value.tzinfo else value.replace(tzinfo=UTC))
        .astimezone(UTC)
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain, the signed checkpoints and the heads kept outside the database."""
    with runtime_for(settings()) as runtime:
        result = runtime.audit.verify()
    for warning in result.warnings:
        errors.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if result.ok:
        console.print(
            f"[green]audit trail intact[/]: {result.entries_checked} entries, "
            f"{result.checkpoints_checked} signed checkpoints, {result.heads_checked} outside heads, "
            f"head at {result.last_seq}"
        )
        return
    more = f" (+{len(result.problems) - 1} more problems)" if len(result.problems) > 1 else ""
    raise _fail(
        f"audit trail TAMPERED at entry {result.first_bad_seq}: {result.code}: {result.problem}{more}", code=1
    )


@audit_app.command("show")
def audit_show(
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, or a prefix ending in '*'.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (UTC unless given).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List audit entries, filtered by actor, action and time."""
    with runtime_for(settings()) as runtime:
        records = runtime.audit.query(actor, action, _iso(since), _iso(until), limit=limit)
    if as_json:
        for record in records:
            print(json.dumps(record.as_json(), ensure_ascii=False))
        return
    table = Table("seq", "time (UTC)", "actor", "action", "object", "outcome", "reasons", title="Audit trail")
    for record in records:
        table.add_row(
            str(record.seq),
            record.ts[:19],
            record.actor,
            record.action,
            record.object,
            record.outcome,
            "; ".join(json.loads(record.reasons)),
        )
    console.table(table)


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Argument(help="JSON-lines file to write ('-' for stdout).")],
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, or a prefix ending in '*'.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time.")] = None,
) -> None:
    """Export entries as JSON lines (with their hashes, so a copy can be checked later)."""
    with runtime_for(settings()) as runtime:
        runtime.audit.record(cli_actor(), "audit.export", "audit", "success")
        handle = sys.stdout if str(out) == "-" else out.open("w", encoding="utf-8")
        count = 0
        try:
            for record in runtime.audit.iter_entries(actor, action, _iso(since), _iso(until)):
                handle.write(json.dumps(record.as_json(), ensure_ascii=False) + "\n")
                count += 1
        finally:
            if handle is not sys.stdout:
                handle.close()
    if str(out) != "-":
        console.print(f"{count} entries written to {out}")


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the current head of the chain with the connector's key now."""
    with runtime_for(settings()) as runtime:
        signed = runtime.audit.checkpoint()
    console.print("audit trail is empty" if signed is None else f"checkpoint signed at entry {signed[0]}")


@app.command()
def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write the synthetic identified cohort into.", file_okay=False)
    ],
    patients: Annotated[int, typer.Option(min=1, max=100_000, help="Number of patients.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
) -> None:
    """Write realistic synthetic identified DICOM studies (CT, MR, CR/DX, MG, US, SC, SR) for tests."""
    from connector.synth import count_files, generate_cohort

    with _progress() as progress:
        task = progress.add_task("synthesising", total=count_files(patients))
        summary = generate_cohort(out_dir, patients, seed=seed, progress=lambda n: progress.advance(task, n))
    console.print(
        f"{summary.files} files, {summary.studies} studies, {summary.series} series "
        f"of {summary.patients} patients "
        f"({summary.bytes / 1e6:.1f} MB) in {summary.out_dir}; planted PHI listed in {summary.manifest}"
    )


def _deid_options(option: list[str] | None, in_dir: Path) -> tuple[str, ...]:
    """The profile options a de-identifying command asked for: `-o` adds to the defaults, 'none'
    drops them (connector.deid.options.requested_options)."""
    from connector.deid.options import requested_options

    if not in_dir.is_dir():
        raise _fail(f"input folder {in_dir} does not exist")
    return requested_options(option)


@app.command()
def deid(
    in_dir: Annotated[
        Path, typer.Argument(help="Folder of identified DICOM files (read recursively).", file_okay=False)
    ],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the de-identified files and deid-report.json.")],
    profile: Annotated[str, typer.Option(help="The confidentiality profile (PS3.15 Annex E).")] = "basic",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="A profile option added to the defaults (repeatable), e.g. retain-uids; 'none' drops the "
            "defaults ('-o none' is the basic profile alone, '-o none -o X' is X alone). Defaults: "
            "clean-descriptors, clean-structured-content, clean-pixel-data, "
            "retain-longitudinal-modified-dates (full-dates replaces it), retain-patient-characteristics.",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="The dataset whose secret keys pseudonyms and UIDs (required: the same name gives the "
            "same pseudonyms, another name unlinkable ones).",
            callback=dataset_name_option,
        ),
    ] = None,
    quarantine: Annotated[
        Path | None, typer.Option(help="Where refused originals go (default: <data_dir>/quarantine).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: one per core).")
    ] = None,
) -> None:
    """De-identify every DICOM file under IN_DIR into OUT_DIR (PS3.15 Annex E, verified, reported)."""

    from connector.crypto.dataset_secrets import load_or_create_dataset_secret
    from connector.crypto.keyfile import KeyFileError
    from connector.deid.batch import run_batch
    from connector.deid.keys import DatasetKeys
    from connector.deid.options import UnknownOption
    from connector.deid.recipes import RecipeError, compile_recipes
    from connector.deid.summary import render_summary

    if profile != "basic":
        raise _fail(f"unknown profile {profile!r}; the connector implements 'basic' and its options")
    chosen = _deid_options(option, in_dir)
    loaded = settings()
    try:
        plan = compile_recipes(chosen, recipes_dir=loaded.deid_recipes_dir)
    except (RecipeError, UnknownOption, ValueError) as exc:
        raise _fail(str(exc)) from None
    if dataset is None:
        # No silent shared secret: pseudonyms keyed by a "default" dataset would link every such run.
        raise _fail(
            "choose the dataset whose secret keys the pseudonyms and UIDs: --dataset NAME "
            "(the same name gives the same pseudonyms in later runs and ingests)"
        )
    try:
        secret = load_or_create_dataset_secret(loaded.keys_dir, dataset)
    except (ValueError, KeyFileError) as exc:
        raise _fail(str(exc)) from None
    with (
        runtime_for(loaded) as runtime,
        _progress() as progress,
    ):
        task = progress.add_task("de-identifying", total=None)
        try:
            summary = run_batch(
                in_dir,
                out_dir,
                plan,
                DatasetKeys(secret),
                quarantine or loaded.data_dir / "quarantine",
                dataset,
                workers=workers,
                progress=lambda n: progress.advance(task, n),
                on_total=lambda total: progress.update(task, total=total),
            )
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from None
        runtime.audit.record(
            cli_actor(),
            "deid.run",
            dataset,
            "success",
            details={
                "written": summary.written,
                "quarantined": summary.quarantined,
                "skipped": summary.skipped,
                "options": list(plan.options),
                "run_id": summary.report["run_id"],
            },
        )
    render_summary(console, summary)


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
    )


@app.command()
def ingest(
    in_dir: Annotated[
        Path, typer.Argument(help="Folder of identified DICOM files (read recursively).", file_okay=False)
    ],
    dataset: Annotated[
        str,
        typer.Option(
            help="The dataset to add the studies to (created on first use).", callback=dataset_name_option
        ),
    ],
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", "-o", help="Profile options as for `connector deid` (a dataset keeps its options)."
        ),
    ] = None,
    quarantine: Annotated[Path | None, typer.Option(help="Where refused originals go.")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: one per core).")
    ] = None,
) -> None:
    """De-identify, verify, encrypt, store and index a folder into an encrypted dataset (resumable)."""
    from connector.crypto.keystore import KeyStoreError
    from connector.datasets.ingest import DatasetConflict
    from connector.datasets.use_cases import ingest_dataset
    from connector.datasets.vault import ObjectIntegrityError
    from connector.deid.options import UnknownOption
    from connector.deid.recipes import RecipeError
    from connector.deid.summary import render_summary
    from connector.storage.objects import ObjectStoreError

    chosen = _deid_options(option, in_dir)
    with runtime_for(settings()) as runtime, _progress() as progress:
        task = progress.add_task("ingesting", total=None)
        try:
            ingested = ingest_dataset(
                runtime,
                in_dir,
                dataset,
                chosen,
                actor=cli_actor(),
                quarantine_dir=quarantine,
                workers=workers,
                progress=lambda n: progress.advance(task, n),
                on_total=lambda total: progress.update(task, total=total),
            )
        except (
            DatasetConflict,
            RecipeError,
            UnknownOption,
            ValueError,
            ObjectStoreError,
            ObjectIntegrityError,
            KeyStoreError,
        ) as exc:
            raise _fail(str(exc)) from None
    _print_catalog_refresh(ingested.catalog)
    summary = ingested.summary
    render_summary(console, summary.deid)
    console.print(
        f"dataset {dataset}: {summary.stored} objects encrypted and stored, {summary.already_stored} already "
        f"stored; {summary.studies} studies; "
        f"{summary.plain_bytes / 1e6:.1f} MB -> {summary.stored_bytes / 1e6:.1f} MB"
    )
    if summary.refused:
        console.print(
            f"refused: patient was erased: {summary.refused_patients} patient(s), {summary.refused} objects, "
            "nothing stored (`connector consent refused`; lift with `connector consent readmit`)"
        )


@datasets_app.command("list")
def datasets_list() -> None:
    """The encrypted datasets with their study, object and byte counts."""
    from connector.datasets.catalog import dataset_summaries

    with runtime_for(settings()) as runtime:
        rows = dataset_summaries(runtime)
    table = Table(
        "dataset", "created", "options", "store", "patients", "studies", "objects", "MB", title="Datasets"
    )
    for row in rows:
        table.add_row(
            row.name,
            row.created_at,
            ", ".join(row.options),
            row.store,
            str(row.patients),
            str(row.studies),
            str(row.objects),
            f"{row.plain_bytes / 1e6:.1f}",
        )
    console.table(table)


@datasets_app.command("show")
def datasets_show(
    name: Annotated[str, typer.Argument(help="The dataset.", callback=dataset_name_option)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One dataset's de-identified cohort index: counts by modality, body part, sex, age band, year."""
    from connector.datasets.catalog import dataset_detail

    with runtime_for(settings()) as runtime:
        try:
            detail = dataset_detail(runtime, name)
        except LookupError as exc:
            raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(detail, indent=2))
        return
    console.print(
        f"[bold]{name}[/]: {detail['studies']} studies, {detail['objects']} objects of {detail['patients']} "
        f"patients, options: {', '.join(detail['options'])}"
    )
    for facet in ("modality", "body_part", "sex", "age_band", "study_year", "manufacturer"):
        console.print(f"  {facet}: " + ", ".join(f"{k or '?'} {v}" for k, v in detail["by"][facet].items()))


@app.command()
def export(
    dataset: Annotated[str, typer.Argument(help="The dataset to decrypt.", callback=dataset_name_option)],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the de-identified files.")],
) -> None:
    """Decrypt a dataset back to its exact de-identified files (data stewards; audited)."""
    from connector.datasets.use_cases import EXPORT_ERRORS, export_dataset_audited

    with runtime_for(settings()) as runtime, _progress() as progress:
        task = progress.add_task("decrypting", total=None)
        try:
            count = export_dataset_audited(
                runtime, dataset, out_dir, actor=cli_actor(), progress=lambda n: progress.advance(task, n)
            )
        except EXPORT_ERRORS as exc:
            raise _fail(str(exc)) from None
    console.print(f"{count} objects of {dataset} decrypted into {out_dir}")


def _print_catalog_refresh(outcomes: Iterable[Any]) -> None:
    """After data changed, the dataset's public record (and its remote copies) followed: say how."""
    for outcome in outcomes:
        state = "updated" if outcome.ok else f"NOT updated: {outcome.error}"
        console.print(f"catalog record at {outcome.remote}: {state}")


@app.command()
def shred(
    dataset: Annotated[str, typer.Option(help="The dataset.", callback=dataset_name_option)],
    patient: Annotated[str | None, typer.Option(help="Shred this patient (pseudonym).")] = None,
    study: Annotated[
        str | None, typer.Option(help="Shred this study (de-identified Study Instance UID).")
    ] = None,
    whole: Annotated[bool, typer.Option("--all", help="Shred the whole dataset.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation (scripts).")] = False,
) -> None:
    """Crypto-shred a patient, a study or a whole dataset: keys destroyed, objects deleted, audited."""
    from connector.crypto.keystore import KeyStoreError
    from connector.datasets.use_cases import shred_dataset, shred_target

    if sum(bool(x) for x in (patient, study, whole)) != 1:
        raise _fail("choose exactly one of --patient, --study or --all")
    target = shred_target(patient, study)
    if not yes and not typer.confirm(f"Irreversibly shred {target} of dataset {dataset}?", default=False):
        raise _fail("nothing shredded", code=1)
    with runtime_for(settings()) as runtime:
        try:
            shredded = shred_dataset(runtime, dataset, actor=cli_actor(), patient=patient, study=study)
        except (LookupError, KeyStoreError) as exc:
            raise _fail(str(exc)) from None
    _print_catalog_refresh(shredded.catalog)
    result = shredded.result
    console.print(
        f"shredded {target}: {result.studies} studies, {result.objects} objects; "
        + (f"dataset key rotated to {result.new_key_id}" if result.new_key_id else "dataset keys destroyed")
    )


@keys_app.command("status")
def keys_status() -> None:
    """Key-encryption keys per dataset: current version, versions kept, destroyed datasets."""
    from connector.crypto.keystore import KeyStoreError

    with runtime_for(settings()) as runtime:
        try:
            rows = runtime.keys.status()
        except KeyStoreError as exc:
            raise _fail(str(exc)) from None
    table = Table("dataset", "current key", "versions", "created", "destroyed", title="Key store")
    for row in rows:
        table.add_row(
            row.dataset,
            row.current_key_id or "-",
            ", ".join(row.key_ids),
            str(row.created),
            str(row.destroyed),
        )
    console.table(table)


@keys_app.command("rotate")
def keys_rotate(
    dataset: Annotated[
        str, typer.Argument(help="The dataset whose key to rotate.", callback=dataset_name_option)
    ],
) -> None:
    """New key-encryption key; every study key re-wrapped (no data re-encrypted); old versions retired."""
    from connector.crypto.keystore import KeyStoreError
    from connector.datasets.use_cases import rotate_key

    with runtime_for(settings()) as runtime:
        try:
            new_key = rotate_key(runtime, dataset, actor=cli_actor())
        except KeyStoreError as exc:
            raise _fail(str(exc)) from None
    console.print(f"dataset {dataset}: key rotated to {new_key}; study keys re-wrapped")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Folder for the demo's own data (wiped at start).")] = Path(
        "demo-data"
    ),
    patients: Annotated[int, typer.Option(min=1, max=1000, help="Patients in the synthetic cohort.")] = 4,
) -> None:
    """Run the end-to-end demo on embedded defaults (no server to install)."""
    from connector.crypto.keyfile import KeyFileError
    from connector.crypto.keystore import KeyStoreError
    from connector.db.engine import DatabaseUnavailable
    from connector.demo import run_demo
    from connector.settings import SettingsError

    try:
        run_demo(data_dir.absolute(), patients, console)
    except (SettingsError, DatabaseUnavailable, KeyFileError, KeyStoreError, RuntimeError) as exc:
        raise _fail(str(exc)) from None


def _register_subcommands() -> None:
    # The DPO's command groups live in their own module, which imports this one's helpers.
    from connector.cli_catalog import register as register_catalog
    from connector.cli_dataspace import register as register_dataspace
    from connector.cli_jobs import register as register_jobs
    from connector.cli_policy import register as register_policy

    register_policy(app)
    register_catalog(app)
    register_jobs(app)
    register_dataspace(app)


_register_subcommands()


# Commands that run for long and make policy decisions all along: they start with the embedded
# engine's Go runtime settings (see connector.policy.engine), restarting themselves once if needed.
LONG_RUNNING = frozenset({"serve", "worker"})


def command_name(argv: list[str]) -> str | None:
    """The subcommand `argv` (without the program) runs, after the main options; None if none."""
    rest = iter(argv)
    for word in rest:
        if word in ("--config", "-c"):
            next(rest, None)
        elif not word.startswith("-"):
            return word
    return None


def main() -> None:
    if command_name(sys.argv[1:]) in LONG_RUNNING:
        from connector.policy.engine import restart_with_go_runtime_settings

        restart_with_go_runtime_settings()
    app()
