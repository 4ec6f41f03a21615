"""The Ray executor: a worker claims a job from the shared queue, then Ray runs it on a cluster node.

`RayExecutor.run(job_id)` hands one claimed job to a Ray task. The task rebuilds the connector's
Runtime on its node from the worker's settings (once per Ray worker process; later jobs reuse it)
and calls connector.jobs.runner.run_job there, so decisions, sandbox, egress and signing are the
same as with the local executor. Every node therefore needs the same database, object store and
keys as the worker: a shared data folder, or PostgreSQL and S3 with the master key in the settings.
The remote side records `job.executor.start` (node, host, process) in the audit log, so the trail
says where the data were decrypted.

What it must never do:
- run a job twice: the claim on the queue is the only claim; the Ray task never claims again, is
  never retried by Ray (max_retries=0, retry_exceptions=False), and runs nothing unless the job is
  still `running` when it starts. A Ray task that dies (worker crash, node lost) fails its job with
  error code `executor_failed`; nothing is released and the job is not resubmitted.
- bind Ray beyond 127.0.0.1 when it starts a local instance (`ray_address` unset): every Ray
  process (GCS, raylet, workers, agents) listens on the loopback interface only, with no dashboard.
  A local instance is protected by Ray's token authentication, its token kept in the data folder
  (keys/ray-auth-token, 0600) rather than ~/.ray, and keeps its session files (logs, sockets) in
  data_dir/ray when that path is short enough for Unix sockets (else in Ray's default /tmp/ray).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import secrets
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayTaskError
from sqlalchemy import update

from connector.atomic_files import write_atomically
from connector.compute.sandbox import SandboxLimits
from connector.jobs.models import Job
from connector.jobs.runner import LEASE_SECONDS, finish_job, run_job
from connector.jobs.schemas import FINAL_STATES, JobState
from connector.runtime import Runtime, build_runtime
from connector.settings import Settings

log = logging.getLogger("connector.jobs")

LOOPBACK = "127.0.0.1"
RENEW_SECONDS = LEASE_SECONDS / 4  # the worker keeps its claim alive while Ray queues or runs the job
RAY_TOKEN_FILE_NAME = "ray-auth-token"  # noqa: S105 (a file name, not a secret)
RUNTIMES_PER_PROCESS = 4

# A Unix socket path holds at most 107 bytes on Linux; Ray puts its sockets at
# <temp_dir>/session_<date>_<time>_<microseconds>_<pid>/sockets/plasma_store.
_MAX_SOCKET_PATH = 107
_SOCKET_SUFFIX = len("/session_2000-01-01_00-00-00_000000_4194304/sockets/plasma_store")


# ---------------------------------------------------------------- connecting to Ray (the worker's side)


def _local_token_file(settings: Settings) -> Path:
    """The local instance's authentication token, created once in the data folder (0600)."""
    path = settings.keys_dir / RAY_TOKEN_FILE_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):  # another worker of this data folder made it first
            write_atomically(path, secrets.token_hex(32).encode(), mode=0o600, exclusive=True)
    return path


def local_temp_dir(settings: Settings) -> Path | None:
    """Where a local Ray keeps its session files: data_dir/ray, unless its sockets would not fit there."""
    folder = settings.data_dir / "ray"
    if len(str(folder).encode()) + _SOCKET_SUFFIX > _MAX_SOCKET_PATH:
        return None
    return folder


def _loopback_only() -> None:
    # Ray turns a node address of 127.0.0.1 into the machine's external address unless clusters
    # are switched off; with them off, every Ray process binds to the loopback interface only.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _token_auth(settings: Settings) -> None:
    # Ray 2.60 turns token authentication on for a new local instance (RAY_AUTH_MODE unset) and,
    # with no token anywhere, writes one to ~/.ray/auth_token. Ours lives in the data folder;
    # an operator's RAY_AUTH_MODE, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH wins.
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        log.warning("RAY_AUTH_MODE=disabled: the local Ray instance runs without token authentication")
        return
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(_local_token_file(settings))


def connect(settings: Settings) -> bool:
    """Connect this process to Ray as the settings say; True when it started a local instance.

    `ray_address` unset (or "local"): a new local instance, on 127.0.0.1 only, every core, no dashboard.
    Set (e.g. "ray://head:10001" or "auto"): that cluster, with the operator's own Ray credentials.
    A process already connected stays on its instance (and this returns False).
    """
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "ignore_reinit_error": True,
    }
    if settings.ray_address and settings.ray_address != "local":
        if settings.effective_database_url.startswith("sqlite"):
            log.warning(
                "executor = 'ray' with a remote cluster and a SQLite database: every Ray node must "
                "see the same data folder"
            )
        ray.init(address=settings.ray_address, **quiet)
        return False
    _loopback_only()
    _token_auth(settings)
    temp_dir = local_temp_dir(settings)
    if temp_dir is None:
        log.info("the data folder's path is too long for Ray's sockets: Ray keeps its session in /tmp/ray")
    else:
        temp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Ray says at WARNING level that it turned token authentication on: expected here, so quiet.
    announcer = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = announcer.level
    announcer.setLevel(logging.ERROR)
    try:
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            _temp_dir=str(temp_dir) if temp_dir is not None else None,
            **quiet,
        )
    finally:
        announcer.setLevel(level)
    if temp_dir is not None:
        # Ray makes its folders world-writable (0777) for shared machines; ours stays the user's.
        temp_dir.chmod(0o700)
    return True


# ---------------------------------------------------------------- the Ray task (the node's side)

