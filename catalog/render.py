"""Catalog documents in JSON-LD, Turtle and RDF/XML, built so that serving a page is string work.

A record is rendered once, when it changes (`render_record`), into three store-friendly pieces:
compact JSON-LD node objects that use the one shared `CONTEXT` (kept as their JSON text), a Turtle
body that uses only the shared `TURTLE_HEADER` prefixes, and sorted N-Triples.
`RenderedRecord.to_json()/from_json()` keep them in a database text column. A catalog page
(`render_catalog_page`) is then a dcat:Catalog with a Hydra `hydra:PartialCollectionView` (first,
previous, next, last, totalItems, itemsPerPage: the paging DCAT-AP harvesters follow) joined to the
stored pieces of the records on the page: no RDF library parses or serialises anything per
request. RDF/XML is streamed from the stored N-Triples by a line reader made for exactly what
`ntriples()` writes (rdflib only as the fallback for a predicate that has no XML name).

`negotiate(accept)` picks the format for an HTTP Accept header, honouring q-values.

This module never changes what a record says (catalog.record decides that), never writes a prefix
that is not in the shared table, and never emits a blank node.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Any, Literal, get_args
from urllib.parse import urlencode

from rdflib import Graph, URIRef
from rdflib import Literal as RDFLiteral
from rdflib.term import Node

from catalog.model import CatalogInfo, DatasetDescription
from catalog.record import Triple, catalog_triples, new_graph, record_triples
from catalog.vocab import HYDRA, PREFIXES, RDF, XSD

Format = Literal["jsonld", "turtle", "rdfxml"]
FORMATS: tuple[Format, ...] = get_args(Format)
MEDIA_TYPES: Mapping[Format, str] = MappingProxyType(
    {"jsonld": "application/ld+json", "turtle": "text/turtle", "rdfxml": "application/rdf+xml"}
)
# Other names clients send for the same formats.
_ALIASES: Mapping[str, Format] = MappingProxyType(
    {"application/json": "jsonld", "application/x-turtle": "turtle", "application/xml": "rdfxml"}
)

# The one JSON-LD context of every document: prefixes only, so a node object means the same thing
# wherever it is pasted, and a consumer needs no remote context.
CONTEXT: Mapping[str, str] = MappingProxyType(dict(PREFIXES))
_CONTEXT_JSON = json.dumps(dict(CONTEXT), separators=(",", ":"))
TURTLE_HEADER = "".join(f"@prefix {prefix}: <{ns}> .\n" for prefix, ns in PREFIXES.items())
_STORE_VERSION = 1  # bump when the stored shape of RenderedRecord changes

# A local name we are willing to write as prefix:local (a strict subset of Turtle's PN_LOCAL and
# of what JSON-LD compacts unambiguously).
_LOCAL = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_NAMESPACES = sorted(PREFIXES.items(), key=lambda item: len(item[1]), reverse=True)


# --- Content negotiation -------------------------------------------------------------------------
def negotiate(accept: str | None) -> Format | None:
    """The format to serve for an Accept header: the acceptable one with the highest q-value (a
    more specific match wins over a wildcard; ties go to JSON-LD, then Turtle, then RDF/XML).
    No header or an empty one means JSON-LD; a header that accepts none of ours means None."""
    if accept is None or not accept.strip():
        return "jsonld"
    best: dict[Format, tuple[float, int]] = {}  # format -> (q, specificity) of its best range
    for item in accept.split(","):
        parts = [part.strip() for part in item.split(";")]
        media = parts[0].lower()
        if not media:
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0  # a q we cannot read: ignore this range (RFC 9110 allows 0 to 1)
                if not 0.0 <= q <= 1.0:
                    q = -1.0
        if q < 0:
            continue
        for fmt in FORMATS:
            specificity = _match(media, fmt)
            if specificity and (fmt not in best or specificity > best[fmt][1]):
                best[fmt] = (q, specificity)
    ranked = sorted(
        ((q, specificity, -FORMATS.index(fmt), fmt) for fmt, (q, specificity) in best.items() if q > 0),
        reverse=True,
    )
    return ranked[0][3] if ranked else None


def _match(media: str, fmt: Format) -> int:
    """How specifically `media` names `fmt`: 3 exactly, 2 by type/*, 1 by */*, 0 not at all."""
    own = MEDIA_TYPES[fmt]
    if media == own or _ALIASES.get(media) == fmt:
        return 3
    if media == "*/*":
        return 1
    if media.endswith("/*") and own.startswith(media[:-1]):
        return 2
    return 0


# --- Writers -------------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def _compact(iri: str) -> str | None:
    """`prefix:local` for an IRI in one of the shared namespaces, else None."""
    for prefix, namespace in _NAMESPACES:
        if iri.startswith(namespace) and _LOCAL.match(iri[len(namespace) :]):
            return f"{prefix}:{iri[len(namespace) :]}"
    return None


# IRIREF may not hold spaces, <>"{}|^`\ or control characters; UCHAR escapes are allowed.
_IRI_UNSAFE = re.compile(r'[\x00-\x20<>"{}|^`\\]')
_ECHAR = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_STRING_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')


def _uchar(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04X}"


def _echar(match: re.Match[str]) -> str:
    return _ECHAR.get(match.group()) or _uchar(match)


@lru_cache(maxsize=65536)
def _escape_iri(iri: str) -> str:
    return _IRI_UNSAFE.sub(_uchar, iri)


def _escape_string(text: str) -> str:
    return _STRING_UNSAFE.sub(_echar, text)


def _turtle_term(term: Node) -> str:
    if isinstance(term, URIRef):
        return _compact(str(term)) or f"<{_escape_iri(str(term))}>"
    if isinstance(term, RDFLiteral):
        text = f'"{_escape_string(str(term))}"'
        if term.language:
            return f"{text}@{term.language}"
        if term.datatype is not None:
            return f"{text}^^{_turtle_term(term.datatype)}"
        return text
    raise TypeError(f"no blank nodes in catalog documents (got {term!r})")


def _nt_term(term: Node) -> str:
    if isinstance(term, URIRef):
        return f"<{_escape_iri(str(term))}>"
    if isinstance(term, RDFLiteral):
        text = f'"{_escape_string(str(term))}"'
        if term.language:
            return f"{text}@{term.language}"
        if term.datatype is not None:
            return f"{text}^^<{_escape_iri(str(term.datatype))}>"
        return text
    raise TypeError(f"no blank nodes in catalog documents (got {term!r})")


def _grouped(triples: Iterable[Triple], first: str | None) -> list[tuple[URIRef, dict[URIRef, list[Node]]]]:
    """Subjects in a stable order (`first` leads), each with its predicates and de-duplicated objects."""
    subjects: dict[URIRef, dict[URIRef, dict[Node, None]]] = {}
    for s, p, o in triples:
        subjects.setdefault(s, {}).setdefault(p, {})[o] = None
    order = sorted(subjects, key=lambda s: (str(s) != first, str(s)))
    return [
        (
            s,
            {
                p: sorted(subjects[s][p], key=_turtle_term)
                for p in sorted(subjects[s], key=lambda p: (p != RDF.type, str(p)))
            },
        )
        for s in order
    ]


def turtle_body(triples: Iterable[Triple], first: str | None = None) -> str:
    """Turtle statements (no @prefix lines) using only the shared prefixes."""
    blocks = []
    for s, predicates in _grouped(triples, first):
        lines = []
        for p, objects in predicates.items():
            verb = "a" if p == RDF.type else _turtle_term(p)
            lines.append(f"{verb} {', '.join(_turtle_term(o) for o in objects)}")
        blocks.append(f"{_turtle_term(s)} " + " ;\n    ".join(lines) + " .\n")
    return "\n".join(blocks)


def ntriples(triples: Iterable[Triple]) -> str:
    lines = {f"{_nt_term(s)} {_nt_term(p)} {_nt_term(o)} .\n" for s, p, o in triples}
    return "".join(sorted(lines))


def _jsonld_value(term: Node) -> Any:
    if isinstance(term, URIRef):
        return {"@id": str(term)}
    if isinstance(term, RDFLiteral):
        if term.language:
            return {"@value": str(term), "@language": term.language}
        if term.datatype is not None:
            return {"@value": str(term), "@type": _compact(str(term.datatype)) or str(term.datatype)}
        return str(term)
    raise TypeError(f"no blank nodes in catalog documents (got {term!r})")


def jsonld_nodes(triples: Iterable[Triple], first: str | None = None) -> list[dict[str, Any]]:
    """Compact JSON-LD node objects (for `CONTEXT`), one per subject."""
    nodes = []
    for s, predicates in _grouped(triples, first):
        node: dict[str, Any] = {"@id": str(s)}
        for p, objects in predicates.items():
            if p == RDF.type:
                types = [_compact(str(o)) or str(o) for o in objects]
                node["@type"] = types[0] if len(types) == 1 else types
                continue
            values = [_jsonld_value(o) for o in objects]
            node[_compact(str(p)) or str(p)] = values[0] if len(values) == 1 else values
        nodes.append(node)
    return nodes


# --- Records -------------------------------------------------------------------------------------
def _json_array(nodes: list[dict[str, Any]]) -> str:
    return json.dumps(nodes, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class RenderedRecord:
    """One record, pre-rendered: what a catalog page is assembled from.

    The JSON-LD node objects are kept as their JSON text (`jsonld_text`, one JSON array), so a page
    of 100 records is joined without decoding and re-encoding 100 records' objects per request;
    `jsonld_nodes` decodes them for whoever wants the objects themselves."""

    iri: str
    jsonld_text: str  # compact JSON-LD node objects (for CONTEXT) as a JSON array
    turtle_body: str  # Turtle statements without @prefix lines (TURTLE_HEADER's prefixes)
    ntriples: str  # the same triples, sorted N-Triples

    @classmethod
    def from_nodes(
        cls, iri: str, jsonld_nodes: list[dict[str, Any]], turtle_body: str, ntriples: str
    ) -> RenderedRecord:
        return cls(iri=iri, jsonld_text=_json_array(jsonld_nodes), turtle_body=turtle_body, ntriples=ntriples)

    @cached_property
    def jsonld_nodes(self) -> list[dict[str, Any]]:
        """The compact JSON-LD node objects of the record (they use `CONTEXT`)."""
        nodes: list[dict[str, Any]] = json.loads(self.jsonld_text)
        return nodes

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict for storage (json.dumps it into a text column)."""
        return {
            "version": _STORE_VERSION,
            "iri": self.iri,
            "jsonld": self.jsonld_text,
            "turtle_body": self.turtle_body,
            "ntriples": self.ntriples,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RenderedRecord:
        """The record `to_json` stored; ValueError when it is not one (or of another version)."""
        if not isinstance(data, Mapping) or data.get("version") != _STORE_VERSION:
            raise ValueError(
                f"not a stored rendered record of version {_STORE_VERSION}: render the record again"
            )
        iri, text, body, nt = (data.get(k) for k in ("iri", "jsonld", "turtle_body", "ntriples"))
        if not (
            isinstance(iri, str) and isinstance(text, str) and isinstance(body, str) and isinstance(nt, str)
        ):
            raise ValueError("a stored rendered record lacks its iri, jsonld, turtle_body or ntriples")
        if not (text.startswith("[") and text.endswith("]")):
            raise ValueError(
                "a stored rendered record's JSON-LD is not a JSON array: render the record again"
            )
        return cls(iri=iri, jsonld_text=text, turtle_body=body, ntriples=nt)


def render_record(desc: DatasetDescription) -> RenderedRecord:
    """Render the record of `desc` once, for storage and page assembly."""
    triples = record_triples(desc)
    iri = desc.facts.iri
    return RenderedRecord.from_nodes(
        iri=iri,
        jsonld_nodes=jsonld_nodes(triples, iri),
        turtle_body=turtle_body(triples, iri),
        ntriples=ntriples(triples),
    )


def _jsonld_document(nodes: list[dict[str, Any]], *, indent: int | None = None) -> str:
    # Pages are for machines: compact separators; a single record is indented for people.
    separators = (",", ": ") if indent else (",", ":")
    document = {"@context": dict(CONTEXT), "@graph": nodes}
    return json.dumps(document, ensure_ascii=False, indent=indent, separators=separators)


# RDF/XML is written from the stored N-Triples with a line reader made for exactly what
# `ntriples()` writes, and a streaming writer; rdflib is the fallback for what that writer cannot
# express (a predicate with no XML name in our namespaces), never the normal path.
_NT_LINE = re.compile(
    r'^<([^>]*)> <([^>]*)> (?:<([^>]*)>|"((?:[^"\\]|\\.)*)"(?:@([A-Za-z][A-Za-z0-9-]*)|\^\^<([^>]*)>)?) \.$'
)
_NT_ESCAPE = re.compile(r'\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[tbnrf"\'\\])')
_NT_ECHAR = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_XML_HEADER = (
    '<?xml version="1.0" encoding="utf-8"?>\n<rdf:RDF'
    + "".join(f'\n   xmlns:{prefix}="{ns}"' for prefix, ns in PREFIXES.items())
    + ">\n"
)


def _nt_unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return _NT_ESCAPE.sub(lambda m: _NT_ECHAR.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), text)


