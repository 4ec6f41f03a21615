"""The end-of-run summary a data steward reads: counts, quarantine reasons, pixel rules, the report.

It prints only what the report holds, so it can never show an original value.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from connector.deid.batch import RunSummary


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
    console.print(f"report: {summary.report_path}")
