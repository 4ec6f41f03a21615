"""Evaluation of DPO-supplied (draft) bundles in a child process with a deadline.

The embedded OPA engine has no cancellation, so a draft's Rego (`policy check`, `policy test`,
`policy diff`, the checks of an activation) runs in a fresh `python -m connector.policy.sandbox`
that is killed when `policy_eval_timeout_seconds` pass: a 3000x3000 loop then costs the caller the
deadline and an `evaluation_timeout` error, never a held API worker or CLI. Decisions on the ACTIVE
policy never come here: they keep the in-process engine (`PolicyService.decide`).

The child reads one JSON request on stdin and writes one JSON answer on stdout; it never touches the
database, the network or the active policy, and the parent never trusts its answer beyond the
shapes rebuilt here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from connector.policy.bundle import BundleError, PolicyBundle
from connector.policy.checker import Finding, check_bundle, has_errors
from connector.policy.engine import EmbeddedOpaBackend, PolicyEngineError
from connector.policy.invariants import InvariantReport, InvariantResult, check_invariants
from connector.policy.testing import RegoTestReport, RegoTestResult, run_tests

DEFAULT_TIMEOUT_SECONDS = 10.0


class EvaluationTimeout(PolicyEngineError):
    """The draft's evaluation did not finish within the deadline (reason code `evaluation_timeout`)."""

    code = "evaluation_timeout"


# -- shapes that cross the process boundary ---------------------------------------------------------


def report_to_dict(report: RegoTestReport) -> dict[str, Any]:
    return {
        "results": [asdict(result) for result in report.results],
        "covered_lines": report.covered_lines,
        "not_covered_lines": report.not_covered_lines,
        "files": dict(report.files),
    }


def report_from_dict(document: dict[str, Any]) -> RegoTestReport:
    return RegoTestReport(
        tuple(RegoTestResult(**result) for result in document["results"]),
        int(document["covered_lines"]),
        int(document["not_covered_lines"]),
        {str(name): float(value) for name, value in document["files"].items()},
    )


def findings_from_list(items: list[dict[str, Any]]) -> tuple[Finding, ...]:
    return tuple(Finding(**item) for item in items)


def invariants_from_list(items: list[dict[str, Any]]) -> InvariantReport:
    return InvariantReport(tuple(InvariantResult(**item) for item in items))


# -- the child's side -------------------------------------------------------------------------------


def _replay(bundle: PolicyBundle, state: dict[str, Any], items: list[list[Any]]) -> list[Any]:
    """The draft's decision document (or {"error": ...}) for each recorded (policy, input)."""
    backend = EmbeddedOpaBackend()
    try:
        backend.load(bundle, state)
    except PolicyEngineError as exc:
        backend.close()
        return [{"compile_error": str(exc)}]
    answers: list[Any] = []
    try:
        for policy, recorded_input in items:
            try:
                answers.append({"document": backend.evaluate(f"connector.decision.{policy}", recorded_input)})
            except PolicyEngineError as exc:
                answers.append({"error": str(exc)})
    finally:
        backend.close()
    return answers


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    bundle = PolicyBundle(request["files"])
    op = request["op"]
    if op == "check":
        return {"findings": [finding.to_json() for finding in check_bundle(bundle)]}
    if op == "test":
        return {"report": report_to_dict(run_tests(bundle))}
    if op == "verify":
        findings = check_bundle(bundle)
        if has_errors(findings):
            return {"findings": [f.to_json() for f in findings], "report": None, "invariants": None}
        return {
            "findings": [f.to_json() for f in findings],
            "report": report_to_dict(run_tests(bundle)),
            "invariants": [asdict(result) for result in check_invariants(bundle).results],
        }
    if op == "replay":
        return {"answers": _replay(bundle, request["state"], request["items"])}
    raise ValueError(f"unknown sandbox operation {op!r}")


def main() -> None:
    request = json.loads(sys.stdin.read())
    try:
        answer = _serve(request)
    except (PolicyEngineError, BundleError) as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer))


# -- the parent's side ------------------------------------------------------------------------------


def run(op: str, bundle: PolicyBundle, timeout: float, **extra: Any) -> dict[str, Any]:
    """The child's answer to `op` on `bundle`; EvaluationTimeout past `timeout` seconds,
    PolicyEngineError when the bundle does not compile or the child fails."""
    payload = json.dumps({"op": op, "files": dict(bundle.files), **extra})
    package_root = str(Path(__file__).resolve().parents[2])
    environment = dict(os.environ)
    # The child must import this very connector package, wherever the parent was started from.
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    try:
        completed = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
            [sys.executable, "-m", "connector.policy.sandbox"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired:
        # subprocess.run has killed the child: the runaway evaluation is gone with it.
        raise EvaluationTimeout(
            f"evaluating the draft bundle took longer than {timeout:g} s and was stopped "
            "(policy_eval_timeout_seconds); look for rules that iterate over large ranges"
        ) from None
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or [f"exit status {completed.returncode}"]
        raise PolicyEngineError(f"evaluating the draft bundle failed: {tail[0][:300]}")
    try:
        answer = json.loads(completed.stdout)
    except json.JSONDecodeError:
        raise PolicyEngineError("evaluating the draft bundle failed: no answer from the evaluator") from None
    if not isinstance(answer, dict):
        raise PolicyEngineError("evaluating the draft bundle failed: a malformed answer")
    if "error" in answer:
        raise PolicyEngineError(str(answer["error"]))
    return answer


def check(bundle: PolicyBundle, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> list[Finding]:
    """`check_bundle` of a draft, under the deadline."""
    return list(findings_from_list(run("check", bundle, timeout)["findings"]))


def test(bundle: PolicyBundle, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> RegoTestReport:
    """`run_tests` of a draft, under the deadline (PolicyEngineError if it won't compile)."""
    return report_from_dict(run("test", bundle, timeout)["report"])


test.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite its name


if __name__ == "__main__":
    main()
