"""Where a claimed job runs: in this worker process (the default), or on a cluster (Ray).

A worker claims jobs from the shared queue and hands each to its executor; the executor only
chooses the machine. The job itself (decisions, sandbox, egress, signing) is always
connector.jobs.runner.run_job, so every executor gives the same answers and the same audit trail.
"""

from __future__ import annotations

from typing import Protocol

from connector.compute.sandbox import SandboxLimits
from connector.jobs.runner import run_job
from connector.runtime import Runtime


class JobExecutor(Protocol):
    name: str

    def run(self, job_id: str) -> str:
        """Run one claimed job to its end; its final state."""

    def close(self) -> None: ...


class LocalExecutor:
    """Runs the job here: the worker's own machine, its GPU when present."""

    name = "local"

    def __init__(self, runtime: Runtime, limits: SandboxLimits) -> None:
        self._runtime, self._limits = runtime, limits

    def run(self, job_id: str) -> str:
        return run_job(self._runtime, job_id, self._limits)

    def close(self) -> None:
        return None


def executor_for(runtime: Runtime, limits: SandboxLimits) -> JobExecutor:
    """The executor the settings choose (`executor = "local"` or `"ray"`)."""
    if runtime.settings.executor == "ray":
        from connector.jobs.ray_executor import RayExecutor

        return RayExecutor(runtime.settings, limits, runtime)
    return LocalExecutor(runtime, limits)
