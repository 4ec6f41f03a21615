"""Benchmark: how fast the `connector` command answers and `connector serve` becomes ready, one run.

Measures, in this one run and on this machine, each in a fresh process (best of ``--runs``):

* `connector --help` and `connector deid --help`: wall time and peak RSS, against the floor of
  the CLI framework's own import (``python -c "import typer, rich.console, pydantic"``) measured
  in the same run, as a ratio. Goal: within 2x of that floor.
* `connector serve` on a free 127.0.0.1 port with a temporary data folder (embedded defaults,
  SQLite): the time from the process start to the first 200 from ``/readyz`` (the service's own
  re-execution with the policy engine's Go runtime settings included, as an operator sees it),
  against a trivial FastAPI app on uvicorn ready on ``/readyz`` (``import fastapi, uvicorn`` and
  nothing else), as a ratio.

Which libraries a command imports is the test suite's business (tests/test_cli_startup.py checks
by module names that `--help` loads no torch, MONAI, Ray, rdflib or pyshacl); this script only
times. It never asserts; it exits 0 once it has measured.

    python benchmarks/startup.py             # 5 runs of each --help, 3 serve start-ups
    python benchmarks/startup.py --quick     # 2 and 1
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

FLOOR_CLI = [PYTHON, "-c", "import typer, rich.console, pydantic"]
# The serve floor: the web framework and server alone, a one-route app, ready on /readyz.
FLOOR_SERVE = """
import sys
import fastapi, uvicorn
app = fastapi.FastAPI()
@app.get("/readyz")
def readyz() -> dict:
    return {"status": "ready"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _environment(data_dir: Path) -> dict[str, str]:
    # No developer settings leak in: the connector refuses unknown CONNECTOR_* variables anyway.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    env["CONNECTOR_DATA_DIR"] = str(data_dir)
    env["XDG_DATA_HOME"] = str(data_dir / "xdg")
    return env


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of `command` to its exit."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 gives this child's own resource usage (getrusage(RUSAGE_CHILDREN) would mix all runs).
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        assert process.stderr is not None
        sys.exit(f"{' '.join(command[1:])} failed: {process.stderr.read().decode(errors='replace')[-500:]}")
    if process.stderr is not None:
        process.stderr.close()
    return elapsed, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def best_of(commands: list[list[str]], env: dict[str, str], runs: int) -> list[tuple[float, float]]:
    """Best wall time and highest peak RSS of each command. The commands take turns, round by
    round, so that a change in the machine's load weighs on the floor and the others alike."""
    results: list[list[tuple[float, float]]] = [[] for _ in commands]
    for _ in range(runs):
        for command, seen in zip(commands, results, strict=True):
            seen.append(run_once(command, env))
    return [(min(r[0] for r in seen), max(r[1] for r in seen)) for seen in results]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready_after(command: list[str], port: int, env: dict[str, str], limit: float = 120.0) -> float:
    """Seconds from starting `command` to the first 200 from its /readyz; the process is stopped."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if process.poll() is not None:
                assert process.stderr is not None
                sys.exit(
                    f"{' '.join(command[1:])} exited: {process.stderr.read().decode(errors='replace')[-800:]}"
                )
            if time.perf_counter() - start > limit:
                sys.exit(f"{' '.join(command[1:])} not ready after {limit:.0f} s")
            time.sleep(0.01)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of each --help (best counts)")
    parser.add_argument("--serve-runs", type=int, default=3, help="serve start-ups (best counts)")
    parser.add_argument("--quick", action="store_true", help="2 runs of each --help, 1 serve start-up")
    args = parser.parse_args()
    runs, serve_runs = (2, 1) if args.quick else (args.runs, args.serve_runs)

    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as folder:
        env = _environment(Path(folder))
        connector = [PYTHON, "-m", "connector"]
        helps = (["--help"], ["deid", "--help"])
        measured = best_of([FLOOR_CLI, *([*connector, *args_] for args_ in helps)], env, runs)
        floor_time, floor_rss = measured[0]
        rows.append(
            f"{'floor: import typer, rich.console, pydantic':<46} {floor_time:7.3f} s  {floor_rss:6.0f} MiB"
        )
        ratios: dict[str, float] = {}
        for args_, (seconds, rss) in zip(helps, measured[1:], strict=True):
            ratios[" ".join(args_)] = seconds / floor_time
            rows.append(
                f"{'connector ' + ' '.join(args_):<46} {seconds:7.3f} s  {rss:6.0f} MiB"
                f"  {seconds / floor_time:5.2f}x floor"
            )

        serve_floor = min(
            ready_after([PYTHON, "-c", FLOOR_SERVE, str(port)], port, env)
            for port in [free_port() for _ in range(serve_runs)]
        )
        rows.append(f"{'floor: fastapi + uvicorn app ready on /readyz':<46} {serve_floor:7.3f} s")
        serve_times = []
        for run in range(serve_runs):
            port = free_port()
            serve_env = _environment(Path(folder) / f"serve-{run}")  # a fresh data folder each time
            serve_times.append(ready_after([*connector, "serve", "--port", str(port)], port, serve_env))
        serve = min(serve_times)
        label = "connector serve ready on /readyz"
        rows.append(f"{label:<46} {serve:7.3f} s  {'':>10}  {serve / serve_floor:5.2f}x floor")

    print(f"best of {runs} (--help) and {serve_runs} (serve); Python {sys.version.split()[0]}")
    print("\n".join(rows))
    worst = max(ratios.values())
    print(
        f"goal --help within 2x of the framework's import: {'met' if worst <= 2 else 'MISSED'} "
        f"(worst {worst:.2f}x); serve ready in {serve:.2f} s, {serve / serve_floor:.1f}x a bare uvicorn app"
    )


if __name__ == "__main__":
    main()
