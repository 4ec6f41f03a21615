"""The Ray executor against a real local Ray instance: a claimed job runs in a Ray worker process
and its signed result matches the local executor's; a Ray task that dies fails its job with
`executor_failed`, releases nothing and is never run again; the local instance listens on the
loopback interface only and keeps its token and session files in its data folder.
"""

# The fixtures of tests/test_jobs.py are imported by name and then requested as parameters.
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient
from sqlalchemy import select

from connector.audit.models import AuditEntry
from connector.compute.sandbox import SandboxLimits
from connector.identity.roles import Role
from connector.jobs import ray_executor
from connector.jobs.executors import LocalExecutor, executor_for
from connector.jobs.models import Job
from connector.jobs.ray_executor import RayExecutor
from connector.jobs.results import verify_result
from connector.jobs.runner import Worker
from connector.runtime import Runtime, build_runtime
from connector.settings import Settings, load_settings
from tests.test_jobs import (  # noqa: F401 (fixtures used by name)
    client,
    cohort_dir,
    headers,
    runtime,
    signed_package,
    submit,
    team_key,
)

LIMITS = SandboxLimits(threads=1)
RAY_ENVIRONMENT = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Settings]:
    """One local Ray instance for the module, started as a worker with `executor = "ray"` would."""
    # A short folder: Ray's Unix sockets live under data_dir/ray and must stay under 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="ray-exec-"))
    settings = load_settings(data_dir=folder, executor="ray")
    assert ray_executor.local_temp_dir(settings) is not None
    environment = {name: os.environ.get(name) for name in RAY_ENVIRONMENT}
    try:
        assert ray_executor.connect(settings) is True
        yield settings
    finally:
        ray.shutdown()
        for name, value in environment.items():  # connect() and ray.init() set these for the instance
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


def audit(runtime: Runtime, action: str, job_id: str) -> list[AuditEntry]:
    with runtime.sessions() as session:
        return list(
            session.execute(
                select(AuditEntry).where(AuditEntry.action == action, AuditEntry.object == job_id)
            ).scalars()
        )


def result_body(client: TestClient, runtime: Runtime, job_id: str) -> dict[str, Any]:
    token = client.get(f"/v1/jobs/{job_id}/result", headers=headers(runtime, Role.RESEARCHER))
    assert token.status_code == 200, token.text
    return verify_result(token.text, client.get("/v1/connector/keys").json()["keys"][0])


