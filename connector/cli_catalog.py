"""The data steward's catalog commands: `catalog describe|show|validate|export|publications` and
`publish DATASET [--to NAME] [--withdraw]` (registered by connector.cli).

An invalid description or record is refused with every problem listed (exit 2) and nothing is
stored or sent; a push that a remote refuses is reported with the remote's answer (exit 1).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from connector.cli import _fail, cli_actor, console, dataset_name_option, runtime_for, settings

# rdflib, pyshacl and the catalog service load inside the commands that use them, never for --help.
if TYPE_CHECKING:
    from catalog.render import Format
    from connector.cataloging.service import CatalogRefused, PushReport

catalog_app = typer.Typer(
    help="The HealthDCAT-AP catalog: describe datasets, check and export their records.",
    no_args_is_help=True,
)
FormatOption = Annotated[str, typer.Option("--format", help="turtle, jsonld or rdfxml.")]
FORMATS: tuple[Format, ...] = ("turtle", "jsonld", "rdfxml")


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
    app.command("publish")(publish)


def _fmt(value: str) -> Format:
    for known in FORMATS:
        if value == known:
            return known
    raise _fail(f"--format must be one of {', '.join(FORMATS)}")


def _refused(exc: CatalogRefused) -> typer.Exit:
    console.print(f"[red]refused:[/red] {str(exc).splitlines()[0]}")
    for problem in exc.problems:
        console.print(f"  - {problem}")
    return typer.Exit(2)


@catalog_app.command("describe")
def describe(
    dataset: Annotated[str, typer.Argument(help="The dataset.", callback=dataset_name_option)],
    file: Annotated[Path, typer.Argument(help="The steward's TOML description (see catalog/examples/).")],
) -> None:
    """Set a dataset's descriptive fields from a TOML file (validated; a published record updates)."""
    from catalog.steward_file import StewardFileError, load_steward_fields
    from connector.cataloging import service
    from connector.cataloging.service import CatalogRefused, UnknownEntry

    try:
        fields = load_steward_fields(file.read_text(encoding="utf-8"), source=str(file))
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from None
    except StewardFileError as exc:
        console.print(f"[red]{file} has problems:[/red]")
        for problem in exc.problems:
            console.print(f"  - {problem}")
        raise typer.Exit(2) from None
    with runtime_for(settings()) as runtime:
        try:
            view = service.set_description(runtime, dataset, fields, cli_actor())
        except CatalogRefused as exc:
            raise _refused(exc) from None
        except UnknownEntry as exc:
            raise _fail(str(exc)) from None
    console.print(f"{dataset}: description stored ({view.status}, version {view.version})")
    for warning in view.warnings:
        console.print(f"  [yellow]recommended:[/yellow] {warning}")


@catalog_app.command("show")
def show(
    dataset: Annotated[str, typer.Argument(help="The dataset.", callback=dataset_name_option)],
    format: FormatOption = "turtle",
) -> None:
    """Print a dataset's record: as published, or a preview of a draft."""
    fmt = _fmt(format)
    from catalog.render import render_description, render_stored
    from connector.cataloging import service
    from connector.cataloging.service import CatalogRefused, UnknownEntry

    with runtime_for(settings()) as runtime:
        try:
            sys.stdout.write(render_stored(service.stored_record(runtime, dataset), fmt))
            return
        except UnknownEntry:
            pass
        try:
            fields = service.steward_fields_of(runtime, dataset)
            now = datetime.now(UTC).replace(microsecond=0)
            description = service.describe_record(
                runtime, dataset, fields, status="active", version=1, issued=now, modified=now
            )
        except (UnknownEntry, CatalogRefused) as exc:
            raise _fail(str(exc)) from None
    console.print(f"[yellow]{dataset} is not published: a preview of its record[/yellow]", highlight=False)
    sys.stdout.write(render_description(description, fmt))


