"""Check a dataset's HealthDCAT-AP record before anyone sees it, and say what is wrong in plain words.

`validate(desc)` builds the record, runs our own SHACL shapes (shapes/healthdcat-ap.shapes.ttl,
parsed once per process) and adds the checks SHACL cannot express well: language tags that are
not BCP 47, codes that are not in our vocabularies (modality, body part, country, language, health
category, theme, personal data, disease codes with their format and SNOMED CT check digit),
e-mail addresses and web addresses that are not ones, empty titles. Every problem is a
`Problem(severity, field, message)` whose field is a name a data steward knows ("contact point"),
never a SHACL path. `validate_graph` runs any shapes (the official DCAT-AP ones from
`official_shapes(folder)`, for instance) on any graph and reports the same way.

This module never changes a description, never fetches anything from the network (the caller
hands in the folder of the official shapes), and never lets a SHACL report's raw text reach a user.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from rdflib import Graph, URIRef
from rdflib.namespace import SH
from rdflib.term import Node

from catalog import vocab
from catalog.model import Agent, DatasetDescription, LangText
from catalog.record import disease_iri, record_graph
from catalog.vocab import RDF, UnknownCode, tag_is_valid

Severity = Literal["violation", "warning"]

SHAPES_FILE = Path(__file__).resolve().parent / "shapes" / "healthdcat-ap.shapes.ttl"
OFFICIAL_SHAPE_FILES = (
    "dcat-ap-3.0.0-shapes.ttl",
    "dcat-ap-3.0.0-range.ttl",
    "dcat-ap-3.0.0-mdr-vocabularies.shape.ttl",
)


@dataclass(frozen=True)
class Problem:
    severity: Severity
    field: str  # a readable name: "contact point", "title", "body part"
    message: str  # a sentence a data steward can act on


@dataclass(frozen=True)
class ValidationReport:
    violations: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()

    @property
    def conforms(self) -> bool:
        """True when nothing blocks publication (warnings do not)."""
        return not self.violations

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.violations + self.warnings


def _report(problems: Iterable[Problem]) -> ValidationReport:
    unique = list(dict.fromkeys(problems))  # one line per problem, in the order found
    return ValidationReport(
        violations=tuple(p for p in unique if p.severity == "violation"),
        warnings=tuple(p for p in unique if p.severity == "warning"),
    )


# --- SHACL ---------------------------------------------------------------------------------------
# pyshacl adds its "system triples" to a shapes graph on first use; serialise runs on one cached
# shapes graph so that never races with another thread reading it.
_SHACL_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def our_shapes() -> Graph:
    """Our HealthDCAT-AP shapes, parsed once per process."""
    return Graph().parse(SHAPES_FILE, format="turtle")


def official_shapes(folder: str | Path) -> Graph:
    """The three official DCAT-AP 3.0.0 SHACL files from `folder`, loaded into one shapes graph.
    FileNotFoundError names any file that is missing."""
    folder = Path(folder)
    missing = [name for name in OFFICIAL_SHAPE_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the official DCAT-AP shapes are not all in {folder}: missing {', '.join(missing)}"
        )
    graph = Graph()
    for name in OFFICIAL_SHAPE_FILES:
        graph.parse(folder / name, format="turtle")
    return graph


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _words(iri: Node) -> str:
    """A readable name from an IRI's local name: dcatap:applicableLegislation -> "applicable legislation"."""
    local = re.split(r"[#/]", str(iri))[-1]
    return _CAMEL.sub(" ", local).lower() or str(iri)


# Plain words for what a shape without its own message found wrong.
_COMPONENT_TEXT = {
    "MinCountConstraintComponent": "is missing",
    "MaxCountConstraintComponent": "has more values than allowed",
    "ClassConstraintComponent": "does not point to the right kind of thing",
    "NodeKindConstraintComponent": "has the wrong kind of value",
    "DatatypeConstraintComponent": "has a value of the wrong type",
    "PatternConstraintComponent": "has a value in the wrong format",
    "InConstraintComponent": "has a value that is not allowed",
    "HasValueConstraintComponent": "lacks a value it must have",
    "NodeConstraintComponent": "has a value that does not meet its rules",
}


