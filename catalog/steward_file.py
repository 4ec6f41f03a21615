"""Read what a data steward writes about a dataset: a TOML file, or the same fields as JSON.

`load_steward_fields(text, source)` parses the steward's TOML file (see examples/demo-cohort.toml,
which explains every key) into `StewardFields`; `steward_fields_from_mapping(data)` does the same
for an already-parsed mapping (the JSON body of the API, where dates are "YYYY-MM-DD" strings);
`steward_fields_to_mapping(fields)` is the inverse, JSON-ready, for showing and storing.

Anything wrong raises `StewardFileError` listing EVERY problem found (unknown keys, wrong types,
missing mandatory fields, bad dates, bad language tags), each with its key path
("contact.email", "diseases[2].code") in plain words, so the steward fixes the file in one go.
Whether a value is acceptable in a record (a known code, a non-empty title, a real e-mail
address) is the record's business: catalog.validate reports that, with every other problem.
This module never reads or writes a file itself and never fills in a value the steward did not
write (except the documented defaults of StewardFields).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING
from dataclasses import fields as dataclass_fields
from datetime import date, datetime
from typing import Any, cast, get_args

from catalog.model import AccessRights, Agent, Code, CodeSystem, Contact, LangText, Period, StewardFields
from catalog.vocab import tag_is_valid

_ACCESS_RIGHTS = get_args(AccessRights)
_CODE_SYSTEMS = get_args(CodeSystem)
_TYPE_NAMES = {
    str: "text",
    list: "a list",
    dict: "a table",
    int: "a number",
    float: "a number",
    bool: "true/false",
}


class StewardFileError(ValueError):
    """The steward's fields have problems; `problems` lists every one, as "key.path: what is wrong"."""

    def __init__(self, problems: list[str], source: str = "<file>") -> None:
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        super().__init__(
            f"{source} has {count} problem{'s' if count != 1 else ''}:"
            + "".join(f"\n  - {problem}" for problem in self.problems)
        )