def test_a_job_runs_in_a_ray_worker_and_its_signed_result_matches_the_local_one(
    ray_instance: Settings, client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    on_ray = submit(client, runtime, signed_package).json()["id"]
    executor = RayExecutor(runtime.settings, LIMITS)
    worker = Worker(runtime, LIMITS, executor=executor)
    try:
        assert worker.run_once() == "succeeded"
    finally:
        executor.close()
    assert ray.is_initialized()  # it joined the instance it found: closing leaves that running
    status = client.get(f"/v1/jobs/{on_ray}", headers=headers(runtime, Role.RESEARCHER)).json()
    assert status["state"] == "succeeded" and status["studies_done"] == 3 and status["has_result"]
    # The job ran in a Ray worker process of this node, not in the test's process, under the claim.
    (started,) = audit(runtime, "job.executor.start", on_ray)
    where = json.loads(started.details)
    assert where["executor"] == "ray" and where["pid"] != os.getpid()
    assert where["node"] == ray.get_runtime_context().get_node_id() and where["host"] == socket.gethostname()
    with runtime.sessions() as session:
        claimed_by = session.get(Job, on_ray).worker  # type: ignore[union-attr]
    assert claimed_by == worker.name and started.actor == f"worker:{worker.name}"
    assert len(audit(runtime, "job.succeeded", on_ray)) == 1

    # The same job on the local executor: the same signed answer, but for its own identifiers.
    here = submit(client, runtime, signed_package).json()["id"]
    assert Worker(runtime, LIMITS).run_once() == "succeeded"
    assert audit(runtime, "job.executor.start", here) == []
    ray_body, local_body = result_body(client, runtime, on_ray), result_body(client, runtime, here)
    assert ray_body["job"] == on_ray and local_body["job"] == here
    varying = {"job", "created_at"}
    assert {k: v for k, v in ray_body.items() if k not in varying} == {
        k: v for k, v in local_body.items() if k not in varying
    }
    assert runtime.audit.verify().ok  # two processes appended to one hash chain


def test_a_ray_task_that_dies_fails_its_job_releases_nothing_and_never_reruns(
    ray_instance: Settings,
    client: TestClient,
    runtime: Runtime,
    signed_package: tuple[bytes, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = submit(client, runtime, signed_package).json()["id"]

    def dies(settings_data: dict[str, Any], key: str, job: str, limits: Any, gpus: float) -> str:
        # Defined here, so Ray ships it by value; each attempt leaves a line before the crash.
        with (Path(settings_data["data_dir"]) / "ray-attempts").open("a") as attempts:
            attempts.write(f"{job} {os.getpid()}\n")
        os._exit(1)

    monkeypatch.setattr(ray_executor, "job_task", ray.remote(dies))
    executor = RayExecutor(runtime.settings, LIMITS)
    assert Worker(runtime, LIMITS, executor=executor).run_once() == "failed"
    me = headers(runtime, Role.RESEARCHER)
    job = client.get(f"/v1/jobs/{job_id}", headers=me).json()
    assert job["state"] == "failed" and job["error_code"] == "executor_failed" and not job["has_result"]
    assert "WorkerCrashedError" in job["reasons"][0] and "nothing was released" in job["reasons"][0]
    assert client.get(f"/v1/jobs/{job_id}/result", headers=me).status_code == 404
    (failed,) = audit(runtime, "job.failed", job_id)
    assert json.loads(failed.details)["code"] == "executor_failed" and failed.outcome == "failure"
    attempts = (runtime.settings.data_dir / "ray-attempts").read_text().splitlines()
    assert len(attempts) == 1 and attempts[0].split()[0] == job_id  # Ray did not retry it

    # Handed to Ray again (a stray second dispatch), the real task finds it ended and runs nothing.
    monkeypatch.undo()
    assert executor.run(job_id) == "failed"
    executor.close()
    assert audit(runtime, "job.executor.start", job_id) == []
    assert audit(runtime, "job.succeeded", job_id) == [] and len(audit(runtime, "job.failed", job_id)) == 1


def test_executor_for_picks_ray_from_the_settings(ray_instance: Settings, tmp_path: Path) -> None:
    built = build_runtime(load_settings(data_dir=tmp_path / "data", executor="ray", ray_gpus_per_job=0.5))
    try:
        chosen = executor_for(built, LIMITS)
        assert isinstance(chosen, RayExecutor) and chosen.name == "ray"
        assert chosen.settings.ray_gpus_per_job == 0.5 and chosen.limits == LIMITS
        chosen.close()
        built.settings = load_settings(data_dir=tmp_path / "data")
        assert isinstance(executor_for(built, LIMITS), LocalExecutor)
    finally:
        built.close()


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _listening_addresses(pids: set[int]) -> list[str]:
    """Hex local addresses (as /proc/net/tcp* write them) of the TCP sockets these processes listen on."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1].split(":")[0])
    return found


LOOPBACK_HEX = {"00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}  # ::1, ::ffff:127.x


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="needs Linux /proc")
def test_the_local_instance_listens_on_loopback_only_and_keeps_its_files_in_the_data_folder(
    ray_instance: Settings,
) -> None:
    ray_processes = _descendants(os.getpid())
    names = set()
    for pid in ray_processes:
        with contextlib.suppress(OSError):  # a short-lived child may be gone already
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    assert {"gcs_server", "raylet"} <= names
    addresses = _listening_addresses(ray_processes | {os.getpid()})
    assert addresses, "found no listening socket of the Ray processes"
    outside = [a for a in addresses if not ((len(a) == 8 and a.endswith("7F")) or a in LOOPBACK_HEX)]
    assert outside == []
    token = ray_instance.keys_dir / ray_executor.RAY_TOKEN_FILE_NAME
    assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    sessions = list((ray_instance.data_dir / "ray").glob("session_*"))
    assert sessions and all(path.is_dir() for path in sessions)
    assert stat.S_IMODE((ray_instance.data_dir / "ray").stat().st_mode) == 0o700