_runtimes: OrderedDict[str, Runtime] = OrderedDict()
_runtimes_lock = threading.Lock()


def _runtime_here(settings_data: dict[str, Any], key: str) -> Runtime:
    """The Runtime for these settings in this Ray worker process, built on its first job only."""
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = build_runtime(Settings.model_validate(settings_data))
            _runtimes[key] = runtime
            while len(_runtimes) > RUNTIMES_PER_PROCESS:
                _runtimes.popitem(last=False)[1].close()
        _runtimes.move_to_end(key)
        return runtime


def _limits_here(limits: SandboxLimits, settings: Settings, gpus: float) -> SandboxLimits:
    """The job's device on this node: a GPU only when the job asked Ray for one (Ray gave it)."""
    if gpus > 0 and settings.compute_device != "cpu":
        from connector.compute.inference import choose_device

        return replace(limits, device=choose_device(settings.compute_device).type)
    return replace(limits, device="cpu")


def run_in_ray_worker(
    settings_data: dict[str, Any], key: str, job_id: str, limits: SandboxLimits, gpus: float
) -> str:
    """Body of the Ray task: run one job that a worker claimed already; its final state."""
    runtime = _runtime_here(settings_data, key)
    with runtime.sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} is not in this connector's database")
        state, worker = job.state, job.worker
    if state != JobState.RUNNING:
        return state  # it ended elsewhere (cancelled, its claim lapsed): never run it
    context = ray.get_runtime_context()
    runtime.audit.record(
        f"worker:{worker}",
        "job.executor.start",
        job_id,
        "success",
        details={
            "executor": "ray",
            "node": context.get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "gpus": gpus,
        },
    )
    return run_job(runtime, job_id, _limits_here(limits, runtime.settings, gpus))


# The Ray remote function a RayExecutor submits (tests replace it to kill a task).
job_task = ray.remote(run_in_ray_worker)


# ---------------------------------------------------------------- the executor


class RayExecutor:
    """Runs each claimed job as one Ray task, on the cluster node Ray picks (a GPU node when
    `ray_gpus_per_job` > 0); connects on first use and never runs a job twice."""

    name = "ray"

    def __init__(self, settings: Settings, limits: SandboxLimits, runtime: Runtime | None = None) -> None:
        self.settings, self.limits = settings, limits
        self._runtime, self._own_runtime = runtime, runtime is None
        # Secrets stay SecretStr (pickled with the task, never shown); paths stay paths.
        self._settings_data = settings.model_dump(mode="python")
        self._key = hashlib.sha256(pickle.dumps(self._settings_data)).hexdigest()
        self._connected = False
        self._started_local = False
        self._lock = threading.Lock()

    def _connect(self) -> None:
        with self._lock:
            if not self._connected or not ray.is_initialized():
                self._started_local = connect(self.settings)
                self._connected = True

    def _db(self) -> Runtime:
        if self._runtime is None:
            self._runtime = build_runtime(self.settings)
        return self._runtime

    def run(self, job_id: str) -> str:
        """Run one claimed job on Ray to its end; its final state."""
        try:
            self._connect()
            ref = job_task.options(
                num_gpus=self.settings.ray_gpus_per_job,
                max_retries=0,
                retry_exceptions=False,
                name=f"connector-job-{job_id}",
            ).remote(self._settings_data, self._key, job_id, self.limits, self.settings.ray_gpus_per_job)
        except Exception as exc:  # Ray unreachable: the job must still end
            log.warning("job %s could not be handed to Ray: %s", job_id, type(exc).__name__)
            return self._fail(job_id, f"the job could not be handed to Ray ({type(exc).__name__})")
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=RENEW_SECONDS)
                if ready:
                    return str(ray.get(ref))
                self._renew(job_id)
        except Exception as exc:  # the task died, or this worker lost the cluster
            cause = exc.cause if isinstance(exc, RayTaskError) else None
            kind = type(cause or exc).__name__
            log.warning("the Ray task of job %s ended without a state: %s", job_id, kind)
            try:
                ray.cancel(ref, force=True)  # never let a task we gave up on go on (a no-op if it ended)
            except Exception:
                log.debug("cancelling the Ray task of job %s failed", job_id, exc_info=True)
            return self._fail(job_id, f"the Ray task running this job stopped ({kind})")

    def _renew(self, job_id: str) -> None:
        try:
            with self._db().sessions() as session, session.begin():
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.RUNNING)
                    .values(lease_until=time.time() + LEASE_SECONDS)
                )
        except Exception:  # the database went away for a moment: the task renews on its progress too
            log.warning("renewing the claim on job %s failed", job_id, exc_info=True)

    def _fail(self, job_id: str, reason: str) -> str:
        """End a job whose Ray task gave no state as the runner ends a failed job; its final state.
        A job the task finished before dying keeps the state it reached."""
        runtime = self._db()
        reasons = [f"{reason}; nothing was released"]
        if finish_job(runtime, job_id, JobState.FAILED, "executor_failed", reasons):
            return JobState.FAILED
        with runtime.sessions() as session:
            job = session.get(Job, job_id)
        return job.state if job is not None and job.state in FINAL_STATES else JobState.FAILED

    def close(self) -> None:
        """Shut down the local Ray instance this executor started (never a cluster it joined)."""
        if self._started_local and ray.is_initialized():
            ray.shutdown()
        self._started_local = self._connected = False
        if self._own_runtime and self._runtime is not None:
            self._runtime.close()
            self._runtime = None
