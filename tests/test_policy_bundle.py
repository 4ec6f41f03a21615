"""The shipped policy bundle: its Rego tests and examples give the same answers on both backends,
its consent rule compiles to SQL, and `policy check` catches what must never be activated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.policy.checker import check_bundle, has_errors
from connector.policy.decision import decision_from_document
from connector.policy.engine import PolicyBackend
from connector.policy.testing import discover, run_tests

pytest_plugins = ["tests.policy_backends"]

POLICIES = default_policies_dir()
EXAMPLE_STATE = POLICIES / "examples" / "state.json"
EXAMPLES = sorted(path for path in (POLICIES / "examples").glob("*.json") if path != EXAMPLE_STATE)


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return PolicyBundle.from_dir(POLICIES)


def example_state() -> dict[str, object]:
    state: dict[str, object] = json.loads(EXAMPLE_STATE.read_text())["connector"]["state"]
    return state


def test_the_rego_suite_passes_with_full_coverage(bundle: PolicyBundle) -> None:
    report = run_tests(bundle)
    assert report.passed, [f"{r.package}.{r.name}: {r.detail}" for r in report.failed]
    assert len(report.results) >= 50
    assert report.coverage >= 95, report.files
    packages = {result.package for result in report.results}
    for name in ("purposes", "permits", "consent", "jurisdiction", "cohort", "egress", "api", "decision"):
        assert f"connector.{name}_test" in packages


def test_the_same_rego_suite_passes_on_both_backends(bundle: PolicyBundle, backend: PolicyBackend) -> None:
    backend.load(bundle, {})
    tests = discover(bundle)
    failing = [
        f"{package}.{name}"
        for _, package, name in tests
        if backend.evaluate(f"{package}.{name}", None) is not True
    ]
    assert tests and failing == []


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_examples_decide_as_documented(bundle: PolicyBundle, backend: PolicyBackend, example: Path) -> None:
    document = json.loads(example.read_text())
    backend.load(bundle, example_state())
    decision = decision_from_document(
        backend.evaluate(f"connector.decision.{document['policy']}", document["input"]), None
    )
    expected = document["expected"]
    assert decision.allow is expected["allow"], decision.reasons
    for text in expected.get("reasons_include", []):
        assert any(text in reason for reason in decision.reasons), (text, decision.reasons)
    for text in expected.get("obligations_include", []):
        assert any(text in obligation for obligation in decision.obligations), (text, decision.obligations)


def test_examples_cover_every_denial_the_issue_names() -> None:
    names = {path.stem for path in EXAMPLES}
    assert len(names) >= 18


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_consent_rule_compiles_to_the_same_sql_on_both_backends(
    bundle: PolicyBundle, backend: PolicyBackend, dialect: str
) -> None:
    backend.load(bundle, example_state())
    conditions = {
        name: backend.compile_filter(
            "connector.consent.include", {"dataset": name}, ["input.patients"], dialect
        )  # type: ignore[arg-type]
        for name in ("demo-cohort", "demo-consented")
    }
    assert "opted-out" in str(conditions["demo-cohort"]) or "none" in str(conditions["demo-cohort"])
    assert conditions["demo-consented"] is not None and "consented" in conditions["demo-consented"]
    assert conditions["demo-cohort"] != conditions["demo-consented"]


def test_the_shipped_bundle_checks_clean(bundle: PolicyBundle) -> None:
    findings = check_bundle(bundle)
    assert [str(finding) for finding in findings] == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('package connector.x\n\ny := http.send({"method": "GET", "url": "http://x"})\n', "network"),
        ("package connector.x\n\ny := time.now_ns()\n", "clock"),
        ("package connector.x\n\ndefault allow := true\n", "fails open"),
        ("package connector.x\n\ny if {\n", "rego_parse_error"),
    ],
)
def test_check_refuses_what_must_never_be_activated(bundle: PolicyBundle, source: str, message: str) -> None:
    findings = check_bundle(PolicyBundle({**bundle.files, "connector/x.rego": source}))
    assert has_errors(findings)
    assert any(message in finding.message for finding in findings), [str(f) for f in findings]
