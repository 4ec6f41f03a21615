"""A database administrator rewriting the audit trail: every way of doing it unseen is reported.

The attacks run real SQL against SQLite and PostgreSQL, recompute the hash chain like a careful DBA
would, and check that `verify` (library, CLI and API) names the problem with the first bad seq.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from connector.api.app import create_app
from connector.audit.chain import AuditRecord, checkpoint_message
from connector.audit.timer import AuditCheckpointer
from connector.audit.witnessing import peer_heads_file
from connector.cli import app
from connector.dataspace.identity import own_participant
from connector.identity.roles import Role
from connector.local_connector import write_trust_list
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from tests.conftest import bearer


def _trail(database_url: str, data_dir: Path, entries: int = 12, **overrides: object) -> Runtime:
    runtime = build_runtime(
        load_settings(
            **{"data_dir": data_dir, "database_url": database_url, "audit_checkpoint_every": 5, **overrides}
        )
    )
    for index in range(entries):
        runtime.audit.record("alice", "dataset.read", f"dataset-{index}", "allow", reasons=[f"r{index}"])
    return runtime


def _sql(runtime: Runtime, *statements: tuple[str, dict[str, object]]) -> None:
    """What a DBA can do: lift the append-only guard, change rows, put the guard back."""
    with runtime.engine.begin() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_no_change"))
        else:
            connection.execute(text("DROP TRIGGER IF EXISTS audit_entries_no_update"))
            connection.execute(text("DROP TRIGGER IF EXISTS audit_entries_no_delete"))
        for statement, params in statements:
            connection.execute(text(statement), params)
        if postgres:
            connection.execute(text("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_no_change"))


def _rewrite(runtime: Runtime, seq: int, **changes: str) -> None:
    """Edit entry `seq`, then recompute every later hash and the head row: the chain links again."""
    records = runtime.audit.query(after_seq=seq - 1, limit=None)
    statements: list[tuple[str, dict[str, object]]] = []
    prev_hash = records[0].prev_hash
    for index, record in enumerate(records):
        fields = {**record.__dict__, "prev_hash": prev_hash, **(changes if index == 0 else {})}
        forged = AuditRecord(**{**fields, "entry_hash": ""})
        prev_hash = forged.computed_hash()
        statements.append(
            (
                "UPDATE audit_entries SET outcome = :outcome, object = :object, prev_hash = :prev, "
                "entry_hash = :hash WHERE seq = :seq",
                {
                    "outcome": forged.outcome,
                    "object": forged.object,
                    "prev": forged.prev_hash,
                    "hash": prev_hash,
                    "seq": forged.seq,
                },
            )
        )
    statements.append(("UPDATE audit_head SET entry_hash = :hash WHERE id = 1", {"hash": prev_hash}))
    _sql(runtime, *statements)


def _codes(runtime: Runtime) -> list[tuple[str, int]]:
    return [(problem.code, problem.seq) for problem in runtime.audit.verify().problems]


def _heads(runtime: Runtime) -> list[dict[str, object]]:
    path = runtime.audit.heads_file.path
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_deleted_checkpoints_and_a_rewritten_chain_are_reported(database_url: str, tmp_path: Path) -> None:
    # The red team's attack: drop every checkpoint, edit entry 3, recompute the chain and the head.
    runtime = _trail(database_url, tmp_path / "d")
    _sql(runtime, ("DELETE FROM audit_checkpoints", {}))
    _rewrite(runtime, 3, outcome="deny")
    result = runtime.audit.verify()
    runtime.close()
    assert not result.ok
    assert (result.first_bad_seq, result.code) == (5, "checkpoint_missing")
    codes = [(problem.code, problem.seq) for problem in result.problems]
    # Both required checkpoints are missing, and the heads file still holds the true entry 5.
    assert ("checkpoint_missing", 10) in codes
    assert ("file_head_mismatch", 5) in codes


def test_rewrite_keeping_forged_looking_checkpoints_is_reported(database_url: str, tmp_path: Path) -> None:
    # A DBA who keeps the checkpoint rows but points them at the rewritten hashes: signatures fail.
    runtime = _trail(database_url, tmp_path / "d")
    _rewrite(runtime, 3, outcome="deny")
    records = {r.seq: r.entry_hash for r in runtime.audit.query(limit=None)}
    _sql(
        runtime,
        *[
            ("UPDATE audit_checkpoints SET entry_hash = :h WHERE seq = :s", {"h": records[s], "s": s})
            for s in (5, 10)
        ],
    )
    assert _codes(runtime)[:2] == [("checkpoint_signature_invalid", 5), ("file_head_mismatch", 5)]
    runtime.close()


def test_cut_tail_with_a_fixed_head_row_is_reported(database_url: str, tmp_path: Path) -> None:
    # Delete entries 8..12 and the checkpoint at 10, rewind the head to 7: the database agrees with itself.
    runtime = _trail(database_url, tmp_path / "d")
    seventh = runtime.audit.query(after_seq=6, limit=1)[0].entry_hash
    _sql(
        runtime,
        ("DELETE FROM audit_entries WHERE seq > 7", {}),
        ("DELETE FROM audit_checkpoints WHERE seq > 7", {}),
        ("UPDATE audit_head SET seq = 7, entry_hash = :h WHERE id = 1", {"h": seventh}),
    )
    result = runtime.audit.verify()
    runtime.close()
    assert (result.ok, result.first_bad_seq, result.code) == (False, 8, "database_behind_file")
    assert "signed head at entry 10" in result.problem


def test_edit_after_the_last_checkpoint_is_caught_by_the_outside_head(
    database_url: str, tmp_path: Path
) -> None:
    # Entries 11 and 12 come after the last required checkpoint (10); the serve timer signs head 12.
    runtime = _trail(database_url, tmp_path / "d")
    assert AuditCheckpointer(runtime.audit, interval_seconds=300).run_once() == 12
    assert [head["seq"] for head in _heads(runtime)] == [5, 10, 12]
    # The DBA drops that checkpoint (not at a multiple, so not required) and rewrites 11..12.
    _sql(runtime, ("DELETE FROM audit_checkpoints WHERE seq = 12", {}))
    _rewrite(runtime, 11, object="dataset-other")
    result = runtime.audit.verify()
    runtime.close()
    assert (result.ok, result.first_bad_seq, result.code) == (False, 12, "file_head_mismatch")
    assert "after entry 10" in result.problem


def test_deleting_a_required_checkpoint_is_reported(database_url: str, tmp_path: Path) -> None:
    runtime = _trail(database_url, tmp_path / "d")
    _sql(runtime, ("DELETE FROM audit_checkpoints WHERE seq = 10", {}))
    result = runtime.audit.verify()
    runtime.close()
    assert (result.ok, result.first_bad_seq, result.code) == (False, 10, "checkpoint_missing")


def test_a_restored_older_database_is_reported(tmp_path: Path) -> None:
    # Copy the database at 7 entries, record on, then put the old copy back: the file knows better.
    data = tmp_path / "d"
    runtime = _trail(f"sqlite:///{tmp_path / 'c.db'}", data, entries=7)
    runtime.close()
    backup = (tmp_path / "c.db").read_bytes()
    runtime = _trail(f"sqlite:///{tmp_path / 'c.db'}", data, entries=5)
    runtime.close()
    (tmp_path / "c.db").write_bytes(backup)
    runtime = build_runtime(
        load_settings(data_dir=data, database_url=f"sqlite:///{tmp_path / 'c.db'}", audit_checkpoint_every=5)
    )
    assert _codes(runtime) == [("database_behind_file", 8)]
    runtime.close()


def test_timer_checkpoints_keep_an_intact_trail_intact(database_url: str, tmp_path: Path) -> None:
    runtime = _trail(
        database_url, tmp_path / "d", entries=0, audit_checkpoint_every=1000, audit_checkpoint_seconds=0.01
    )
    runtime.audit.record("alice", "a", "o", "allow")
    assert runtime.audit.verify().checkpoints_checked == 0  # the clock starts at the first entry
    time.sleep(0.05)  # past audit_checkpoint_seconds (0.01): the next record signs itself
    runtime.audit.record("alice", "a", "o", "allow")
    result = runtime.audit.verify()
    assert (result.ok, result.checkpoints_checked, result.heads_checked) == (True, 1, 1), result.problem
    assert [head["seq"] for head in _heads(runtime)] == [2]
    # Entry 3 may sign itself or not (the clock runs); the serve timer signs the head if it did not.
    runtime.audit.record("alice", "a", "o", "allow")
    timer = AuditCheckpointer(runtime.audit, interval_seconds=0.01)
    assert timer.run_once() == 3 and timer.run_once() == 3
    assert [head["seq"] for head in _heads(runtime)] == [2, 3]  # one head per checkpoint, none twice
    assert stat.S_IMODE(os.stat(runtime.audit.heads_file.path).st_mode) == 0o600
    result = runtime.audit.verify()
    runtime.close()
    assert (result.ok, result.checkpoints_checked, result.heads_checked) == (True, 2, 2)


def test_a_torn_last_line_is_tolerated_and_a_corrupt_file_is_not(tmp_path: Path) -> None:
    runtime = _trail(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d")
    path = runtime.audit.heads_file.path
    with path.open("a") as handle:
        handle.write('{"seq": 15, "entry_ha')  # a crash in the middle of an append
    result = runtime.audit.verify()
    assert result.ok and result.heads_checked == 2
    assert "incomplete" in result.warnings[0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert runtime.audit.verify().code == "heads_file_corrupt"
    runtime.close()


def test_a_forged_head_in_the_file_is_reported(tmp_path: Path) -> None:
    runtime = _trail(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d")
    forged = {**_heads(runtime)[-1], "seq": 40}
    with runtime.audit.heads_file.path.open("a") as handle:
        handle.write(json.dumps(forged) + "\n")
    assert _codes(runtime) == [("file_head_signature_invalid", 40)]
    runtime.close()


class _Witness:
    """A tiny HTTP witness on 127.0.0.1 that stores what it receives, or fails when told to."""

    def __init__(self) -> None:
        self.received: list[dict[str, object]] = []
        self.status = 200
        witness = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if witness.status == 200:
                    witness.received.append(json.loads(body))
                self.send_response(witness.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/audit/witness"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def witness() -> Iterator[_Witness]:
    server = _Witness()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_signed_heads_reach_the_witness(witness: _Witness, tmp_path: Path) -> None:
    runtime = _trail(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", audit_witness_url=witness.url)
    runtime.audit.witness.flush(10)
    assert [head["seq"] for head in witness.received] == [5, 10]
    # What the witness holds is verifiable with the connector's public key alone.
    for head in witness.received:
        message = checkpoint_message(head["connector_id"], head["seq"], head["entry_hash"], head["signed_at"])
        assert runtime.signing_key.verify(message, head["signature"])
    runtime.close()


def test_a_failing_witness_never_blocks_recording(witness: _Witness, tmp_path: Path) -> None:
    witness.status = 503
    runtime = _trail(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", audit_witness_url=witness.url)
    runtime.audit.witness.flush(10)
    assert witness.received == [] and runtime.audit.witness.pending.seq == 10
    assert runtime.audit.verify().ok  # the trail and the heads file are fine without it
    witness.status = 200  # back up: the next checkpoint carries the newest head
    for index in range(3):
        runtime.audit.record("alice", "a", str(index), "allow")
    runtime.audit.witness.flush(10)
    assert [head["seq"] for head in witness.received] == [15]
    assert runtime.audit.witness.pending is None
    runtime.close()


def test_an_unreachable_witness_never_blocks_recording(tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}/witness"  # closed when the block ends
    runtime = _trail(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d", audit_witness_url=url)
    assert runtime.audit.verify().entries_checked == 12
    runtime.audit.witness.flush(10)
    assert runtime.audit.witness.pending.seq == 10
    runtime.close()


def test_cli_verify_exits_non_zero_with_one_line_naming_the_problem(tmp_path: Path) -> None:
    env = {"CONNECTOR_DATA_DIR": str(tmp_path), "CONNECTOR_AUDIT_CHECKPOINT_EVERY": "5"}
    runtime = build_runtime(load_settings(data_dir=tmp_path, audit_checkpoint_every=5))
    for index in range(12):
        runtime.audit.record("alice", "test", str(index), "success")
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify"], env=env)
    assert ok.exit_code == 0 and "2 outside heads" in ok.output, ok.output
    _sql(runtime, ("DELETE FROM audit_checkpoints", {}))
    _rewrite(runtime, 3, outcome="deny")
    runtime.close()
    bad = runner.invoke(app, ["audit", "verify"], env=env)
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert "TAMPERED at entry 5: checkpoint_missing" in lines[0]


def test_api_verify_returns_machine_readable_problems(tmp_path: Path) -> None:
    runtime = _trail(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "d")
    _sql(runtime, ("DELETE FROM audit_checkpoints WHERE seq = 5", {}))
    token = runtime.dev_issuer.issue("dpo-1", [Role.DPO])
    with TestClient(create_app(runtime)) as client:
        verdict = client.get("/v1/audit/verify", headers=bearer(token)).json()
    runtime.close()
    assert (verdict["ok"], verdict["first_bad_seq"], verdict["code"]) == (False, 5, "checkpoint_missing")
    assert verdict["problems"][0] == {"code": "checkpoint_missing", "seq": 5, "message": verdict["problem"]}


def test_a_connector_witnesses_the_signed_heads_of_a_trusted_peer(tmp_path: Path) -> None:
    peer = _trail(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a", connector_id="urn:connector:peer-a")
    write_trust_list(tmp_path / "trust.json", [own_participant(peer).to_dict()])
    witness_rt = build_runtime(
        load_settings(
            data_dir=tmp_path / "b",
            database_url=f"sqlite:///{tmp_path / 'b.db'}",
            trust_list_file=tmp_path / "trust.json",
        )
    )
    heads = _heads(peer)
    with TestClient(create_app(witness_rt)) as client:
        first = client.post("/v1/audit/witness", json=heads[0])
        again = client.post("/v1/audit/witness", json=heads[0])
        assert (first.status_code, first.json()["stored"], again.json()["stored"]) == (200, True, False)
        assert client.post("/v1/audit/witness", json=heads[1]).json()["stored"] is True
        # Unsigned junk and strangers are refused with a reason code and leave nothing behind.
        forged = client.post("/v1/audit/witness", json={**heads[0], "entry_hash": "a" * 64})
        stranger = client.post("/v1/audit/witness", json={**heads[0], "connector_id": "urn:connector:x"})
        assert (forged.status_code, forged.json()["error"]) == (403, "invalid_signature")
        assert (stranger.status_code, stranger.json()["error"]) == (403, "untrusted_peer")
        # A peer whose chain was rewritten and re-signed (its own key, a different entry 5): a fork.
        signed_at = heads[0]["signed_at"]
        message = checkpoint_message("urn:connector:peer-a", 5, "b" * 64, signed_at)
        fork = {**heads[0], "entry_hash": "b" * 64, "signature": peer.signing_key.sign(message)}
        refused = client.post("/v1/audit/witness", json=fork)
        assert (refused.status_code, refused.json()["error"]) == (409, "head_forked")
    kept = peer_heads_file(tmp_path / "b" / "audit" / "witnessed", "urn:connector:peer-a").read().heads
    assert [(h.seq, h.entry_hash) for h in kept] == [(h["seq"], h["entry_hash"]) for h in heads]
    assert [(e.action, e.outcome) for e in witness_rt.audit.query(actor="peer:urn:connector:peer-a")] == [
        ("audit.witness", "success"),
        ("audit.witness", "success"),
        ("audit.witness", "failure"),
    ]
    peer.close()
    witness_rt.close()