@catalog_app.command("validate")
def validate_command(
    dataset: Annotated[str, typer.Argument(help="The dataset.", callback=dataset_name_option)],
) -> None:
    """Check the record a dataset would publish now; exit 1 on any violation."""
    from catalog.validate import validate
    from connector.cataloging import service
    from connector.cataloging.service import CatalogRefused, UnknownEntry

    with runtime_for(settings()) as runtime:
        try:
            fields = service.steward_fields_of(runtime, dataset)
            now = datetime.now(UTC).replace(microsecond=0)
            description = service.describe_record(
                runtime, dataset, fields, status="active", version=1, issued=now, modified=now
            )
        except (UnknownEntry, CatalogRefused) as exc:
            raise _fail(str(exc)) from None
    report = validate(description)
    for problem in report.violations:
        console.print(f"[red]violation[/red] {problem.field}: {problem.message}")
    for problem in report.warnings:
        console.print(f"[yellow]recommended[/yellow] {problem.field}: {problem.message}")
    if report.violations:
        raise typer.Exit(1)
    console.print(f"{dataset}: the record is valid HealthDCAT-AP ({len(report.warnings)} recommendations)")


@catalog_app.command("export")
def export_catalog(
    format: FormatOption = "turtle",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of standard output.")] = None,
) -> None:
    """The whole public catalog (every published and withdrawn record) as one document."""
    from connector.cataloging.listing import whole_catalog

    fmt = _fmt(format)
    with runtime_for(settings()) as runtime:
        document = whole_catalog(runtime, fmt)
    if out is None:
        sys.stdout.write(document)
    else:
        out.write_text(document, encoding="utf-8")
        console.print(f"catalog written to {out}")


@catalog_app.command("publications")
def publications_command(
    dataset: Annotated[
        str | None, typer.Option(help="Only this dataset.", callback=dataset_name_option)
    ] = None,
) -> None:
    """Pushes to remote catalogs, newest first, with each remote's answer."""
    from connector.cataloging import service

    with runtime_for(settings()) as runtime:
        rows = service.publications(runtime, dataset)
    table = Table("at", "dataset", "target", "action", "version", "result", "answer / error")
    for row in rows:
        result = f"ok ({row.status_code})" if row.ok else f"failed ({row.status_code or '-'})"
        table.add_row(
            row.at,
            row.dataset,
            row.target,
            row.action,
            str(row.version),
            result,
            (row.error or row.answer)[:80],
        )
    console.table(table)


def _print_report(dataset: str, report: PushReport) -> None:
    entry = report.entry
    console.print(f"{dataset}: {entry.status} in this catalog, version {entry.version} ({entry.modified})")
    for warning in entry.warnings:
        console.print(f"  [yellow]recommended:[/yellow] {warning}")
    for outcome in report.outcomes:
        if outcome.ok:
            console.print(f"  {outcome.remote}: {outcome.action} accepted (HTTP {outcome.status_code})")
        else:
            console.print(f"  [red]{outcome.remote}: {outcome.error}[/red]")


def publish(
    dataset: Annotated[str, typer.Argument(help="The dataset.", callback=dataset_name_option)],
    to: Annotated[
        list[str] | None, typer.Option("--to", help="A remote catalog (setting catalog_targets); repeatable.")
    ] = None,
    withdraw: Annotated[
        bool, typer.Option("--withdraw", help="Withdraw the record here and at every remote holding it.")
    ] = False,
) -> None:
    """Publish a dataset's record in this catalog and push it to remote catalogs (or withdraw it)."""
    from connector.cataloging import service
    from connector.cataloging.service import CatalogRefused, UnknownEntry

    with runtime_for(settings()) as runtime:
        try:
            if withdraw:
                if to:
                    raise _fail("--withdraw reaches every remote that holds the record; leave out --to")
                report = service.withdraw_dataset(runtime, dataset, cli_actor())
            else:
                report = service.publish_dataset(runtime, dataset, to or [], cli_actor())
        except CatalogRefused as exc:
            raise _refused(exc) from None
        except UnknownEntry as exc:
            raise _fail(str(exc)) from None
    _print_report(dataset, report)
    if not report.ok:
        raise typer.Exit(1)
