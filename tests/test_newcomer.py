"""The first hour of a newcomer (issue 15): what the README promises works as written.

Shipped policy examples decide as their names say, a malformed request is bad input (exit 2) and
not a denial, a researcher finds the manifest's schema and an example, deid names the files it
skipped and where quarantined originals went and needs a dataset, `-o` adds to the defaults,
tables never cut a value, peer titles are plain text, logs suit where they go, `policy rollback v2`
works, `permit issue` prints the id and `permit revoke` refuses an id it never saw (unless --force).
Real components throughout: the CLI in process, the database, the embedded OPA, the sandbox.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.table import Table
from typer.testing import CliRunner

from connector.cli import CliConsole, app
from connector.cli_dataspace import plain_text, plain_texts
from connector.deid.options import DEFAULT_OPTIONS, UnknownOption, requested_options, resolve_options
from connector.observability.logging import resolved_format
from connector.policy.bundle import default_policies_dir
from connector.runtime import build_runtime
from connector.settings import load_settings
from tests.deid_helpers import ct_instance
from tests.policy_fixtures import access_request, add_dataset, permit_for

EXAMPLES_DIR = default_policies_dir() / "examples"
EXAMPLES = sorted(path for path in EXAMPLES_DIR.glob("*.json") if path.name != "state.json")


def _cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    # COLUMNS=80: what a captured or piped run used to be cut at.
    env = {"CONNECTOR_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "80"}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


# --- policy decide on the shipped examples -------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_every_shipped_example_decides_as_its_name_says(tmp_path: Path, example: Path) -> None:
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(example), "--json")
    decision = json.loads(output)
    verdict = example.stem.split("-")[1]  # access-denied-..., release-allowed-..., api-allowed
    assert verdict in ("allowed", "denied"), "an example's name says allowed or denied"
    allowed = verdict == "allowed"
    assert decision["allow"] is allowed, decision["reasons"]
    assert code == (0 if allowed else 1)
    assert decision["example"]["expected_allow"] is allowed


def test_an_example_reads_as_a_person_expects(tmp_path: Path) -> None:
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(EXAMPLES_DIR / "access-allowed.json"))
    assert code == 0 and "ALLOW" in output and "as the example expects (allow)" in output
    assert "cohort of 42 patients meets the minimum of 5" in output
    code, output = _cli(
        tmp_path, "policy", "decide", "--input", str(EXAMPLES_DIR / "access-denied-revoked-permit.json")
    )
    assert code == 1 and "DENY" in output and "as the example expects (deny)" in output


def test_a_request_in_the_wrong_format_is_bad_input_not_a_denial(tmp_path: Path) -> None:
    # The example's prepared input (permit_check instead of permit) is not a request a caller sends.
    prepared = json.loads((EXAMPLES_DIR / "access-allowed.json").read_text())["input"]
    request = tmp_path / "prepared.json"
    request.write_text(json.dumps(prepared))
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(request))
    assert code == 2 and "DENY" not in output
    assert "does not match the access-request format" in output and "permit_check: unknown field" in output
    assert len(output.strip().splitlines()) == 1
    request.write_text(json.dumps({"dataset": "demo-cohort"}))
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(request))
    assert code == 2 and '"action" must be access, release or api' in output
    # A well-formed request is still decided (and denied with reasons) by the active policy.
    request.write_text(json.dumps(access_request(permit=None)))
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(request))
    assert code == 1 and "DENY" in output


# --- the model manifest ----------------------------------------------------------------------------


def test_a_researcher_gets_the_manifest_schema_and_a_valid_example(tmp_path: Path) -> None:
    from connector.compute.demo_model import demo_manifest
    from connector.compute.package import parse_manifest

    code, output = _cli(tmp_path, "model", "manifest-schema")
    schema = json.loads(output)
    assert code == 0 and schema["title"] == "Manifest"
    assert {"name", "framework", "network", "input", "output", "weights"} <= set(schema["properties"])
    code, output = _cli(tmp_path, "model", "manifest-example")
    assert code == 0
    assert parse_manifest(output.encode()) == demo_manifest()  # accepted as the connector reads it


# --- deid and ingest ---------------------------------------------------------------------------------


def test_deid_names_skipped_files_and_the_quarantine_folder(tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    ct_instance(incoming / "good" / "a.dcm")
    (incoming / "notes").mkdir()
    (incoming / "notes" / "README.txt").write_text("not a dicom file")
    shutil.copy(incoming / "good" / "a.dcm", incoming / "copy-of-a.dcm")
    ct_instance(incoming / "no-sop.dcm", SOPInstanceUID=None)
    quarantine = tmp_path / "quarantine"
    out = str(tmp_path / "out")
    code, output = _cli(
        tmp_path, "deid", str(incoming), out, "--dataset", "t1", "--quarantine", str(quarantine)
    )
    assert code == 0, output
    assert "skipped (not_dicom): notes/README.txt" in output
    assert "skipped (duplicate_instance): good/a.dcm" in output or "copy-of-a.dcm" in output
    run_folder = next(quarantine.iterdir())
    assert f"quarantined originals: {run_folder}" in " ".join(output.split())
    # The report itself still names inputs by opaque ids only (a path may name a patient).
    report = (tmp_path / "out" / "deid-report.json").read_text()
    assert "README.txt" not in report and "no-sop" not in report


def test_deid_without_a_dataset_is_refused_naming_the_option(tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    ct_instance(incoming / "a.dcm")
    code, output = _cli(tmp_path, "deid", str(incoming), str(tmp_path / "out"))
    assert code == 2 and "--dataset NAME" in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "data").rglob("*.secret"))


def test_options_add_to_the_defaults_and_none_drops_them() -> None:
    assert requested_options(None) == DEFAULT_OPTIONS
    assert requested_options(["retain-uids"]) == (*DEFAULT_OPTIONS, "retain-uids")
    assert requested_options(["clean-pixel-data"]) == DEFAULT_OPTIONS  # already there: no duplicate
    assert requested_options(["none"]) == ()
    assert requested_options(["none", "retain-uids"]) == ("retain-uids",)
    full = requested_options(["retain-longitudinal-full-dates"])
    assert "retain-longitudinal-full-dates" in full and "retain-longitudinal-modified-dates" not in full
    with pytest.raises(UnknownOption, match="choose one of"):
        resolve_options(
            requested_options(["retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"])
        )


def test_deid_option_is_added_to_the_defaults_in_the_report(tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    ct_instance(incoming / "a.dcm")
    code, output = _cli(
        tmp_path, "deid", str(incoming), str(tmp_path / "out"), "--dataset", "t1", "-o", "retain-uids"
    )
    assert code == 0, output
    report = json.loads((tmp_path / "out" / "deid-report.json").read_text())
    assert set(report["options"]) == {*DEFAULT_OPTIONS, "retain-uids"}


# --- tables, titles, logs --------------------------------------------------------------------------


def test_captured_tables_keep_long_values_whole(tmp_path: Path) -> None:
    permit_id = "HDAB-DE-2026-" + "0123456789" * 9  # far wider than 80 columns
    code, output = _cli(tmp_path, "permit", "revoke", permit_id, "--reason", "project ended", "--force")
    assert code == 0, output
    code, output = _cli(tmp_path, "permit", "revoked")
    assert code == 0 and permit_id in output and "…" not in output


def test_a_terminal_table_folds_instead_of_cutting() -> None:
    pseudonym = "PSN-" + "ABCDEF0123" * 6
    table = Table("dataset", "pseudonym", show_header=False)
    table.add_row("lung-screening-2026-with-a-long-name", pseudonym)
    buffer = io.StringIO()
    CliConsole(file=buffer, force_terminal=True, width=40, color_system=None).table(table)
    text = buffer.getvalue()
    assert "…" not in text
    cells = "".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 3)
    assert cells == pseudonym


def test_peer_titles_are_plain_text_in_the_best_language() -> None:
    title = [{"@value": "Lungen-CT", "@language": "de"}, {"@value": "Lung CT", "@language": "en"}]
    assert plain_text(title, ["de", "en"]) == "Lungen-CT"
    assert plain_text(title, ["fr", "en"]) == "Lung CT"
    assert plain_text([{"@value": "Poumons", "@language": "fr-BE"}], ["fr"]) == "Poumons"
    assert plain_text({"@value": "Só isto", "@language": "pt"}, ["en"]) == "Só isto"
    assert plain_text("plain", ["en"]) == "plain"
    assert plain_text(None) == ""
    keywords = [
        {"@value": "Lungenkrebs", "@language": "de"},
        {"@value": "lung cancer", "@language": "en"},
        {"@value": "screening", "@language": "en"},
    ]
    assert plain_texts(keywords, ["en"]) == ["lung cancer", "screening"]
    assert plain_texts([{"@id": "http://data.europa.eu/eli/reg/2016/679/oj"}], ["en"]) == [
        "http://data.europa.eu/eli/reg/2016/679/oj"
    ]


def test_logs_are_readable_on_a_terminal_and_json_elsewhere(tmp_path: Path) -> None:
    assert load_settings(data_dir=tmp_path).log_format == "auto"
    assert resolved_format("auto", io.StringIO()) == "json"  # a pipe, a file, a log collector

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolved_format("auto", Tty()) == "console"
    assert resolved_format("json", Tty()) == "json" and resolved_format("console", io.StringIO()) == "console"


# --- policy rollback, permits ------------------------------------------------------------------------


def test_rollback_takes_the_version_as_history_prints_it(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(default_policies_dir(), policies)
    data = json.loads((policies / "data.json").read_text())
    data["connector"]["settings"]["datasets"]["demo-cohort"]["k"] += 1
    (policies / "data.json").write_text(json.dumps(data))
    code, output = _cli(tmp_path, "policy", "activate", str(policies), "--note", "k + 1")
    assert code == 0, output
    code, output = _cli(tmp_path, "policy", "history", "--json")
    labels = [row["label"] for row in json.loads(output)]
    assert labels[-1] == "v1" and len(labels) >= 2
    code, output = _cli(tmp_path, "policy", "rollback", "v1")
    assert code == 0 and "active:" in output, output
    code, output = _cli(tmp_path, "policy", "rollback", "2")
    assert code == 0 and "active:" in output, output
    code, output = _cli(tmp_path, "policy", "rollback", "version-two")
    assert code == 2 and "v1, v2" in output


def test_permit_issue_prints_the_id_and_revoke_knows_it(tmp_path: Path) -> None:
    issue = "permit issue --requester alice --organisation Lab --country DE --purpose ai-development"
    result = CliRunner().invoke(
        app, [*issue.split(), "--dataset", "demo-cohort"], env={"CONNECTOR_DATA_DIR": str(tmp_path / "data")}
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()  # stdout holds the permit alone, for PERMIT=$(...)
    assert token.count(".") == 2
    permit_id = result.stderr.split("permit ", 1)[1].split()[0]
    assert permit_id.startswith("permit-")
    code, output = _cli(tmp_path, "permit", "revoke", permit_id, "--reason", "project ended")
    assert code == 0 and f"permit {permit_id} revoked" in output and "warning" not in output


def test_permit_revoke_refuses_an_id_never_seen_unless_forced(tmp_path: Path) -> None:
    code, output = _cli(tmp_path, "permit", "revoke", "permit-typo", "--reason", "ended")
    assert code == 2 and "never issued" in output and "--force" in output
    assert len(output.strip().splitlines()) == 1
    code, output = _cli(tmp_path, "permit", "revoked", "--json")
    assert json.loads(output) == []
    code, output = _cli(tmp_path, "permit", "revoke", "not a permit id", "--reason", "ended", "--force")
    assert code == 2 and "is not a permit id" in output
    code, output = _cli(tmp_path, "permit", "revoke", "HDAB-DE-2026-0042", "--reason", "fraud", "--force")
    assert code == 0 and "never seen" in output and "revoked" in output


def test_permit_revoke_knows_a_permit_presented_in_a_decision(tmp_path: Path) -> None:
    runtime = build_runtime(load_settings(data_dir=tmp_path / "data"))
    add_dataset(runtime, "demo-cohort", [f"PSN-{index:02d}" for index in range(12)])
    permit = permit_for(runtime)  # signed by the development HDAB outside the CLI: not audited
    runtime.close()
    request = tmp_path / "request.json"
    request.write_text(json.dumps(access_request(permit=permit, size=12)))
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(request))
    assert code in (0, 1), output
    import jwt

    permit_id = jwt.decode(permit, options={"verify_signature": False})["jti"]
    code, output = _cli(tmp_path, "permit", "revoke", permit_id, "--reason", "ended")
    assert code == 0 and "warning" not in output, output