def _problem(results: Graph, result: Node, shapes: Graph, data: Graph) -> Problem:
    severity: Severity = (
        "violation" if results.value(result, SH.resultSeverity) == SH.Violation else "warning"
    )
    source = results.value(result, SH.sourceShape)
    path = results.value(result, SH.resultPath)
    focus = results.value(result, SH.focusNode)
    name = shapes.value(source, SH.name) if source is not None else None
    if name is not None:
        field = str(name)
    else:
        field = _words(path) if isinstance(path, URIRef) else "record"
        kind = data.value(focus, RDF.type) if focus is not None else None
        if kind is not None and kind != vocab.DCAT.Dataset:
            field = f"{_words(kind)} {field}"
    own = shapes.value(source, SH.message) if source is not None else None
    if own is not None:
        return Problem(severity, field, str(own))
    # A shape with no message of its own (the official ones): its description, else plain words
    # for the constraint, with the offending value when there is one.
    described = shapes.value(source, SH.description) if source is not None else None
    component = str(results.value(result, SH.sourceConstraintComponent) or "").rsplit("#", 1)[-1]
    text = (
        str(described)
        if described is not None
        else f"The {field} {_COMPONENT_TEXT.get(component, 'is not valid')}."
    )
    value = results.value(result, SH.value)
    if value is not None and value != focus:
        text += f" (value: {value})"
    return Problem(severity, field, text)


def validate_graph(graph: Graph, shapes_graph: Graph) -> ValidationReport:
    """Validate `graph` against `shapes_graph` (no inference, as the EU validator does)."""
    # pyshacl loads with the first validation, not with this module: the connector's service and
    # CLI import the catalog code at start-up and most requests never validate.
    import pyshacl

    with _SHACL_LOCK:
        _, results, _ = pyshacl.validate(graph, shacl_graph=shapes_graph, inference="none")
    assert isinstance(results, Graph)
    problems = [
        _problem(results, result, shapes_graph, graph)
        for result in results.subjects(RDF.type, SH.ValidationResult)
        # Nested results (sh:detail) are explained by their parent's message.
        if (None, SH.detail, result) not in results
    ]
    problems.sort(key=lambda p: (p.severity != "violation", p.field, p.message))
    return _report(problems)


# --- Checks SHACL does not express well ----------------------------------------------------------
# A pragmatic address check (RFC 5322's dot-atom local part, a host name with at least one dot):
# it refuses what is certainly not an address; only sending a message proves one works.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@"
    + _LABEL
    + r"(?:\."
    + _LABEL
    + r")+$"
)


def email_is_valid(address: str) -> bool:
    return len(address) <= 254 and bool(_EMAIL.match(address))


