"""Runs a bundle's Rego unit tests on the real engine, with line coverage of the policy modules.

Discovery follows `opa test`: test modules are the `*_test.rego` files, tests are the rules named
`test_*` in them, and a test passes when it evaluates to true. It never changes what is active:
tests run on an engine of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from connector.policy.bundle import PolicyBundle
from connector.policy.engine import EmbeddedOpaBackend, PolicyEngineError

_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)


@dataclass(frozen=True)
class RegoTestResult:
    module: str
    package: str
    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class RegoTestReport:
    results: tuple[RegoTestResult, ...]
    covered_lines: int
    not_covered_lines: int
    files: dict[str, float] = field(default_factory=dict)  # policy module -> coverage %

    @property
    def failed(self) -> tuple[RegoTestResult, ...]:
        return tuple(result for result in self.results if not result.passed)

    @property
    def passed(self) -> bool:
        return bool(self.results) and not self.failed

    @property
    def coverage(self) -> float:
        total = self.covered_lines + self.not_covered_lines
        return 100.0 * self.covered_lines / total if total else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "tests": len(self.results),
            "failed": [
                {"module": r.module, "test": f"{r.package}.{r.name}", "detail": r.detail} for r in self.failed
            ],
            "coverage_percent": round(self.coverage, 1),
            "files": {name: round(value, 1) for name, value in sorted(self.files.items())},
        }


def discover(bundle: PolicyBundle) -> list[tuple[str, str, str]]:
    """(module, package, test rule) for every test of the bundle, in file order."""
    found = []
    for module, source in sorted(bundle.test_modules.items()):
        package = _PACKAGE.search(source)
        if package is None:
            continue  # the compiler reports a module without a package
        seen: set[str] = set()
        for name in _TEST_RULE.findall(source):
            if name not in seen:  # a test may have several bodies (incremental definitions)
                seen.add(name)
                found.append((module, package.group(1), name))
    return found


def _lines(ranges: list[dict[str, dict[str, int]]] | None) -> set[int]:
    lines: set[int] = set()
    for item in ranges or []:
        lines.update(range(item["start"]["row"], item["end"]["row"] + 1))
    return lines


def _outcomes(
    backend: EmbeddedOpaBackend, tests: list[tuple[str, str, str]]
) -> tuple[list[tuple[bool, str]], dict[str, Any] | None]:
    """(passed, detail) per test, and the coverage of the whole run.

    All tests run in one query: the engine prepares each distinct query afresh, which costs far
    more than evaluating it, so one query per test would make a suite of 150 tests take a minute.
    Each test is wrapped in a comprehension, so a false or undefined test cannot stop the others;
    only an evaluation error can, and then each test runs alone to find the one that fails.
    """
    query = "; ".join(
        f"t{index} := [x | x := data.{package}.{name}]" for index, (_, package, name) in enumerate(tests)
    )
    try:
        bindings, report = backend.evaluate_with_coverage(query)
    except PolicyEngineError:
        outcomes = []
        for _, package, name in tests:
            try:
                passed = backend.evaluate(f"{package}.{name}", None) is True
                outcomes.append((passed, "" if passed else "evaluated to false or undefined"))
            except PolicyEngineError as exc:
                outcomes.append((False, str(exc)))
        return outcomes, None
    values = bindings[0] if bindings else {}
    outcomes = []
    for index in range(len(tests)):
        passed = values.get(f"t{index}") == [True]
        outcomes.append((passed, "" if passed else "evaluated to false or undefined"))
    return outcomes, report


def run_tests(bundle: PolicyBundle) -> RegoTestReport:
    """Every test's outcome and the non-test modules' coverage; PolicyEngineError if it won't compile."""
    backend = EmbeddedOpaBackend()
    try:
        backend.load(bundle, {})
        tests = discover(bundle)
        outcomes, report = _outcomes(backend, tests) if tests else ([], None)
    finally:
        backend.close()
    results = tuple(
        RegoTestResult(module, package, name, passed, detail)
        for (module, package, name), (passed, detail) in zip(tests, outcomes, strict=True)
    )
    policy_files = set(bundle.modules) - set(bundle.test_modules)
    files = {}
    total_covered = total_missed = 0
    coverage_files = (report or {}).get("files") or {}
    for name in policy_files:
        entry = coverage_files.get(name) or {}
        covered = _lines(entry.get("covered"))
        missed = _lines(entry.get("not_covered")) - covered
        total_covered += len(covered)
        total_missed += len(missed)
        lines = len(covered) + len(missed)
        files[name] = 100.0 * len(covered) / lines if lines else 100.0
    return RegoTestReport(results, total_covered, total_missed, files)
