"""The audit trail: hash chain, signed checkpoints, tamper detection, queries, concurrency."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from connector.audit.models import AuditCheckpoint
from connector.cli import app
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings


@pytest.fixture
def trail(database_url: str, tmp_path: Path) -> Runtime:
    runtime = build_runtime(
        load_settings(data_dir=tmp_path / "d", database_url=database_url, audit_checkpoint_every=5)
    )
    for index in range(12):
        runtime.audit.record(
            actor="alice" if index % 2 else "bob",
            action="dataset.read" if index % 3 else "policy.decide",
            object=f"dataset-{index}",
            outcome="allow",
            reasons=[f"reason {index}"],
            details={"n": index},
            roles=["dpo"],
        )
    yield runtime
    runtime.close()


def _tamper(runtime: Runtime, statement: str) -> None:
    """What an attacker with database admin rights could do: lift the guard, change the rows."""
    with runtime.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_no_change"))
            connection.execute(text(statement))
            connection.execute(text("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_no_change"))
        else:
            connection.execute(text("DROP TRIGGER IF EXISTS audit_entries_no_update"))
            connection.execute(text("DROP TRIGGER IF EXISTS audit_entries_no_delete"))
            connection.execute(text(statement))


def test_an_intact_chain_verifies(trail: Runtime) -> None:
    result = trail.audit.verify()
    assert result.ok, result.problem
    assert result.entries_checked == 12
    assert result.checkpoints_checked == 2  # signed at entries 5 and 10


def test_entries_link_to_their_predecessor(trail: Runtime) -> None:
    records = trail.audit.query(limit=None)
    assert [r.seq for r in records] == list(range(1, 13))
    assert records[0].prev_hash == "0" * 64
    for previous, current in itertools.pairwise(records):
        assert current.prev_hash == previous.entry_hash


def test_edited_entry_is_named(trail: Runtime) -> None:
    _tamper(trail, "UPDATE audit_entries SET outcome = 'deny' WHERE seq = 7")
    result = trail.audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 7
    assert "modified" in result.problem


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(trail: Runtime) -> None:
    record = trail.audit.query(after_seq=3, limit=1)[0]
    forged = record.__class__(**{**record.__dict__, "outcome": "deny"})
    _tamper(
        trail,
        f"UPDATE audit_entries SET outcome = 'deny', entry_hash = '{forged.computed_hash()}' WHERE seq = 4",  # noqa: S608
    )
    result = trail.audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 5
    assert "does not follow" in result.problem


def test_deleted_entry_is_named(trail: Runtime) -> None:
    _tamper(trail, "DELETE FROM audit_entries WHERE seq = 3")
    result = trail.audit.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "missing" in result.problem


def test_reordered_entries_are_detected(trail: Runtime) -> None:
    # Swap the contents of entries 8 and 9 (keeping their positions): the order changed.
    _tamper(
        trail,
        "UPDATE audit_entries SET seq = CASE seq WHEN 8 THEN 9 WHEN 9 THEN 8 END + 100 WHERE seq IN (8, 9)",
    )
    _tamper(trail, "UPDATE audit_entries SET seq = seq - 100 WHERE seq > 100")
    result = trail.audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 8


def test_truncated_tail_is_detected(trail: Runtime) -> None:
    _tamper(trail, "DELETE FROM audit_entries WHERE seq > 9")
    result = trail.audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 10
    assert "deleted" in result.problem


def test_truncated_tail_with_rewound_head_is_caught_by_the_signed_checkpoint(trail: Runtime) -> None:
    head_hash = trail.audit.query(after_seq=7, limit=1)[0].entry_hash
    _tamper(trail, "DELETE FROM audit_entries WHERE seq > 8")
    with trail.engine.begin() as connection:
        connection.execute(text("UPDATE audit_head SET seq = 8, entry_hash = :h"), {"h": head_hash})
    result = trail.audit.verify()
    assert not result.ok
    assert "signed checkpoint covers 10" in result.problem


def test_forged_checkpoint_signature_is_detected(trail: Runtime) -> None:
    with trail.sessions() as session, session.begin():
        checkpoint = session.get(AuditCheckpoint, 5)
        checkpoint.signed_at = "2020-01-01T00:00:00.000000Z"
    result = trail.audit.verify()
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "invalid signature" in result.problem


def test_filters_by_actor_action_and_time(trail: Runtime) -> None:
    alice = trail.audit.query(actor="alice", limit=None)
    assert alice and all(r.actor == "alice" for r in alice)
    decisions = trail.audit.query(action="policy.*", limit=None)
    assert [r.seq for r in decisions] == [1, 4, 7, 10]
    middle = trail.audit.query(limit=None)[5].ts
    assert all(r.ts >= middle for r in trail.audit.query(since=middle, limit=None))
    assert all(r.ts < middle for r in trail.audit.query(until=middle, limit=None))


def test_concurrent_appends_never_fork_the_chain(database_url: str, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "c", database_url=database_url)
    runtimes = [build_runtime(settings) for _ in range(4)]  # separate engines, like separate workers

    def append(runtime: Runtime, worker: int) -> None:
        for index in range(15):
            runtime.audit.record(f"worker-{worker}", "test.concurrent", str(index), "success")

    threads = [threading.Thread(target=append, args=(rt, n)) for n, rt in enumerate(runtimes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = runtimes[0].audit.verify()
    assert result.ok, result.problem
    assert result.entries_checked == 60
    for runtime in runtimes:
        runtime.close()


def test_cli_verify_names_the_first_bad_entry(tmp_path: Path) -> None:
    env = {"CONNECTOR_DATA_DIR": str(tmp_path)}
    runtime = build_runtime(load_settings(data_dir=tmp_path))
    for index in range(4):
        runtime.audit.record("alice", "test", str(index), "success")
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify"], env=env)
    assert ok.exit_code == 0 and "intact" in ok.output
    _tamper(runtime, "UPDATE audit_entries SET object = 'x' WHERE seq = 2")
    runtime.close()
    bad = runner.invoke(app, ["audit", "verify"], env=env)
    assert bad.exit_code == 1
    assert "TAMPERED at entry 2" in bad.output


def test_cli_show_and_export(tmp_path: Path) -> None:
    env = {"CONNECTOR_DATA_DIR": str(tmp_path)}
    runtime = build_runtime(load_settings(data_dir=tmp_path))
    runtime.audit.record("alice", "dataset.read", "ds-1", "allow", reasons=["purpose permitted"])
    runtime.audit.record("bob", "dataset.read", "ds-2", "deny", reasons=["no permit"])
    runtime.close()
    runner = CliRunner()
    shown = runner.invoke(app, ["audit", "show", "--actor", "bob", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    lines = [json.loads(line) for line in shown.output.splitlines()]
    assert [(e["actor"], e["outcome"], e["reasons"]) for e in lines] == [("bob", "deny", ["no permit"])]
    out = tmp_path / "audit.jsonl"
    exported = runner.invoke(app, ["audit", "export", str(out)], env=env)
    assert exported.exit_code == 0, exported.output
    actions = [json.loads(line)["action"] for line in out.read_text().splitlines()]
    assert actions[:2] == ["dataset.read", "dataset.read"]