def _kind(value: Any) -> str:
    if isinstance(value, datetime):
        return "a date and time"
    if isinstance(value, date):
        return "a date"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class _Reader:
    """Walks the mapping, collecting problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def table(
        self, value: Any, path: str, known: tuple[str, ...], required: tuple[str, ...]
    ) -> dict[str, Any]:
        """A table with only `known` keys and all `required` ones; {} (and a problem) otherwise."""
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a table of keys ({', '.join(known)}), got {_kind(value)}")
            return {}
        for key in value:
            if key not in known:
                self.problem(_join(path, key), f"unknown key; the keys here are: {', '.join(known)}")
        for key in required:
            if key not in value:
                self.problem(_join(path, key), "missing; this field is mandatory")
        return {key: value[key] for key in known if key in value}

    def text(self, value: Any, path: str) -> str:
        # An empty text is well formed: whether the record may have it is catalog.validate's call,
        # which then reports it together with every other problem of the record.
        if not isinstance(value, str):
            self.problem(path, f"expected text, got {_kind(value)}")
            return ""
        return value

    def texts(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.problem(path, f'expected a list of texts, e.g. ["a", "b"], got {_kind(value)}')
            return ()
        items = []
        for index, item in enumerate(value, start=1):
            items.append(self.text(item, f"{path}[{index}]"))
        return tuple(items)

    def lang_text(self, value: Any, path: str) -> LangText:
        """A table of language tag = text, e.g. { en = "...", fr = "..." }."""
        if not isinstance(value, Mapping):
            self.problem(
                path, f'expected a table of language = text, e.g. {{ en = "..." }}, got {_kind(value)}'
            )
            return {}
        result: LangText = {}
        for tag, text in value.items():
            self.language_tag(tag, _join(path, tag))
            result[tag] = self.text(text, _join(path, tag))
        return result

    def language_tag(self, tag: str, path: str) -> None:
        if not tag_is_valid(tag):
            self.problem(
                path, f'"{tag}" is not a valid language tag: use a BCP 47 tag such as en, fr or de-CH'
            )

    def date(self, value: Any, path: str) -> date | None:
        if isinstance(value, datetime):
            self.problem(path, "expected a date without a time, e.g. 2024-12-31")
            return None
        if isinstance(value, date):
            return value
        if isinstance(value, str):
            # JSON has no date type: the API sends "YYYY-MM-DD" strings (nothing looser).
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                try:
                    return date.fromisoformat(value)
                except ValueError:
                    pass
            self.problem(path, f'"{value}" is not a date: write YYYY-MM-DD, e.g. 2024-12-31')
            return None
        self.problem(path, f"expected a date (YYYY-MM-DD), got {_kind(value)}")
        return None

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        text = self.text(value, path)
        if isinstance(value, str) and text not in choices:
            listed = " or ".join(f'"{choice}"' for choice in choices)
            self.problem(path, f'must be {listed}, not "{text}"')
        return text


def _join(path: str, key: str) -> str:
    # Keys that are not bare TOML keys (a bad language tag, say) are quoted so the path reads right.
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z0-9_-]+", str(key)) else f'{path}."{key}"'


_CONTACT_KEYS = ("name", "email", "url")
_AGENT_KEYS = ("name", "country", "iri", "homepage", "email")
_CODE_KEYS = ("system", "code", "label")
_PERIOD_KEYS = ("start", "end")


def _contact(r: _Reader, value: Any, path: str) -> Contact:
    data = r.table(value, path, _CONTACT_KEYS, ("name", "email"))
    return Contact(
        name=r.text(data.get("name", ""), f"{path}.name"),
        email=r.text(data.get("email", ""), f"{path}.email"),
        url=r.text(data.get("url", ""), f"{path}.url"),
    )


def _agent(r: _Reader, value: Any, path: str) -> Agent:
    data = r.table(value, path, _AGENT_KEYS, ("name", "country"))
    return Agent(
        name=r.lang_text(data.get("name", {}), f"{path}.name"),
        country=r.text(data.get("country", ""), f"{path}.country"),
        iri=r.text(data.get("iri", ""), f"{path}.iri"),
        homepage=r.text(data.get("homepage", ""), f"{path}.homepage"),
        email=r.text(data.get("email", ""), f"{path}.email"),
    )


def _period(r: _Reader, value: Any, path: str) -> Period:
    data = r.table(value, path, _PERIOD_KEYS, ())
    start = r.date(data["start"], f"{path}.start") if "start" in data else None
    end = r.date(data["end"], f"{path}.end") if "end" in data else None
    if start is not None and end is not None and end < start:
        r.problem(path, f"ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    return Period(start, end)


def _diseases(r: _Reader, value: Any, path: str) -> tuple[Code, ...]:
    if not isinstance(value, list):
        r.problem(path, f"expected a list of tables ([[diseases]] in TOML), got {_kind(value)}")
        return ()
    codes = []
    for index, item in enumerate(value, start=1):
        where = f"{path}[{index}]"
        data = r.table(item, where, _CODE_KEYS, ("system", "code"))
        # Any other system is a recorded problem, and a file with problems is refused as a whole.
        chosen = r.choice(data.get("system", _CODE_SYSTEMS[0]), f"{where}.system", _CODE_SYSTEMS)
        system = cast(CodeSystem, chosen)
        codes.append(
            Code(
                system=system,
                code=r.text(data.get("code", ""), f"{where}.code"),
                label=r.text(data.get("label", ""), f"{where}.label"),
            )
        )
    return tuple(codes)


def _keywords(r: _Reader, value: Any, path: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        r.problem(
            path,
            f'expected a table of language = list of keywords, e.g. {{ en = ["a", "b"] }}, '
            f"got {_kind(value)}",
        )
        return {}
    result = {}
    for tag, words in value.items():
        r.language_tag(tag, _join(path, tag))
        result[tag] = r.texts(words, _join(path, tag))
    return result


def _codes(r: _Reader, value: Any, path: str) -> tuple[str, ...]:
    return r.texts(value, path)


def _languages(r: _Reader, value: Any, path: str) -> tuple[str, ...]:
    codes = r.texts(value, path)
    for index, code in enumerate(codes, start=1):
        if code and not re.fullmatch(r"[a-z]{2}", code):
            r.problem(f"{path}[{index}]", f'"{code}" is not a two-letter ISO 639-1 language code such as en')
    return codes


# Each key of the file: how to read it. Order = the order of StewardFields, for messages.
_READERS: dict[str, Callable[[_Reader, Any, str], Any]] = {
    "title": lambda r, v, p: r.lang_text(v, p),
    "description": lambda r, v, p: r.lang_text(v, p),
    "contact": _contact,
    "hdab": _agent,
    "health_categories": _codes,
    "publisher": _agent,
    "keywords": _keywords,
    "themes": _codes,
    "diseases": _diseases,
    "population_coverage": lambda r, v, p: r.lang_text(v, p),
    "temporal": _period,
    "retention": _period,
    "spatial": _codes,
    "personal_data": _codes,
    "access_rights": lambda r, v, p: r.choice(v, p, _ACCESS_RIGHTS),
    "languages": _languages,
    "documentation": lambda r, v, p: r.text(v, p),
    "provenance": lambda r, v, p: r.lang_text(v, p),
}
_MANDATORY = tuple(
    f.name for f in dataclass_fields(StewardFields) if f.default is MISSING and f.default_factory is MISSING
)
# A field added to StewardFields must get a reader here (and a line in examples/demo-cohort.toml).
assert set(_READERS) == {f.name for f in dataclass_fields(StewardFields)}, (
    "a StewardFields field has no reader"
)


def steward_fields_from_mapping(data: Mapping[str, Any], source: str = "<description>") -> StewardFields:
    """StewardFields from a parsed mapping (TOML or JSON); StewardFileError lists every problem."""
    if not isinstance(data, Mapping):
        raise StewardFileError([f"expected a table of fields, got {_kind(data)}"], source)
    r = _Reader()
    for key in data:
        if key not in _READERS:
            r.problem(str(key), f"unknown key; the keys are: {', '.join(_READERS)}")
    for key in _MANDATORY:
        if key not in data:
            r.problem(key, "missing; this field is mandatory")
    values = {key: reader(r, data[key], key) for key, reader in _READERS.items() if key in data}
    if r.problems:
        raise StewardFileError(r.problems, source)
    return StewardFields(**values)


def load_steward_fields(text: str, source: str = "<file>") -> StewardFields:
    """StewardFields from the text of a steward's TOML file; StewardFileError lists every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StewardFileError([f"not valid TOML: {exc}"], source) from None
    return steward_fields_from_mapping(data, source)


