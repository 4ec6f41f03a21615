"""The HealthDCAT-AP record core: record graph, our shapes and the official DCAT-AP 3.0.0 shapes,
plain-Python checks, rendering and page assembly, content negotiation, the steward's TOML file."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rdflib import BNode, Graph, Literal, URIRef

from catalog import vocab
from catalog.model import AgeRange, CatalogInfo, Code, Contact, DatasetDescription, PublishedCount
from catalog.record import catalog_graph, record_graph
from catalog.render import (
    CONTEXT,
    TURTLE_HEADER,
    PageInfo,
    RenderedRecord,
    negotiate,
    render_catalog_page,
    render_description,
    render_record,
    render_stored,
)
from catalog.steward_file import (
    StewardFileError,
    load_steward_fields,
    steward_fields_from_mapping,
    steward_fields_to_mapping,
)
from catalog.validate import (
    OFFICIAL_SHAPE_FILES,
    ValidationReport,
    official_shapes,
    our_shapes,
    validate,
    validate_graph,
)
from catalog.vocab import DCAT, DCT, DPV, HEALTHDCATAP, HYDRA, ODRL, RDF, SKOS, XSD
from tests.catalog_samples import DATASET_IRI, OFFER, PUBLIC_URL, PUBLISHER, sample_description
from tests.conftest import conformance_file

EXAMPLE = Path(__file__).resolve().parents[1] / "catalog" / "examples" / "demo-cohort.toml"
DS = URIRef(DATASET_IRI)
PARSERS = {"jsonld": "json-ld", "turtle": "turtle", "rdfxml": "xml"}


@pytest.fixture(scope="module")
def official() -> Graph:
    """The official DCAT-AP 3.0.0 shapes; the tests that use them skip, naming the file, without them."""
    return official_shapes(conformance_file("dcat", *(f"dcat/{name}" for name in OFFICIAL_SHAPE_FILES)))


def fields_of(report: ValidationReport, severity: str = "violation") -> set[str]:
    problems = report.violations if severity == "violation" else report.warnings
    return {p.field for p in problems}


def messages(report: ValidationReport) -> str:
    return "\n".join(f"{p.field}: {p.message}" for p in report.problems)


def only_corporate_body_warnings(report: ValidationReport) -> bool:
    """DCAT-AP's vocabulary shapes warn when a publisher is not an EU corporate body; a hospital
    never is one, so that warning (and no other) is expected from the official shapes."""
    return all(p.field.endswith("publisher") and "corporate" in p.message for p in report.warnings)


# --- The sample record is valid -------------------------------------------------------------------
def test_the_sample_record_passes_our_shapes_with_nothing_to_warn_about() -> None:
    report = validate(sample_description())
    assert report.conforms, messages(report)
    assert report.problems == ()


def test_the_sample_record_passes_the_official_dcat_ap_shapes(official: Graph) -> None:
    report = validate_graph(record_graph(sample_description()), official)
    assert report.violations == (), messages(report)
    assert report.warnings, "the publisher is no EU corporate body: the vocabulary shapes say so"
    assert only_corporate_body_warnings(report), messages(report)


def test_official_shapes_name_missing_files(tmp_path: Path) -> None:
    (tmp_path / "dcat-ap-3.0.0-shapes.ttl").write_text("")
    with pytest.raises(FileNotFoundError, match=r"dcat-ap-3\.0\.0-range\.ttl"):
        official_shapes(tmp_path)


def test_our_shapes_are_parsed_once_per_process() -> None:
    assert our_shapes() is our_shapes()


def test_official_shapes_catch_what_they_should(official: Graph) -> None:
    # The official shapes are really applied: a dataset without a description violates them.
    graph = record_graph(sample_description())
    graph.remove((DS, DCT.description, None))
    report = validate_graph(graph, official)
    assert "description" in fields_of(report), messages(report)


# --- Each mandatory property -----------------------------------------------------------------------
MANDATORY = [
    (DCT.title, "title", "The dataset needs a title."),
    (DCT.description, "description", "The dataset needs a description"),
    (DCT.identifier, "identifier", "exactly one identifier"),
    (DCT.publisher, "publisher", "The dataset needs one publisher"),
    (
        DCAT.contactPoint,
        "contact point",
        "The dataset needs a contact point (an e-mail address people can write to).",
    ),
    (HEALTHDCATAP.hdab, "Health Data Access Body", "Name the one Health Data Access Body"),
    (DCT.accessRights, "access rights", "NON_PUBLIC or RESTRICTED"),
    (vocab.DCATAP.applicableLegislation, "applicable legislation", "European Health Data Space Regulation"),
    (HEALTHDCATAP.healthCategory, "health category", "at least one health category"),
    (DCAT.theme, "theme", "at least one EU data theme"),
    (HEALTHDCATAP.numberOfRecords, "number of records", "the number of studies"),
    (HEALTHDCATAP.numberOfUniqueIndividuals, "number of patients", "the number of patients"),
    (DPV.hasPurpose, "purpose", "for which purposes"),
    (DPV.hasLegalBasis, "legal basis", "legal basis"),
    (DPV.hasPersonalData, "personal data", "kinds of personal data"),
    (ODRL.hasPolicy, "terms of use", "terms of use"),
    (DCAT.distribution, "distribution", "exactly one distribution"),
]


@pytest.mark.parametrize(("prop", "field", "message"), MANDATORY, ids=[f for _, f, _ in MANDATORY])
def test_removing_a_mandatory_property_is_a_violation_with_a_readable_message(
    prop: URIRef, field: str, message: str
) -> None:
    graph = record_graph(sample_description())
    assert (DS, prop, None) in graph
    graph.remove((DS, prop, None))
    report = validate_graph(graph, our_shapes())
    found = [p for p in report.violations if p.field == field]
    assert found, messages(report)
    assert any(message in p.message for p in found), messages(report)
    assert not any("http://www.w3.org/ns/shacl#" in p.message or "sh:" in p.field for p in report.problems)


def test_gdpr_must_be_named_as_well_as_the_ehds() -> None:
    graph = record_graph(sample_description())
    graph.remove((DS, vocab.DCATAP.applicableLegislation, vocab.LEGISLATION_GDPR))
    report = validate_graph(graph, our_shapes())
    assert any("GDPR" in p.message for p in report.violations), messages(report)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"publisher": None}, "publisher"),
        ({"health_categories": ()}, "health category"),
        ({"themes": ()}, "theme"),
        ({"personal_data": ()}, "personal data"),
        ({"title": {}}, "title"),
        ({"description": {}}, "description"),
        (
            {"hdab": replace(sample_description().steward.hdab, homepage="", email="")},
            "Health Data Access Body contact",
        ),
        ({"offer": replace(OFFER, purposes=())}, "purpose"),
    ],
)
def test_a_description_missing_a_mandatory_field_is_refused(overrides: dict[str, Any], field: str) -> None:
    report = validate(sample_description(**overrides))
    assert not report.conforms
    assert field in fields_of(report), messages(report)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"keywords": {}}, "keyword"),
        ({"age": AgeRange(None, None)}, "minimum typical age"),
        ({"age": AgeRange(None, None)}, "maximum typical age"),
        ({"population_coverage": {}}, "population coverage"),
        ({"temporal": None}, "time period"),
        ({"retention": None}, "retention period"),
        ({"provenance": {}}, "provenance"),
        ({"languages": ()}, "language"),
    ],
)
def test_a_missing_recommended_field_is_a_warning_only(overrides: dict[str, Any], field: str) -> None:
    report = validate(sample_description(**overrides))
    assert report.conforms, messages(report)
    assert field in fields_of(report, "warning"), messages(report)


def test_an_age_range_upside_down_is_a_violation() -> None:
    report = validate(sample_description(age=AgeRange(70, 50)))
    assert "typical age range" in fields_of(report), messages(report)


# --- Counts: exact or suppressed, nothing else ------------------------------------------------------
def test_suppressed_counts_are_written_as_plain_strings_and_pass(official: Graph) -> None:
    desc = sample_description(records=PublishedCount(None, "<10"), individuals=PublishedCount(None, "<10"))
    graph = record_graph(desc)
    assert graph.value(DS, HEALTHDCATAP.numberOfRecords) == Literal("<10")
    assert graph.value(DS, HEALTHDCATAP.numberOfUniqueIndividuals) == Literal("<10")
    assert graph.value(DS, HEALTHDCATAP.numberOfUniqueIndividuals).datatype is None
    assert validate(desc).conforms, messages(validate(desc))
    assert validate_graph(graph, official).violations == ()
    assert '"<10"' in render_record(desc).turtle_body


def test_exact_counts_are_non_negative_integers() -> None:
    value = record_graph(sample_description()).value(DS, HEALTHDCATAP.numberOfRecords)
    assert value == Literal("1284", datatype=XSD.nonNegativeInteger)


@pytest.mark.parametrize(
    "count",
    [
        PublishedCount(None, "few"),
        PublishedCount(None, "<0"),
        PublishedCount(None, "< 10"),
        PublishedCount(-3, "-3"),
    ],
)
def test_any_other_count_form_is_refused(count: PublishedCount) -> None:
    report = validate(sample_description(individuals=count))
    assert "number of patients" in fields_of(report), messages(report)


def test_a_count_typed_otherwise_is_refused() -> None:
    graph = record_graph(sample_description())
    graph.set((DS, HEALTHDCATAP.numberOfRecords, Literal("1284", datatype=XSD.integer)))
    assert "number of records" in fields_of(validate_graph(graph, our_shapes()))


# --- Plain-Python checks ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field", "tag"),
    [
        ({"title": {"en": "Lung screening", "english": "Lung screening"}}, "title", "english"),
        ({"description": {"en": "Studies", "en_US": "Studies"}}, "description", "en_US"),
        ({"keywords": {"xx": ("lung",)}}, "keyword", "xx"),
        ({"population_coverage": {"fr-": "Adultes"}}, "population coverage", "fr-"),
    ],
)
def test_invalid_language_tags_are_refused_and_everything_else_still_checked(
    overrides: dict[str, Any], field: str, tag: str
) -> None:
    desc = sample_description(**overrides, contact=Contact("Desk", "not-an-address"))
    report = validate(desc)
    assert any(
        p.field == field and f'"{tag}" is not a valid language tag' in p.message for p in report.violations
    )
    assert "contact e-mail" in fields_of(report), "the other problems are still reported"


@pytest.mark.parametrize(
    ("overrides", "field", "code"),
    [
        ({"modalities": ("CT", "XX")}, "modality", "XX"),
        ({"body_parts": ("CHEST", "ELBOWS")}, "body part", "ELBOWS"),
        ({"spatial": ("BE", "ZZ")}, "geographical coverage", "ZZ"),
        ({"languages": ("en", "english")}, "language", "english"),
        ({"health_categories": ("EHRS", "ONCOLOGY")}, "health category", "ONCOLOGY"),
        ({"themes": ("HEAL", "HEALTH")}, "theme", "HEALTH"),
        ({"personal_data": ("HealthRecord", "BloodSample")}, "personal data", "BloodSample"),
        ({"offer": replace(OFFER, countries=("BE", "XK"))}, "countries of the offer", "XK"),
        ({"diseases": (Code("ICD-10", "C3"),)}, "disease code", "C3"),
        ({"diseases": (Code("ICD-10", "c34"),)}, "disease code", "c34"),
    ],
)
def test_unknown_codes_are_refused_by_name(overrides: dict[str, Any], field: str, code: str) -> None:
    report = validate(sample_description(**overrides))
    assert any(p.field == field and f'"{code}"' in p.message for p in report.violations), messages(report)
    # An unknown code never gets an invented IRI in the record.
    assert not any(
        str(o).endswith("/" + code) for o in record_graph(sample_description(**overrides)).objects()
    )


def test_a_snomed_code_with_a_wrong_check_digit_is_refused() -> None:
    report = validate(
        sample_description(diseases=(Code("SNOMED-CT", "363358001", "Malignant tumor of lung"),))
    )
    problem = next(p for p in report.violations if p.field == "disease code")
    assert "363358001" in problem.message and "check digit" in problem.message


@pytest.mark.parametrize("sctid", ["12345", "0363358000", "1234567890123456789", "36335800O"])
def test_a_snomed_code_of_the_wrong_shape_is_refused(sctid: str) -> None:
    with pytest.raises(vocab.UnknownCode, match="6 to 18 digits"):
        vocab.snomed_iri(sctid)


def test_snomed_codes_are_checked_with_verhoeff() -> None:
    assert vocab.verhoeff_valid("2363") and not vocab.verhoeff_valid("2364")
    assert vocab.snomed_iri("363358000") == URIRef("http://snomed.info/id/363358000")
    # Every SNOMED CT concept we map a DICOM body part to carries a valid check digit.
    assert all(vocab.verhoeff_valid(part.snomed) for part in vocab.BODY_PARTS.values() if part.snomed)


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@b", "a b@example.org", "x@@example.org", "@example.org", ""]
)
def test_a_contact_e_mail_that_is_not_one_is_refused(email: str) -> None:
    report = validate(sample_description(contact=Contact("Imaging data desk", email)))
    # One clear problem, quoting the value, not a second one from the shapes in vaguer words.
    (problem,) = [p for p in report.violations if p.field == "contact e-mail"]
    assert (f'"{email}"' in problem.message) if email else ("needs an e-mail address" in problem.message)


def test_a_plausible_e_mail_is_accepted() -> None:
    report = validate(sample_description(contact=Contact("Desk", "first.last+imaging@data.hospital.example")))
    assert report.conforms, messages(report)


def test_an_hdab_e_mail_and_web_page_are_checked() -> None:
    hdab = replace(sample_description().steward.hdab, email="hdab at example", homepage="www.hdab.example")
    report = validate(sample_description(hdab=hdab))
    assert {"Health Data Access Body e-mail", "Health Data Access Body web page"} <= fields_of(report)


@pytest.mark.parametrize("title", [{"en": ""}, {"en": "   ", "fr": "Cohorte"}])
def test_empty_titles_are_refused(title: dict[str, str]) -> None:
    report = validate(sample_description(title=title))
    assert any(p.field == "title" and "empty" in p.message for p in report.violations), messages(report)


# --- The record's content ----------------------------------------------------------------------------
def test_there_is_one_distribution_through_the_compute_to_data_service_and_never_a_download() -> None:
    desc = sample_description()
    graph = record_graph(desc)
    assert not list(graph.triples((None, DCAT.downloadURL, None)))
    (distribution,) = graph.objects(DS, DCAT.distribution)
    service = graph.value(distribution, DCAT.accessService)
    assert (service, RDF.type, DCAT.DataService) in graph
    endpoint = URIRef(desc.facts.service.endpoint_url)
    assert graph.value(distribution, DCAT.accessURL) == endpoint == graph.value(service, DCAT.endpointURL)
    assert graph.value(service, DCAT.servesDataset) == DS
    for fmt in PARSERS:
        assert "downloadURL" not in render_description(desc, fmt)


def test_a_download_url_added_to_a_record_is_a_violation() -> None:
    graph = record_graph(sample_description())
    distribution = graph.value(DS, DCAT.distribution)
    graph.add((distribution, DCAT.downloadURL, URIRef(f"{PUBLIC_URL}/files/all.zip")))
    report = validate_graph(graph, our_shapes())
    assert any(p.field == "distribution" and "never offer a download" in p.message for p in report.violations)


def test_the_record_has_no_blank_nodes_and_its_own_nodes_do_not_clash_with_another_record() -> None:
    one = record_graph(sample_description())
    other_iri = f"{PUBLIC_URL}/catalog/datasets/other"
    two = record_graph(
        sample_description(iri=other_iri, identifier="other", contact=Contact("B", "b@x.example"))
    )
    for graph in (one, two):
        assert not any(isinstance(term, BNode) for triple in graph for term in triple)
    own_one = {s for s in one.subjects() if str(s).startswith(DATASET_IRI + "#")}
    own_two = {s for s in two.subjects() if str(s).startswith(other_iri + "#")}
    assert own_one and own_two and not own_one & own_two
    merged = one + two
    assert set(merged.objects(URIRef(other_iri + "#contact"), vocab.VCARD.hasEmail)) == {
        URIRef("mailto:b@x.example")
    }


def test_the_record_states_the_health_specific_properties() -> None:
    graph = record_graph(sample_description())
    assert set(graph.objects(DS, vocab.DCATAP.applicableLegislation)) == {
        vocab.LEGISLATION_EHDS,
        vocab.LEGISLATION_GDPR,
    }
    assert graph.value(DS, HEALTHDCATAP.minTypicalAge) == Literal("50", datatype=XSD.nonNegativeInteger)
    assert graph.value(DS, HEALTHDCATAP.maxTypicalAge) == Literal("79", datatype=XSD.nonNegativeInteger)
    assert {str(o) for o in graph.objects(DS, DPV.hasPurpose)} == {p.dpv for p in OFFER.purposes}
    assert graph.value(DS, DPV.hasLegalBasis) == URIRef(OFFER.legal_basis.dpv)
    assert vocab.DPV_HEALTH.MedicalImaging in set(graph.objects(DS, DPV.hasPersonalData))
    assert graph.value(DS, HEALTHDCATAP.healthCategory) in {t.iri for t in vocab.HEALTH_CATEGORIES.values()}
    assert {Literal(t, lang=lang) for lang, t in sample_description().steward.title.items()} == set(
        graph.objects(DS, DCT.title)
    )
    hdab = graph.value(DS, HEALTHDCATAP.hdab)
    assert (hdab, RDF.type, vocab.FOAF.Agent) in graph
    assert graph.value(graph.value(hdab, DCAT.contactPoint), vocab.VCARD.hasEmail) == URIRef(
        "mailto:access@hda.example.be"
    )
    # Every controlled-vocabulary value comes with its entry: a labelled concept in its scheme.
    for value in (
        graph.value(DS, DCT.accessRights),
        graph.value(DS, DCAT.theme),
        graph.value(DS, DCT.spatial),
    ):
        assert graph.value(value, SKOS.prefLabel) is not None
        assert graph.value(value, SKOS.inScheme) is not None


def test_coded_content_uses_dicom_snomed_and_icd10_concepts() -> None:
    graph = record_graph(sample_description(body_parts=("CHEST", "PELVIS")))
    codes = set(graph.objects(DS, HEALTHDCATAP.hasCodeValues))
    ct = URIRef("http://dicom.nema.org/resources/ontology/DCM/CT")
    chest = URIRef("http://snomed.info/id/51185008")
    pelvis = URIRef(DATASET_IRI + "#body-part-PELVIS")
    icd = URIRef("http://id.who.int/icd/release/10/C34")
    assert {ct, chest, pelvis, icd, URIRef("http://snomed.info/id/363358000")} <= codes
    assert graph.value(ct, SKOS.prefLabel) == Literal("Computed Tomography", lang="en")
    assert graph.value(chest, SKOS.hiddenLabel) == Literal("CHEST")
    assert graph.value(pelvis, SKOS.notation) == Literal("PELVIS")
    assert set(graph.objects(DS, HEALTHDCATAP.hasCodingSystem)) == {
        vocab.ICD10_CODING_SYSTEM,
        vocab.SNOMED_CODING_SYSTEM,
    }


def test_the_offer_states_purposes_countries_cohort_size_and_legal_basis() -> None:
    graph = record_graph(sample_description())
    offer = graph.value(DS, ODRL.hasPolicy)
    assert (offer, RDF.type, ODRL.Offer) in graph
    assert graph.value(offer, ODRL.target) == DS
    assert graph.value(offer, ODRL.assigner) == URIRef(PUBLISHER.iri)
    assert graph.value(graph.value(DS, DCAT.distribution), ODRL.hasPolicy) == offer
    permission = graph.value(offer, ODRL.permission)
    assert graph.value(permission, ODRL.action) == ODRL.use
    by_operand = {graph.value(c, ODRL.leftOperand): c for c in graph.objects(permission, ODRL.constraint)}
    assert {str(o) for o in graph.objects(by_operand[ODRL.purpose], ODRL.rightOperand)} == {
        p.dpv for p in OFFER.purposes
    }
    assert graph.value(by_operand[ODRL.purpose], ODRL.operator) == ODRL.isAnyOf
    assert set(graph.objects(by_operand[ODRL.spatial], ODRL.rightOperand)) == {
        vocab.country(c).iri  # type: ignore[union-attr]
        for c in OFFER.countries
    }
    cohort = by_operand[ODRL.absoluteSize]
    assert graph.value(cohort, ODRL.operator) == ODRL.gteq
    assert graph.value(cohort, ODRL.rightOperand) == Literal("10", datatype=XSD.integer)
    assert URIRef(OFFER.legal_basis.gdpr[1]) in set(graph.objects(offer, DPV.hasLegalBasis))


@pytest.mark.parametrize(("status", "code"), [("active", "COMPLETED"), ("withdrawn", "DEPRECATED")])
def test_the_status_follows_the_record(status: str, code: str) -> None:
    graph = record_graph(sample_description(status=status))
    assert graph.value(DS, vocab.ADMS.status) == vocab.DATASET_STATUS[code].iri


# --- Rendering -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(PARSERS))
def test_every_format_round_trips_to_the_same_triples(fmt: str) -> None:
    desc = sample_description()
    document = render_description(desc, fmt)  # type: ignore[arg-type]
    parsed = Graph().parse(data=document, format=PARSERS[fmt])
    assert set(parsed) == set(record_graph(desc))


def test_stored_pieces_use_the_shared_header_and_context() -> None:
    rendered = render_record(sample_description())
    assert "@prefix" not in rendered.turtle_body
    assert all(node["@id"].startswith("http") for node in rendered.jsonld_nodes)
    document = json.loads(render_stored(rendered, "jsonld"))
    assert document["@context"] == dict(CONTEXT)
    assert render_stored(rendered, "turtle").startswith(TURTLE_HEADER)
    # Special characters survive the hand-written serialisers.
    tricky = sample_description(
        title={"en": 'Quote " backslash \\ newline \n tab \t return \r <tag> & end', "fr": "Hôpital é"}
    )
    for fmt in PARSERS:
        parsed = Graph().parse(data=render_description(tricky, fmt), format=PARSERS[fmt])  # type: ignore[arg-type]
        assert set(parsed.objects(DS, DCT.title)) == set(record_graph(tricky).objects(DS, DCT.title))


def test_rdfxml_falls_back_to_rdflib_for_a_predicate_it_cannot_name() -> None:
    line = '<http://example.org/s> <http://other.example/vocab/p> "value" .\n'
    record = RenderedRecord(iri="http://example.org/s", jsonld_text="[]", turtle_body="", ntriples=line)
    parsed = Graph().parse(data=render_stored(record, "rdfxml"), format="xml")
    assert set(parsed) == {
        (URIRef("http://example.org/s"), URIRef("http://other.example/vocab/p"), Literal("value"))
    }


def test_control_characters_in_texts_are_refused() -> None:
    report = validate(sample_description(description={"en": "Bell \x07 in the text"}))
    assert any(p.field == "description" and "control character" in p.message for p in report.violations)


def test_a_rendered_record_survives_storage_as_json_text() -> None:
    rendered = render_record(sample_description())
    restored = RenderedRecord.from_json(json.loads(json.dumps(rendered.to_json())))
    assert restored == rendered
    with pytest.raises(ValueError, match="render the record again"):
        RenderedRecord.from_json({**rendered.to_json(), "version": 0})
    with pytest.raises(ValueError, match="lacks"):
        RenderedRecord.from_json({"version": 1, "iri": rendered.iri})
    with pytest.raises(ValueError, match="not a JSON array"):
        RenderedRecord.from_json({**rendered.to_json(), "jsonld": '{"@id": "x"}'})
    # The stored JSON-LD is the node objects' text; the objects decode from it.
    assert restored.jsonld_nodes == rendered.jsonld_nodes
    assert restored.jsonld_nodes[0]["@id"] == DATASET_IRI


# --- Catalog pages ----------------------------------------------------------------------------------
INFO = CatalogInfo(
    iri=f"{PUBLIC_URL}/catalog",
    title={"en": "Example University Hospital: imaging datasets"},
    description={"en": "De-identified imaging datasets for compute-to-data."},
    publisher=PUBLISHER,
    homepage=f"{PUBLIC_URL}/",
    modified=datetime(2025, 6, 12, 14, 5, tzinfo=UTC),
)


def records(count: int) -> list[RenderedRecord]:
    return [
        render_record(
            sample_description(
                iri=f"{PUBLIC_URL}/catalog/datasets/d{n:03d}",
                identifier=f"d{n:03d}",
                records=PublishedCount(n + 10, str(n + 10)) if n % 3 else PublishedCount(None, "<10"),
            )
        )
        for n in range(count)
    ]


@pytest.fixture(scope="module")
def twenty_five() -> list[RenderedRecord]:
    return records(25)


def page_graph(page: int, items: list[RenderedRecord], url: str = f"{PUBLIC_URL}/catalog") -> Graph:
    info = PageInfo(page=page, per_page=10, total=25, url=url)
    on_page = items[(page - 1) * 10 : page * 10]
    return Graph().parse(data=render_catalog_page(INFO, on_page, info, "turtle"), format="turtle")


def link(page: int, url: str = f"{PUBLIC_URL}/catalog") -> URIRef:
    return URIRef(f"{url}{'&' if '?' in url else '?'}page={page}&per_page=10")


@pytest.mark.parametrize(
    ("page", "previous", "next_", "datasets"),
    [(1, None, 2, 10), (2, 1, 3, 10), (3, 2, None, 5), (5, 3, None, 0)],
    ids=["first", "middle", "last", "past-the-end"],
)
def test_pages_carry_hydra_links_and_totals(
    twenty_five: list[RenderedRecord], page: int, previous: int | None, next_: int | None, datasets: int
) -> None:
    graph = page_graph(page, twenty_five)
    view = link(page)
    assert (URIRef(INFO.iri), HYDRA.view, view) in graph
    assert (view, RDF.type, HYDRA.PartialCollectionView) in graph
    assert graph.value(view, HYDRA.first) == link(1)
    assert graph.value(view, HYDRA.last) == link(3)
    assert graph.value(view, HYDRA.previous) == (link(previous) if previous else None)
    assert graph.value(view, HYDRA.next) == (link(next_) if next_ else None)
    assert graph.value(view, HYDRA.totalItems) == Literal("25", datatype=XSD.nonNegativeInteger)
    assert graph.value(view, HYDRA.itemsPerPage) == Literal("10", datatype=XSD.nonNegativeInteger)
    listed = set(graph.objects(URIRef(INFO.iri), DCAT.dataset))
    assert len(listed) == datasets
    assert all((d, RDF.type, DCAT.Dataset) in graph and (d, DCT.title, None) in graph for d in listed)


def test_page_links_keep_the_search_query(twenty_five: list[RenderedRecord]) -> None:
    url = f"{PUBLIC_URL}/catalog?modality=CT&country=BE"
    graph = page_graph(2, twenty_five, url)
    view = link(2, url)
    assert graph.value(view, HYDRA.next) == URIRef(f"{url}&page=3&per_page=10")
    assert PageInfo(1, 10, 0, url).last == 1


@pytest.mark.parametrize("page", [1, 3])
def test_assembled_jsonld_and_turtle_pages_hold_the_same_triples_as_rdfxml(
    twenty_five: list[RenderedRecord], page: int
) -> None:
    info = PageInfo(page=page, per_page=10, total=25, url=f"{PUBLIC_URL}/catalog")
    on_page = twenty_five[(page - 1) * 10 : page * 10]
    parsed = {
        fmt: set(Graph().parse(data=render_catalog_page(INFO, on_page, info, fmt), format=PARSERS[fmt]))  # type: ignore[arg-type]
        for fmt in PARSERS
    }
    assert parsed["jsonld"] == parsed["rdfxml"]
    assert parsed["turtle"] == parsed["rdfxml"]
    assert len(parsed["rdfxml"]) > 200 * len(on_page) / 2


def test_a_catalog_page_passes_the_official_shapes(
    twenty_five: list[RenderedRecord], official: Graph
) -> None:
    info = PageInfo(page=1, per_page=10, total=25, url=f"{PUBLIC_URL}/catalog")
    document = render_catalog_page(INFO, twenty_five[:10], info, "rdfxml")
    report = validate_graph(Graph().parse(data=document, format="xml"), official)
    assert report.violations == (), messages(report)
    assert only_corporate_body_warnings(report), messages(report)
    whole = catalog_graph(INFO, [DATASET_IRI]) + record_graph(sample_description())
    assert validate_graph(whole, official).violations == ()


def test_a_page_needs_sane_numbers() -> None:
    with pytest.raises(ValueError):
        PageInfo(page=0, per_page=10, total=5, url=INFO.iri)
    with pytest.raises(ValueError):
        PageInfo(page=1, per_page=0, total=5, url=INFO.iri)


# --- Content negotiation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "jsonld"),
        ("", "jsonld"),
        ("*/*", "jsonld"),
        ("text/turtle", "turtle"),
        ("TEXT/Turtle", "turtle"),
        ("application/rdf+xml", "rdfxml"),
        ('application/ld+json; profile="http://www.w3.org/ns/json-ld#compacted"', "jsonld"),
        ("application/json", "jsonld"),
        ("text/turtle;q=0.5, application/ld+json;q=0.9", "jsonld"),
        ("application/ld+json;q=0.1, text/turtle", "turtle"),
        ("application/rdf+xml;q=0.8, text/turtle;q=0.8, application/ld+json;q=0.2", "turtle"),
        ("text/*", "turtle"),
        ("text/html, */*;q=0.1", "jsonld"),
        ("application/ld+json;q=0, */*", "turtle"),
        ("text/turtle;q=abc, application/rdf+xml", "rdfxml"),
        ("text/turtle;q=2", None),
        ("text/html", None),
        ("application/ld+json;q=0", None),
    ],
)
def test_content_negotiation_honours_q_values(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


# --- The steward's TOML file -------------------------------------------------------------------------
def example_mapping() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def test_the_example_file_loads_and_makes_a_valid_record(official: Graph) -> None:
    fields = load_steward_fields(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert set(fields.title) == set(fields.description) == {"en", "fr", "de"}
    assert fields.hdab.country == "BE" and fields.hdab.homepage
    assert Code("ICD-10", "C34", "Malignant neoplasm of bronchus and lung") in fields.diseases
    assert any(c.system == "SNOMED-CT" and c.code == "363358000" for c in fields.diseases)
    assert fields.temporal is not None and fields.temporal.start is not None
    assert fields.retention is not None and fields.population_coverage and fields.keywords
    desc = DatasetDescription(replace(fields, publisher=PUBLISHER), sample_description().facts)
    report = validate(desc)
    assert report.conforms and not report.warnings, messages(report)
    assert validate_graph(record_graph(desc), official).violations == ()


def test_steward_fields_round_trip_through_json() -> None:
    fields = load_steward_fields(EXAMPLE.read_text(encoding="utf-8"))
    assert steward_fields_from_mapping(json.loads(json.dumps(steward_fields_to_mapping(fields)))) == fields
    sample = sample_description().steward
    assert steward_fields_from_mapping(json.loads(json.dumps(steward_fields_to_mapping(sample)))) == sample


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


def _with(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(data, default=str))  # deep copy; dates become strings (as in JSON)
    *parents, last = path.split(".")
    target = copy
    for part in parents:
        target = target[part]
    target[last] = value
    return copy


BAD_MAPPINGS = [
    ("unknown key", lambda d: {**d, "titel": "x"}, "titel: unknown key"),
    ("missing mandatory", lambda d: _without(d, "hdab"), "hdab: missing; this field is mandatory"),
    ("missing contact e-mail", lambda d: _with(d, "contact", {"name": "Desk"}), "contact.email: missing"),
    ("wrong type", lambda d: _with(d, "contact.email", 42), "contact.email: expected text, got a number"),
    (
        "text not a table",
        lambda d: _with(d, "title", "Lung screening"),
        "title: expected a table of language",
    ),
    (
        "bad language tag",
        lambda d: _with(d, "title.english", "Lung"),
        'title.english: "english" is not a valid',
    ),
    (
        "bad keyword tag",
        lambda d: _with(d, "keywords.en_GB", ["x"]),
        'keywords.en_GB: "en_GB" is not a valid',
    ),
    (
        "bad date",
        lambda d: _with(d, "temporal.start", "2019-02-30"),
        'temporal.start: "2019-02-30" is not a date',
    ),
    (
        "loose date",
        lambda d: _with(d, "temporal.end", "31/12/2024"),
        'temporal.end: "31/12/2024" is not a date',
    ),
    ("date of wrong type", lambda d: _with(d, "retention.end", 2039), "retention.end: expected a date"),
    (
        "period upside down",
        lambda d: _with(d, "temporal.end", "2018-01-01"),
        "temporal: ends (2018-01-01) before",
    ),
    (
        "bad system",
        lambda d: _with(d, "diseases", [{"system": "ICD10", "code": "C34"}]),
        "diseases[1].system",
    ),
    (
        "categories not a list",
        lambda d: _with(d, "health_categories", "EHRS"),
        "health_categories: expected a list",
    ),
    ("list item type", lambda d: _with(d, "spatial", ["BE", 3]), "spatial[2]: expected text"),
    (
        "access rights",
        lambda d: _with(d, "access_rights", "PUBLIC"),
        'access_rights: must be "NON_PUBLIC" or',
    ),
    (
        "language code",
        lambda d: _with(d, "languages", ["en", "eng"]),
        'languages[2]: "eng" is not a two-letter',
    ),
    ("agent key", lambda d: _with(d, "hdab.mail", "x@y.example"), "hdab.mail: unknown key"),
]


@pytest.mark.parametrize(
    ("change", "expected"), [(c, e) for _, c, e in BAD_MAPPINGS], ids=[n for n, _, _ in BAD_MAPPINGS]
)
def test_each_bad_input_gives_a_listed_problem_with_its_key(change: Any, expected: str) -> None:
    with pytest.raises(StewardFileError) as caught:
        steward_fields_from_mapping(change(example_mapping()))
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert expected in str(caught.value)


def test_every_problem_is_listed_at_once() -> None:
    text = """
