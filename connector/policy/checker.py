"""`policy check`: does a bundle compile, does it define the decisions, and does it follow our rules.

Errors stop activation; warnings are shown to the DPO. The lint rules are ours, aimed at policies
that decide about personal data: decisions must be reproducible (`policy diff` replays them), must
never reach the network, and must never default to allow. This module only reads a bundle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from connector.policy.bundle import BundleError, PolicyBundle
from connector.policy.decision import POLICIES
from connector.policy.engine import EmbeddedOpaBackend, PolicyEngineError

_LOCATION = re.compile(
    r"^\s*(?:\d+ errors? occurred:\s*)?(?P<file>[^\s:]+\.rego):(?P<line>\d+):\s*(?P<message>.+)$"
)
_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
# Builtins that make a decision depend on something other than its input, data and policy.
_FORBIDDEN_CALLS = {
    "http.send": "reaches the network; a policy must decide from its input and data alone",
    "net.lookup_ip_addr": "reaches the network (DNS)",
    "opa.runtime": "reads the engine's environment, which can hold secrets",
    "rand.intn": "makes decisions random, so they cannot be replayed",
    "uuid.rfc4122": "makes decisions differ between runs",
    "time.now_ns": "makes decisions depend on the clock, so `policy diff` cannot replay them; "
    "the connector checks permit validity before evaluation",
}
_DEFAULT_ALLOW = re.compile(r"^default\s+allow\s*:?=\s*true\b", re.MULTILINE)


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning
    file: str | None
    line: int | None
    message: str

    def __str__(self) -> str:
        where = (
            f"{self.file}:{self.line}: " if self.file and self.line else f"{self.file}: " if self.file else ""
        )
        return f"{self.severity}: {where}{self.message}"

    def to_json(self) -> dict[str, object]:
        return {"severity": self.severity, "file": self.file, "line": self.line, "message": self.message}


def _engine_findings(message: str) -> list[Finding]:
    findings = []
    for raw in message.splitlines():
        match = _LOCATION.match(raw)
        if match:
            findings.append(Finding("error", match["file"], int(match["line"]), match["message"].strip()))
    return findings or [Finding("error", None, None, message.strip())]


def _lint(bundle: PolicyBundle) -> list[Finding]:
    findings = []
    tested = {
        match.group(1).removesuffix("_test")
        for source in bundle.test_modules.values()
        if (match := _PACKAGE.search(source))
    }
    for name, source in sorted(bundle.modules.items()):
        is_test = name.endswith("_test.rego")
        for number, line in enumerate(source.splitlines(), start=1):
            code = line.split("#", 1)[0]
            for call, why in _FORBIDDEN_CALLS.items():
                if f"{call}(" in code and not is_test:
                    findings.append(Finding("error", name, number, f"{call} {why}"))
            if "print(" in code and not is_test:
                findings.append(
                    Finding("warning", name, number, "print() in a policy module: remove debug output")
                )
        match = _DEFAULT_ALLOW.search(source)
        if match and not is_test:
            at = source[: match.start()].count("\n") + 1
            findings.append(
                Finding("error", name, at, "`default allow := true` fails open; default to false")
            )
        package = _PACKAGE.search(source)
        if package and not is_test and package.group(1) not in tested:
            findings.append(
                Finding("warning", name, None, f"package {package.group(1)} has no *_test.rego tests")
            )
    return findings


def check_bundle(bundle: PolicyBundle) -> list[Finding]:
    """Every problem found; the bundle is activatable when none has severity "error"."""
    try:
        bundle.data  # noqa: B018 - parsing the data files is the check
    except BundleError as exc:
        return [Finding("error", None, None, str(exc))]
    backend = EmbeddedOpaBackend()
    try:
        backend.load(bundle, {})
    except PolicyEngineError as exc:
        return _engine_findings(str(exc)) + _lint(bundle)
    findings = []
    try:
        for policy in POLICIES:
            document = backend.evaluate(f"connector.decision.{policy}", {})
            if not isinstance(document, dict) or document.get("allow") is not False:
                findings.append(
                    Finding(
                        "error",
                        None,
                        None,
                        f"data.connector.decision.{policy} must be defined and deny an empty input "
                        f"(got {document!r:.120})",
                    )
                )
    except PolicyEngineError as exc:
        findings.extend(_engine_findings(str(exc)))
    finally:
        backend.close()
    return findings + _lint(bundle)


def has_errors(findings: list[Finding]) -> bool:
    return any(finding.severity == "error" for finding in findings)
