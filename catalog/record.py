"""The HealthDCAT-AP record of one imaging dataset, and the dcat:Catalog that lists records.

`record_graph(desc)` turns a `DatasetDescription` into the RDF graph of one dcat:Dataset with
everything HealthDCAT-AP asks of a non-public health dataset: multilingual title and description,
publisher, contact point, Health Data Access Body, themes and health categories, counts (exact or
suppressed), the typical age range, coded content (DICOM modalities, body parts, diseases), the DPV
purposes, legal basis and personal-data categories, the applicable legislation, an ODRL offer with
the DPO's terms, and one distribution whose access service is the compute-to-data endpoint.

Choices, with their sources:
- Modalities, body parts and diseases are `healthdcatap:hasCodeValues` concepts (skos:Concept with
  prefLabel, notation and inScheme), and `healthdcatap:hasCodingSystem` names the Wikidata IRIs of
  ICD-10 (P494) and SNOMED CT (P5806) when disease codes use them (ckanext-dcat
  docs/mapping-healthdcat.md; HealthDCAT-AP hasCodeValues). Body parts are their SNOMED CT concept
  where DICOM PS3.16 Annex L gives one we are sure of, else a node under the dataset that keeps the
  DICOM term as skos:notation (DICOM publishes no IRI per Body Part Examined term).
- Counts: `xsd:nonNegativeInteger` when exact; when suppressed, the plain string the policy
  gives ("<10"), so nobody can read a small count from the record.
- The offer's minimum cohort size uses `odrl:absoluteSize` ("measure of the resource") with
  `odrl:gteq` k (xsd:integer) and `odrl:unit dpv:DataSubject`: the asset the model runs on must
  hold at least k patients. `odrl:count` was rejected: it counts executions of the action.
- The legal basis is stated on the offer with `dpv:hasLegalBasis` (DPV is designed to annotate
  ODRL policies) and in a plain-language `rdfs:comment`.
- The policy hangs off the dataset (DCAT 3, Dataspace Protocol catalogs) and off its
  distribution (DCAT-AP 3), the same node in both places.

This module never uses blank nodes: every auxiliary node (contact, periods, offer, constraints,
distribution, agents without an IRI) gets an IRI under its owner's IRI (`<dataset>#contact`), so
the records of many datasets can be concatenated into one document without a clash. It never
publishes an IRI for a code it does not know (an unknown code is left out and `catalog.validate`
reports it), never offers a download URL, and never computes or suppresses a count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime

from rdflib import Graph, Literal, URIRef
from rdflib.term import Node

from catalog import vocab
from catalog.model import Agent, CatalogInfo, Code, DatasetDescription, LangText, Period, PublishedCount
from catalog.vocab import (
    ADMS,
    DCAT,
    DCATAP,
    DCT,
    DPV,
    ELI,
    FOAF,
    HEALTHDCATAP,
    LOCN,
    ODRL,
    RDF,
    RDFS,
    SKOS,
    VCARD,
    XSD,
    Term,
    UnknownCode,
)

Triple = tuple[URIRef, URIRef, Node]

LEGISLATION = (vocab.LEGISLATION_EHDS, vocab.LEGISLATION_GDPR)


def aux_iri(owner: str, name: str) -> URIRef:
    """The IRI of an auxiliary node of `owner`: `<owner>#name`, or `<owner>-name` when the owner's
    IRI already has a fragment (a second '#' would not be an IRI)."""
    return URIRef(f"{owner}{'-' if '#' in owner else '#'}{name}")


def _dt(value: datetime) -> Literal:
    return Literal(value.isoformat(), datatype=XSD.dateTime)


def _date(value: date) -> Literal:
    return Literal(value.isoformat(), datatype=XSD.date)


def count_literal(count: PublishedCount) -> Literal:
    """An exact count as xsd:nonNegativeInteger; a suppressed one as the plain string it is shown as."""
    if count.value is None:
        return Literal(count.text)
    return Literal(str(count.value), datatype=XSD.nonNegativeInteger)


def disease_iri(code: Code) -> URIRef:
    """The concept IRI of a disease code; UnknownCode when the code is not well formed."""
    if code.system == "ICD-10":
        return vocab.icd10_iri(code.code)
    if code.system == "SNOMED-CT":
        return vocab.snomed_iri(code.code)
    raise UnknownCode(f'"{code.system}" is not a coding system we know: use "ICD-10" or "SNOMED-CT"')


class _Triples:
    """Collects the triples of one document part; knows how to write the recurring shapes."""

    def __init__(self) -> None:
        self.triples: list[Triple] = []

    def add(self, s: URIRef, p: URIRef, o: Node) -> None:
        self.triples.append((s, p, o))

    def texts(self, s: URIRef, p: URIRef, text: LangText) -> None:
        for lang, value in text.items():
            self.add(s, p, Literal(value, lang=lang))

    def concept(self, term: Term, *types: URIRef) -> URIRef:
        """A controlled-vocabulary entry: what the official range shapes need to see in the data."""
        self.add(term.iri, RDF.type, SKOS.Concept)
        for extra in types:
            self.add(term.iri, RDF.type, extra)
        self.add(term.iri, SKOS.prefLabel, Literal(term.label, lang="en"))
        self.add(term.iri, SKOS.inScheme, term.scheme)
        return term.iri

    def legislation(self, subject: URIRef) -> None:
        for law in LEGISLATION:
            self.add(subject, DCATAP.applicableLegislation, law)
            self.add(law, RDF.type, ELI.LegalResource)
            self.add(law, RDFS.label, Literal(vocab.LEGISLATION[law], lang="en"))

    def period(self, subject: URIRef, p: URIRef, node: URIRef, period: Period | None) -> None:
        if period is None or (period.start is None and period.end is None):
            return
        self.add(subject, p, node)
        self.add(node, RDF.type, DCT.PeriodOfTime)
        if period.start is not None:
            self.add(node, DCAT.startDate, _date(period.start))
        if period.end is not None:
            self.add(node, DCAT.endDate, _date(period.end))

    def contact(self, node: URIRef, name: str, email: str, url: str) -> None:
        self.add(node, RDF.type, VCARD.Kind)
        if name:
            self.add(node, VCARD.fn, Literal(name))
        if email:
            self.add(node, VCARD.hasEmail, URIRef(f"mailto:{email}"))
        if url:
            self.add(node, VCARD.hasURL, URIRef(url))

    def agent(self, agent: Agent, fallback: URIRef) -> URIRef:
        """An organisation (publisher, HDAB): foaf:Agent with its name in every language given, its
        home page, a contact point (e-mail and/or web page) and its country as an address."""
        node = URIRef(agent.iri) if agent.iri else fallback
        self.add(node, RDF.type, FOAF.Agent)
        self.add(node, RDF.type, FOAF.Organization)
        self.texts(node, FOAF.name, agent.name)
        if agent.homepage:
            self.add(node, FOAF.homepage, URIRef(agent.homepage))
        if agent.email or agent.homepage:
            contact = aux_iri(str(node), "contact")
            self.add(node, DCAT.contactPoint, contact)
            display = agent.name.get("en") or next(iter(agent.name.values()), "")
            self.contact(contact, display, agent.email, agent.homepage)
        place = vocab.country(agent.country)
        if place is not None:
            address = aux_iri(str(node), "address")
            self.add(node, LOCN.address, address)
            self.add(address, RDF.type, LOCN.Address)
            self.add(address, LOCN.adminUnitL1, Literal(place.label, lang="en"))
        return node


def _add_code_values(t: _Triples, ds: URIRef, desc: DatasetDescription) -> None:
    facts, steward = desc.facts, desc.steward
    for code in facts.modalities:
        term = vocab.modality(code)
        if term is None:
            continue
        t.add(ds, HEALTHDCATAP.hasCodeValues, t.concept(term))
        t.add(term.iri, SKOS.notation, Literal(term.code))
    for part in facts.body_parts:
        known = vocab.body_part(part)
        if known is None:
            continue
        node = vocab.body_part_iri(str(ds), part)
        t.add(ds, HEALTHDCATAP.hasCodeValues, node)
        t.add(node, RDF.type, SKOS.Concept)
        t.add(node, SKOS.prefLabel, Literal(known.label, lang="en"))
        if known.snomed:
            # The SNOMED concept's notation is its id; the DICOM term stays searchable as a
            # hidden label (SKOS: "accessible to free text search, not displayed").
            t.add(node, SKOS.notation, Literal(known.snomed))
            t.add(node, SKOS.inScheme, vocab.SNOMED_SCHEME)
            t.add(node, SKOS.hiddenLabel, Literal(known.term))
        else:
            t.add(node, SKOS.notation, Literal(known.term))
    systems: set[URIRef] = set()
    for disease in steward.diseases:
        try:
            node = disease_iri(disease)
        except UnknownCode:
            continue
        icd = disease.system == "ICD-10"
        systems.add(vocab.ICD10_CODING_SYSTEM if icd else vocab.SNOMED_CODING_SYSTEM)
        t.add(ds, HEALTHDCATAP.hasCodeValues, node)
        t.add(node, RDF.type, SKOS.Concept)
        label = disease.label or f"{'ICD-10' if icd else 'SNOMED CT'} {disease.code}"
        t.add(node, SKOS.prefLabel, Literal(label, lang="en"))
        t.add(node, SKOS.notation, Literal(disease.code))
        t.add(node, SKOS.inScheme, vocab.ICD10_SCHEME if icd else vocab.SNOMED_SCHEME)
    for system in sorted(systems):
        t.add(ds, HEALTHDCATAP.hasCodingSystem, system)


def _add_offer(t: _Triples, ds: URIRef, publisher: URIRef | None, desc: DatasetDescription) -> URIRef:
    offer = desc.facts.offer
    node = aux_iri(str(ds), "offer")
    permission = aux_iri(str(ds), "offer-permission")
    t.add(node, RDF.type, ODRL.Offer)
    # DCAT-AP's range for odrl:hasPolicy is odrl:Policy and validators do no RDFS inference.
    t.add(node, RDF.type, ODRL.Policy)
    t.add(node, ODRL.uid, node)
    t.add(node, ODRL.target, ds)
    if publisher is not None:
        t.add(node, ODRL.assigner, publisher)
    t.add(node, ODRL.permission, permission)
    basis = offer.legal_basis
    t.add(node, DPV.hasLegalBasis, URIRef(basis.dpv))
    for article in basis.gdpr:
        t.add(node, DPV.hasLegalBasis, URIRef(article))
    t.add(
        node,
        RDFS.comment,
        Literal(
            f"Legal basis: {basis.code} (GDPR {', '.join(a.rsplit('#', 1)[-1] for a in basis.gdpr)}). "
            "Access needs a data permit from the Health Data Access Body (EHDS art. 68) and runs as "
            "compute-to-data: models run inside the hospital and only results that pass its egress "
            "policy leave.",
            lang="en",
        ),
    )
    t.add(permission, RDF.type, ODRL.Permission)
    t.add(permission, ODRL.action, ODRL.use)

    purpose = aux_iri(str(ds), "offer-purpose")
    t.add(permission, ODRL.constraint, purpose)
    t.add(purpose, RDF.type, ODRL.Constraint)
    t.add(purpose, ODRL.leftOperand, ODRL.purpose)
    t.add(purpose, ODRL.operator, ODRL.isAnyOf)
    for item in offer.purposes:
        t.add(purpose, ODRL.rightOperand, URIRef(item.dpv))
    if offer.purposes:
        listed = "; ".join(f"{p.code} (EHDS art. {p.article})" for p in offer.purposes)
        t.add(purpose, RDFS.comment, Literal(f"Permitted purposes: {listed}.", lang="en"))

    places = [term for term in (vocab.country(c) for c in offer.countries) if term is not None]
    if places:
        spatial = aux_iri(str(ds), "offer-spatial")
        t.add(permission, ODRL.constraint, spatial)
        t.add(spatial, RDF.type, ODRL.Constraint)
        t.add(spatial, ODRL.leftOperand, ODRL.spatial)
        t.add(spatial, ODRL.operator, ODRL.isAnyOf)
        for term in places:
            t.add(spatial, ODRL.rightOperand, t.concept(term, DCT.Location))
        t.add(spatial, RDFS.comment, Literal("Countries the requester may be established in.", lang="en"))

    cohort = aux_iri(str(ds), "offer-cohort")
    t.add(permission, ODRL.constraint, cohort)
    t.add(cohort, RDF.type, ODRL.Constraint)
    t.add(cohort, ODRL.leftOperand, ODRL.absoluteSize)
    t.add(cohort, ODRL.operator, ODRL.gteq)
    t.add(cohort, ODRL.rightOperand, Literal(str(offer.k), datatype=XSD.integer))
    t.add(cohort, ODRL.unit, DPV.DataSubject)
    t.add(
        cohort,
        RDFS.comment,
        Literal(f"Models run on, and results describe, groups of at least {offer.k} patients.", lang="en"),
    )
    return node


def _add_distribution(t: _Triples, ds: URIRef, offer: URIRef, desc: DatasetDescription) -> URIRef:
    service = desc.facts.service
    node = aux_iri(str(ds), "distribution")
    endpoint = URIRef(service.endpoint_url)
    service_iri = URIRef(service.iri)
    t.add(ds, DCAT.distribution, node)
    t.add(node, RDF.type, DCAT.Distribution)
    t.texts(node, DCT.title, service.title)
    t.add(
        node,
        DCT.description,
        Literal(
            "No download: the images stay in the hospital. Send a model to the compute-to-data "
            "service; results leave only when the hospital's policy allows it.",
            lang="en",
        ),
    )
    t.add(node, DCAT.accessURL, endpoint)
    t.add(node, DCAT.accessService, service_iri)
    t.add(node, ODRL.hasPolicy, offer)
    t.legislation(node)
    t.add(service_iri, RDF.type, DCAT.DataService)
    t.texts(service_iri, DCT.title, service.title)
    t.add(service_iri, DCAT.endpointURL, endpoint)
    if service.endpoint_description:
        t.add(service_iri, DCAT.endpointDescription, URIRef(service.endpoint_description))
    t.add(service_iri, DCAT.servesDataset, ds)
    return node


def record_triples(desc: DatasetDescription) -> list[Triple]:
    """The triples of the record of `desc` (see the module docstring), in a stable order."""
    steward, facts = desc.steward, desc.facts
    ds = URIRef(facts.iri)
    t = _Triples()
    t.add(ds, RDF.type, DCAT.Dataset)
    t.add(ds, DCT.identifier, Literal(facts.identifier))
    t.texts(ds, DCT.title, steward.title)
    t.texts(ds, DCT.description, steward.description)

    publisher = None
    if steward.publisher is not None:
        publisher = t.agent(steward.publisher, aux_iri(str(ds), "publisher"))
        t.add(ds, DCT.publisher, publisher)

    contact = aux_iri(str(ds), "contact")
    t.add(ds, DCAT.contactPoint, contact)
    t.contact(contact, steward.contact.name, steward.contact.email, steward.contact.url)

    t.add(ds, HEALTHDCATAP.hdab, t.agent(steward.hdab, aux_iri(str(ds), "hdab")))

    for code in steward.themes:
        if (term := vocab.DATA_THEMES.get(code)) is not None:
            t.add(ds, DCAT.theme, t.concept(term))
    for code in steward.health_categories:
        if (term := vocab.health_category(code)) is not None:
            t.add(ds, HEALTHDCATAP.healthCategory, t.concept(term))
    for lang, words in steward.keywords.items():
        for word in words:
            t.add(ds, DCAT.keyword, Literal(word, lang=lang))

    places = steward.spatial or ((steward.publisher.country,) if steward.publisher else ())
    for code in places:
        if (term := vocab.country(code)) is not None:
            t.add(ds, DCT.spatial, t.concept(term, DCT.Location))
    t.period(ds, DCT.temporal, aux_iri(str(ds), "temporal"), steward.temporal)

    t.add(ds, HEALTHDCATAP.numberOfRecords, count_literal(facts.records))
    t.add(ds, HEALTHDCATAP.numberOfUniqueIndividuals, count_literal(facts.individuals))
    if facts.age.minimum is not None:
        t.add(
            ds, HEALTHDCATAP.minTypicalAge, Literal(str(facts.age.minimum), datatype=XSD.nonNegativeInteger)
        )
    if facts.age.maximum is not None:
        t.add(
            ds, HEALTHDCATAP.maxTypicalAge, Literal(str(facts.age.maximum), datatype=XSD.nonNegativeInteger)
        )
    t.texts(ds, HEALTHDCATAP.populationCoverage, steward.population_coverage)
    _add_code_values(t, ds, desc)

    for purpose in dict.fromkeys(p.dpv for p in facts.offer.purposes):
        t.add(ds, DPV.hasPurpose, URIRef(purpose))
    t.add(ds, DPV.hasLegalBasis, URIRef(facts.offer.legal_basis.dpv))
    for code in steward.personal_data:
        if (term := vocab.personal_data(code)) is not None:
            t.add(ds, DPV.hasPersonalData, term.iri)

    if (rights := vocab.ACCESS_RIGHTS.get(steward.access_rights)) is not None:
        t.add(ds, DCT.accessRights, t.concept(rights, DCT.RightsStatement))
    t.legislation(ds)
    t.period(ds, HEALTHDCATAP.retentionPeriod, aux_iri(str(ds), "retention"), steward.retention)

    if facts.version:
        t.add(ds, DCAT.version, Literal(facts.version))
    t.add(ds, DCT.issued, _dt(facts.issued))
    t.add(ds, DCT.modified, _dt(facts.modified))
    status = vocab.DATASET_STATUS["DEPRECATED" if facts.status == "withdrawn" else "COMPLETED"]
    t.add(ds, ADMS.status, t.concept(status))
    for code in steward.languages:
        if (term := vocab.language(code)) is not None:
            t.add(ds, DCT.language, t.concept(term, DCT.LinguisticSystem))
    if steward.documentation:
        page = URIRef(steward.documentation)
        t.add(ds, DCAT.landingPage, page)
        t.add(page, RDF.type, FOAF.Document)
    if steward.provenance:
        statement = aux_iri(str(ds), "provenance")
        t.add(ds, DCT.provenance, statement)
        t.add(statement, RDF.type, DCT.ProvenanceStatement)
        t.texts(statement, RDFS.label, steward.provenance)

    offer = _add_offer(t, ds, publisher, desc)
    t.add(ds, ODRL.hasPolicy, offer)
    _add_distribution(t, ds, offer, desc)
    return t.triples


def new_graph(triples: Iterable[Triple] = ()) -> Graph:
    """A graph with the fixed prefixes bound (and no others)."""
    graph = Graph(bind_namespaces="none")
    for prefix, namespace in vocab.PREFIXES.items():
        graph.bind(prefix, namespace)
    for triple in triples:
        graph.add(triple)
    return graph


def record_graph(desc: DatasetDescription) -> Graph:
    """The full HealthDCAT-AP record of `desc` as an rdflib Graph (no blank nodes)."""
    return new_graph(record_triples(desc))


def catalog_triples(info: CatalogInfo, dataset_iris: Sequence[str]) -> list[Triple]:
    """The dcat:Catalog that lists `dataset_iris`. Their records are separate documents: a catalog
    document is complete (and passes the DCAT-AP range shapes) together with them."""
    cat = URIRef(info.iri)
    t = _Triples()
    t.add(cat, RDF.type, DCAT.Catalog)
    t.texts(cat, DCT.title, info.title)
    t.texts(cat, DCT.description, info.description)
    t.add(cat, DCT.publisher, t.agent(info.publisher, aux_iri(info.iri, "publisher")))
    if info.homepage:
        home = URIRef(info.homepage)
        t.add(cat, FOAF.homepage, home)
        t.add(home, RDF.type, FOAF.Document)
    t.add(cat, DCT.modified, _dt(info.modified))
    for code in info.languages:
        if (term := vocab.language(code)) is not None:
            t.add(cat, DCT.language, t.concept(term, DCT.LinguisticSystem))
    t.legislation(cat)
    # DCAT-AP wants the EU data-theme scheme among the catalog's theme taxonomies.
    t.add(cat, DCAT.themeTaxonomy, vocab.DATA_THEME_SCHEME)
    t.add(vocab.DATA_THEME_SCHEME, RDF.type, SKOS.ConceptScheme)
    t.add(vocab.DATA_THEME_SCHEME, DCT.title, Literal("Data theme", lang="en"))
    for iri in dataset_iris:
        t.add(cat, DCAT.dataset, URIRef(iri))
    return t.triples


def catalog_graph(info: CatalogInfo, dataset_iris: Sequence[str]) -> Graph:
    return new_graph(catalog_triples(info, dataset_iris))