titel = "typo"
[title]
english = "Lung screening"
[contact]
name = "Desk"
email = 4
[temporal]
start = 2020-01-01T10:00:00
"""
    with pytest.raises(StewardFileError) as caught:
        load_steward_fields(text, "bad.toml")
    problems = caught.value.problems
    for expected in (
        "titel: unknown key",
        "description: missing",
        "hdab: missing",
        "health_categories: missing",
        'title.english: "english" is not a valid language tag',
        "contact.email: expected text",
        "temporal.start: expected a date without a time",
    ):
        assert any(expected in problem for problem in problems), problems
    assert str(caught.value).startswith("bad.toml has 7 problems")


def test_a_file_that_is_not_toml_says_so() -> None:
    with pytest.raises(StewardFileError, match="not valid TOML"):
        load_steward_fields('title = { en = "unterminated', "broken.toml")


def test_a_well_formed_file_with_bad_values_reaches_validation_with_all_its_problems() -> None:
    data = _with(example_mapping(), "title", {"en": ""})
    data = _with(data, "contact", {"name": "", "email": "not-an-address"})
    data = _with(data, "diseases", [{"system": "SNOMED-CT", "code": "363358001"}])
    fields = steward_fields_from_mapping(data)  # well formed: the values are validation's business
    report = validate(DatasetDescription(replace(fields, publisher=PUBLISHER), sample_description().facts))
    assert {"title", "contact name", "contact e-mail", "disease code"} <= fields_of(report), messages(report)