def _xml(text: str) -> str:
    """Escaped for XML content and attributes; CR, LF and TAB as character references, which XML
    parsers would otherwise normalise away (CR in content, all three in attributes)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    return text.replace("\r", "&#13;").replace("\n", "&#10;").replace("\t", "&#9;")


class _NoXmlName(ValueError):
    pass


def _rdfxml_lines(lines: Iterable[str], out: list[str]) -> None:
    """Append rdf:Description elements for N-Triples `lines` (grouped by subject, as sorted)."""
    subject = None
    for line in lines:
        match = _NT_LINE.match(line)
        if match is None:
            raise _NoXmlName(f"not an N-Triples line this writer reads: {line[:80]!r}")
        s, p, iri, text, lang, datatype = match.groups()
        if s != subject:
            if subject is not None:
                out.append("  </rdf:Description>\n")
            out.append(f'  <rdf:Description rdf:about="{_xml(_nt_unescape(s))}">\n')
            subject = s
        name = _compact(_nt_unescape(p))
        if name is None:
            raise _NoXmlName(p)
        if iri is not None:
            out.append(f'    <{name} rdf:resource="{_xml(_nt_unescape(iri))}"/>\n')
            continue
        value = _xml(_nt_unescape(text))
        if lang:
            out.append(f'    <{name} xml:lang="{lang}">{value}</{name}>\n')
        elif datatype:
            out.append(f'    <{name} rdf:datatype="{_xml(_nt_unescape(datatype))}">{value}</{name}>\n')
        else:
            out.append(f"    <{name}>{value}</{name}>\n")
    if subject is not None:
        out.append("  </rdf:Description>\n")


def _rdfxml(ntriples_parts: Iterable[str], extra: Iterable[Triple] = ()) -> str:
    parts = [ntriples(extra), *ntriples_parts]
    out = [_XML_HEADER]
    try:
        for part in parts:
            _rdfxml_lines(part.splitlines(), out)
    except _NoXmlName:
        graph: Graph = new_graph()
        for part in parts:
            if part:
                graph.parse(data=part, format="nt")
        return graph.serialize(format="xml")
    out.append("</rdf:RDF>\n")
    return "".join(out)


def render_stored(record: RenderedRecord, fmt: Format) -> str:
    """A standalone document of one stored record."""
    if fmt == "jsonld":
        return _jsonld_document(record.jsonld_nodes, indent=2)
    if fmt == "turtle":
        return TURTLE_HEADER + "\n" + record.turtle_body
    if fmt == "rdfxml":
        return _rdfxml([record.ntriples])
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def render_description(desc: DatasetDescription, fmt: Format) -> str:
    """A standalone document of the record of `desc`."""
    return render_stored(render_record(desc), fmt)


# --- Catalog pages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PageInfo:
    """Where a page sits in its collection. `url` is the collection's URL with any search query
    but without the page parameter; links add `page` (and `per_page`, so a harvester following
    them keeps the page size it asked for)."""

    page: int
    per_page: int
    total: int
    url: str

    def __post_init__(self) -> None:
        if self.page < 1 or self.per_page < 1 or self.total < 0:
            raise ValueError("a page needs page >= 1, per_page >= 1 and total >= 0")

    @property
    def last(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    def link(self, page: int) -> str:
        params = {"page": page}
        if not re.search(r"[?&]per_page=", self.url):
            params["per_page"] = self.per_page
        return f"{self.url}{'&' if '?' in self.url else '?'}{urlencode(params)}"


def page_triples(info: CatalogInfo, records: Sequence[RenderedRecord], page: PageInfo) -> list[Triple]:
    """The catalog's own triples for one page: dcat:Catalog listing the page's datasets, plus the
    Hydra view with the links to the first, previous, next and last pages."""
    triples = catalog_triples(info, [record.iri for record in records])
    view = URIRef(page.link(page.page))
    count = XSD.nonNegativeInteger
    triples += [
        (URIRef(info.iri), HYDRA.view, view),
        (view, RDF.type, HYDRA.PartialCollectionView),
        (view, HYDRA.first, URIRef(page.link(1))),
        (view, HYDRA.last, URIRef(page.link(page.last))),
        (view, HYDRA.totalItems, RDFLiteral(str(page.total), datatype=count)),
        (view, HYDRA.itemsPerPage, RDFLiteral(str(page.per_page), datatype=count)),
    ]
    if page.page > 1:
        # Past the end, "previous" leads back to the last page that has items.
        triples.append((view, HYDRA.previous, URIRef(page.link(min(page.page - 1, page.last)))))
    if page.page < page.last:
        triples.append((view, HYDRA.next, URIRef(page.link(page.page + 1))))
    return triples


def render_catalog_page(
    info: CatalogInfo, records: Sequence[RenderedRecord], page: PageInfo, fmt: Format
) -> str:
    """One page of the catalog: the catalog and its Hydra view, then the records on the page.
    JSON-LD and Turtle are joined from the stored pieces; RDF/XML is rebuilt with rdflib."""
    own = page_triples(info, records, page)
    if fmt == "jsonld":
        # '{"@context":{...},"@graph":[catalog nodes, record 1 nodes, ...]}', joined as text.
        pieces = [_json_array(jsonld_nodes(own, info.iri))[1:-1]]
        pieces += [record.jsonld_text[1:-1] for record in records if len(record.jsonld_text) > 2]
        return f'{{"@context":{_CONTEXT_JSON},"@graph":[{",".join(pieces)}]}}'
    if fmt == "turtle":
        return "\n".join([TURTLE_HEADER, turtle_body(own, info.iri), *(r.turtle_body for r in records)])
    if fmt == "rdfxml":
        return _rdfxml((record.ntriples for record in records), own)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