def _agent_mapping(agent: Agent) -> dict[str, Any]:
    return {
        "name": dict(agent.name),
        "country": agent.country,
        "iri": agent.iri,
        "homepage": agent.homepage,
        "email": agent.email,
    }


def _period_mapping(period: Period) -> dict[str, str]:
    result = {}
    if period.start is not None:
        result["start"] = period.start.isoformat()
    if period.end is not None:
        result["end"] = period.end.isoformat()
    return result


def steward_fields_to_mapping(fields: StewardFields) -> dict[str, Any]:
    """A JSON-ready mapping that `steward_fields_from_mapping` reads back to equal fields."""
    result: dict[str, Any] = {
        "title": dict(fields.title),
        "description": dict(fields.description),
        "contact": {"name": fields.contact.name, "email": fields.contact.email, "url": fields.contact.url},
        "hdab": _agent_mapping(fields.hdab),
        "health_categories": list(fields.health_categories),
        "keywords": {tag: list(words) for tag, words in fields.keywords.items()},
        "themes": list(fields.themes),
        "diseases": [{"system": c.system, "code": c.code, "label": c.label} for c in fields.diseases],
        "population_coverage": dict(fields.population_coverage),
        "spatial": list(fields.spatial),
        "personal_data": list(fields.personal_data),
        "access_rights": fields.access_rights,
        "languages": list(fields.languages),
        "documentation": fields.documentation,
        "provenance": dict(fields.provenance),
    }
    if fields.publisher is not None:
        result["publisher"] = _agent_mapping(fields.publisher)
    if fields.temporal is not None:
        result["temporal"] = _period_mapping(fields.temporal)
    if fields.retention is not None:
        result["retention"] = _period_mapping(fields.retention)
    return result
