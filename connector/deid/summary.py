"""The end-of-run summary a data steward reads: counts, quarantine reasons, pixel rules, the report.

It prints what the report holds and, for the terminal of whoever ran the batch, the paths of
skipped inputs (relative to the input folder) and the folder of quarantined originals; it never
shows an attribute value of an original.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from connector.deid.batch import RunSummary

_PATHS_SHOWN = 50  # skipped inputs listed by path: a folder of many non-DICOM files stays readable


def render_summary(console: Console, summary: RunSummary) -> None:
    report = summary.report
    console.print(
        f"[bold]{summary.written}[/] de-identified, [bold]{summary.quarantined}[/] quarantined, "
        f"{summary.skipped} skipped of {report['inputs']} files in {report['seconds']:.1f} s "
        f"(profile {report['profile']}; options: {', '.join(report['options']) or 'none'})"
    )
    reasons = dict(report["quarantine_reasons"])
    for item in report["skipped"]:
        reasons[f"skipped: {item['reason_code']}"] = reasons.get(f"skipped: {item['reason_code']}", 0) + 1
    if reasons:
        table = Table("reason", "files", title="Quarantined for review, or skipped")
        for reason, count in sorted(reasons.items()):
            table.add_row(reason, str(count))
        console.print(table)
    for rule, count in report["pixel_rules_applied"].items():
        console.print(f"burned-in text cleaned in {count} instance(s): {rule}")
    # Paths go to this terminal only (the report names inputs by opaque ids): the steward who ran
    # the batch must find the files again, inside the hospital.
    for relative, code in summary.skipped_paths[:_PATHS_SHOWN]:
        console.print(f"skipped ({code}): {relative}", highlight=False, markup=False, soft_wrap=True)
    if len(summary.skipped_paths) > _PATHS_SHOWN:
        console.print(f"... and {len(summary.skipped_paths) - _PATHS_SHOWN} more skipped", highlight=False)
    if summary.quarantine_folder is not None:
        console.print(
            f"quarantined originals: {summary.quarantine_folder} "
            "(index.jsonl there maps each id to its original path)",
            highlight=False,
            markup=False,
            soft_wrap=True,  # a path cut across lines cannot be copied
        )
    console.print(f"report: {summary.report_path}", highlight=False, markup=False, soft_wrap=True)