def url_is_valid(url: str) -> bool:
    """An absolute http(s) URL with a host and no spaces."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not re.search(r"\s", url)


def _iri_is_valid(iri: str) -> bool:
    parts = urlsplit(iri)
    return (
        bool(parts.scheme)
        and (bool(parts.netloc) or parts.scheme == "urn")
        and not re.search(r'[\s<>"{}|\\^`]', iri)
    )


def _texts(desc: DatasetDescription) -> Iterator[tuple[str, LangText]]:
    steward = desc.steward
    yield "title", steward.title
    yield "description", steward.description
    yield "population coverage", steward.population_coverage
    yield "provenance", steward.provenance
    yield "Health Data Access Body name", steward.hdab.name
    if steward.publisher is not None:
        yield "publisher name", steward.publisher.name
    yield "service title", desc.facts.service.title


def _language_problems(desc: DatasetDescription) -> Iterator[Problem]:
    def bad(field: str, tag: str) -> Problem:
        return Problem(
            "violation",
            field,
            f'"{tag}" is not a valid language tag: use a BCP 47 tag such as en, fr or de-CH.',
        )

    for field, text in _texts(desc):
        for tag in text:
            if not tag_is_valid(tag):
                yield bad(field, tag)
    for tag in desc.steward.keywords:
        if not tag_is_valid(tag):
            yield bad("keyword", tag)


def _code_problems(desc: DatasetDescription) -> Iterator[Problem]:
    steward, facts = desc.steward, desc.facts

    def unknown(field: str, code: str, known: Iterable[str], hint: str) -> Problem:
        choices = ", ".join(sorted(known))
        return Problem("violation", field, f'"{code}" is not {hint}. Known codes: {choices}.')

    for code in steward.languages:
        if vocab.language(code) is None:
            yield unknown(
                "language", code, vocab.LANGUAGES, "a language code we know (ISO 639-1, such as en)"
            )
    for code in steward.health_categories:
        if vocab.health_category(code) is None:
            yield unknown("health category", code, vocab.HEALTH_CATEGORIES, "a HealthDCAT-AP health category")
    for code in steward.themes:
        if code not in vocab.DATA_THEMES:
            yield unknown("theme", code, vocab.DATA_THEMES, "an EU data theme")
    for code in steward.personal_data:
        if vocab.personal_data(code) is None:
            yield unknown("personal data", code, vocab.PERSONAL_DATA, "a DPV personal-data category we know")
    if steward.access_rights not in vocab.ACCESS_RIGHTS:
        yield unknown(
            "access rights", steward.access_rights, vocab.ACCESS_RIGHTS, "an access right for this data"
        )
    for code in facts.modalities:
        if vocab.modality(code) is None:
            yield unknown("modality", code, vocab.MODALITIES, "a DICOM modality (CID 29)")
    for part in facts.body_parts:
        if vocab.body_part(part) is None:
            yield unknown("body part", part, vocab.BODY_PARTS, "a DICOM Body Part Examined term we know")
    countries = (
        [("geographical coverage", code) for code in steward.spatial]
        + [("countries of the offer", code) for code in facts.offer.countries]
        + [("Health Data Access Body country", steward.hdab.country)]
    )
    if steward.publisher is not None:
        countries.append(("publisher country", steward.publisher.country))
    for field, code in countries:
        if vocab.country(code) is None:
            yield unknown(
                field, code, vocab.COUNTRIES, "a country code we know (ISO 3166-1 alpha-2, such as BE)"
            )
    for disease in steward.diseases:
        try:
            disease_iri(disease)
        except UnknownCode as exc:
            yield Problem("violation", "disease code", str(exc) + ".")
            continue
        if not disease.label.strip():
            yield Problem(
                "warning",
                "disease code",
                f'Give the {disease.system} code "{disease.code}" a label people can read.',
            )


def _agent_problems(agent: Agent, who: str) -> Iterator[Problem]:
    if agent.email and not email_is_valid(agent.email):
        yield Problem("violation", f"{who} e-mail", f'"{agent.email}" is not an e-mail address.')
    if agent.homepage and not url_is_valid(agent.homepage):
        yield Problem(
            "violation", f"{who} web page", f'"{agent.homepage}" is not a web address (http:// or https://).'
        )
    if agent.iri and not _iri_is_valid(agent.iri):
        yield Problem("violation", f"{who} identifier", f'"{agent.iri}" is not an IRI.')
    if not any(name.strip() for name in agent.name.values()):
        yield Problem("violation", f"{who} name", f"The {who} needs a name.")


def _contact_problems(desc: DatasetDescription) -> Iterator[Problem]:
    steward = desc.steward
    contact = steward.contact
    if not contact.name.strip():
        yield Problem("violation", "contact name", "The contact point needs a name (a team or a role).")
    if not contact.email.strip():
        yield Problem(
            "violation", "contact e-mail", "The contact point needs an e-mail address people can write to."
        )
    elif not email_is_valid(contact.email):
        yield Problem("violation", "contact e-mail", f'"{contact.email}" is not an e-mail address.')
    if contact.url and not url_is_valid(contact.url):
        yield Problem(
            "violation", "contact web page", f'"{contact.url}" is not a web address (http:// or https://).'
        )
    if steward.documentation and not url_is_valid(steward.documentation):
        yield Problem(
            "violation",
            "documentation",
            f'"{steward.documentation}" is not a web address (http:// or https://).',
        )
    yield from _agent_problems(steward.hdab, "Health Data Access Body")
    if steward.publisher is not None:
        yield from _agent_problems(steward.publisher, "publisher")
    service = desc.facts.service
    for field, value in (("access service", service.iri), ("endpoint URL", service.endpoint_url)):
        if not url_is_valid(value):
            yield Problem("violation", field, f'"{value}" is not a web address (http:// or https://).')
    if service.endpoint_description and not url_is_valid(service.endpoint_description):
        yield Problem(
            "violation", "endpoint description", f'"{service.endpoint_description}" is not a web address.'
        )
    if not _iri_is_valid(desc.facts.iri):
        yield Problem("violation", "identifier", f'"{desc.facts.iri}" is not an IRI.')


# Control characters other than TAB, LF and CR cannot be written in RDF/XML (XML 1.0) and are
# never meant in a title or a description.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _text_problems(desc: DatasetDescription) -> Iterator[Problem]:
    texts = [
        *_texts(desc),
        *(("keyword", {tag: " ".join(words)}) for tag, words in desc.steward.keywords.items()),
    ]
    for field, text in texts:
        if any(_CONTROL.search(value) for value in text.values()):
            yield Problem("violation", field, f"The {field} contains a control character: remove it.")
    if _CONTROL.search(desc.steward.contact.name):
        yield Problem(
            "violation", "contact name", "The contact name contains a control character: remove it."
        )
    for field, text in (("title", desc.steward.title), ("description", desc.steward.description)):
        for tag, value in text.items():
            if not value.strip():
                yield Problem("violation", field, f"The {field} in {tag} is empty.")
    for tag, words in desc.steward.keywords.items():
        if any(not word.strip() for word in words):
            yield Problem("violation", "keyword", f"A keyword in {tag} is empty.")
    if desc.facts.offer.k < 1:
        yield Problem("violation", "minimum cohort size", "The minimum cohort size k must be at least 1.")


def _only_valid_tags(desc: DatasetDescription) -> DatasetDescription:
    """The description without texts whose language tag is invalid, so the record can still be built
    and checked for everything else (the tags themselves are reported separately)."""

    def keep(text: LangText) -> LangText:
        return {tag: value for tag, value in text.items() if tag_is_valid(tag)}

    steward = desc.steward
    publisher = steward.publisher
    return replace(
        desc,
        steward=replace(
            steward,
            title=keep(steward.title),
            description=keep(steward.description),
            population_coverage=keep(steward.population_coverage),
            provenance=keep(steward.provenance),
            keywords={tag: words for tag, words in steward.keywords.items() if tag_is_valid(tag)},
            hdab=replace(steward.hdab, name=keep(steward.hdab.name)),
            publisher=replace(publisher, name=keep(publisher.name)) if publisher is not None else None,
        ),
        facts=replace(desc.facts, service=replace(desc.facts.service, title=keep(desc.facts.service.title))),
    )


def check_fields(desc: DatasetDescription) -> list[Problem]:
    """The plain-Python checks alone (no SHACL)."""
    return [
        *_language_problems(desc),
        *_text_problems(desc),
        *_contact_problems(desc),
        *_code_problems(desc),
    ]


def validate(desc: DatasetDescription) -> ValidationReport:
    """Every problem of the record of `desc`: the plain checks first, then our HealthDCAT-AP shapes."""
    own = check_fields(desc)
    # rdflib refuses a literal with a malformed language tag: leave those texts out of the graph
    # (they are reported above) so that everything else is still checked.
    buildable = _only_valid_tags(desc) if any(_language_problems(desc)) else desc
    shacl = validate_graph(record_graph(buildable), our_shapes())
    # The plain checks say more precisely what is wrong with a field (they quote the value), so a
    # field they reported is not reported a second time in the shapes' more general words.
    said = {p.field for p in own}
    return _report([*own, *(p for p in shacl.problems if p.field not in said)])
