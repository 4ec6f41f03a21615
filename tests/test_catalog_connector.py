"""The catalog as its users meet it: a steward describes and publishes, the public and peers read,
search and harvest `/catalog`, remote catalogs receive every update, and data changes (opt-outs,
shredding) change what the record says. Real database, real policy engine, a real remote server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import rdflib
import rdflib.compare
from fastapi.testclient import TestClient
from rdflib.namespace import DCAT, RDF
from typer.testing import CliRunner

import catalog
from catalog.model import AgeRange
from catalog.steward_file import load_steward_fields, steward_fields_to_mapping
from catalog.validate import OFFICIAL_SHAPE_FILES, official_shapes, validate_graph
from connector.api.app import create_app
from connector.audit.log import utc_now_text
from connector.cataloging.facts import banded_age_range
from connector.cataloging.service import published_targets
from connector.cli import app
from connector.datasets.models import DatasetRecord, StudyRecord
from connector.datasets.shred import shred
from connector.db.engine import transaction
from connector.identity.roles import Role
from connector.policy.optout import import_consent
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from tests.conftest import bearer, conformance_file

if TYPE_CHECKING:
    from tests.remote_catalog_server import RemoteCatalogServer

pytest_plugins = ["tests.remote_catalog_server"]

HEALTH = rdflib.Namespace("http://healthdataportal.eu/ns/health#")
ADMS = rdflib.Namespace("http://www.w3.org/ns/adms#")
EXAMPLE = Path(catalog.__file__).parent / "examples" / "demo-cohort.toml"


def example_fields() -> dict[str, Any]:
    return steward_fields_to_mapping(load_steward_fields(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE)))


def add_cohort(
    runtime: Runtime,
    name: str,
    patients: int,
    *,
    modality: str = "CT",
    body_part: str = "CHEST",
    bands: tuple[str, ...] = ("50-59", "60-69", "70-79"),
) -> list[str]:
    """A dataset's index as ingest writes it (one study per patient, each with a wrapped key, so it
    can be shredded); the pseudonyms."""
    pseudonyms = [f"{name}-p{index:04d}" for index in range(patients)]
    runtime.keys.create_dataset_key(name)
    wrapped = runtime.keys.wrap(name, bytes(32))
    with transaction(runtime.sessions) as session:
        session.add(
            DatasetRecord(name=name, created_at=utc_now_text(), profile="basic", options="[]", store="local")
        )
        session.flush()
        for index, pseudonym in enumerate(pseudonyms):
            session.add(
                StudyRecord(
                    dataset=name,
                    study_uid=f"2.25.{abs(hash(name)) % 10**9}{index}",
                    patient_pseudonym=pseudonym,
                    wrapped_key=json.dumps(wrapped.to_dict()),
                    key_id=wrapped.key_id,
                    modalities=modality,
                    body_part=body_part,
                    sex="F",
                    age_band=bands[index % len(bands)],
                    study_year="2024",
                    manufacturer="ACME",
                )
            )
    return pseudonyms


def graph_of(text: str, fmt: str) -> rdflib.Graph:
    return rdflib.Graph().parse(data=text, format=fmt)


def dataset_node(graph: rdflib.Graph, name: str) -> rdflib.URIRef:
    nodes = [
        s for s in graph.subjects(RDF.type, DCAT.Dataset) if str(s).endswith(f"/catalog/datasets/{name}")
    ]
    assert len(nodes) == 1, nodes
    return nodes[0]  # type: ignore[return-value]


def value(graph: rdflib.Graph, node: rdflib.URIRef, prop: rdflib.URIRef) -> Any:
    found = list(graph.objects(node, prop))
    assert len(found) == 1, (prop, found)
    return found[0].toPython() if isinstance(found[0], rdflib.Literal) else found[0]


@pytest.fixture
def steward(token_for) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return bearer(token_for(Role.STEWARD, sub="anna"))


@pytest.fixture
def eucaim_catalog(another_remote_catalog: RemoteCatalogServer) -> RemoteCatalogServer:
    return another_remote_catalog


@pytest.fixture
def remote_runtime(
    tmp_path: Path, remote_catalog: RemoteCatalogServer, eucaim_catalog: RemoteCatalogServer
) -> Iterator[Runtime]:
    settings = load_settings(
        data_dir=tmp_path / "remote-data",
        catalog_targets=[
            {"name": "national", "url": remote_catalog.url, "kind": "healthdata-eu", "backoff_seconds": 0.01},
            {
                "name": "eucaim",
                "url": eucaim_catalog.url,
                "kind": "eucaim",
                "media_type": "application/ld+json",
                "backoff_seconds": 0.01,
                "timeout_seconds": 2,
            },
        ],
    )
    built = build_runtime(settings)
    yield built
    built.close()


def held(server: RemoteCatalogServer, dataset: str) -> dict[str, Any]:
    return server.records[dataset]


def test_a_steward_publishes_and_anyone_reads_a_valid_record(
    client: TestClient, runtime: Runtime, steward: dict[str, str]
) -> None:
    add_cohort(runtime, "lung-ct", 30)  # ten patients in each of three age bands
    described = client.put("/v1/catalog/datasets/lung-ct/description", json=example_fields(), headers=steward)
    assert described.status_code == 200, described.text
    assert described.json()["status"] == "draft"
    # A draft is nobody's business but the steward's.
    assert client.get("/catalog/datasets/lung-ct").status_code == 404
    published = client.post("/v1/catalog/datasets/lung-ct/publish", json={"to": []}, headers=steward)
    assert published.status_code == 200, published.text
    assert published.json()["entry"]["version"] == 1

    turtle = client.get("/catalog/datasets/lung-ct", headers={"accept": "text/turtle"})
    assert turtle.status_code == 200 and turtle.headers["content-type"].startswith("text/turtle")
    graph = graph_of(turtle.text, "turtle")
    node = dataset_node(graph, "lung-ct")
    assert value(graph, node, HEALTH.numberOfUniqueIndividuals) == 30
    assert value(graph, node, HEALTH.numberOfRecords) == 30
    assert (value(graph, node, HEALTH.minTypicalAge), value(graph, node, HEALTH.maxTypicalAge)) == (50, 79)
    assert not list(graph.triples((None, DCAT.downloadURL, None)))
    services = list(graph.subjects(RDF.type, DCAT.DataService))
    assert services and all(list(graph.objects(s, DCAT.endpointURL)) for s in services)
    # The same record in every format.
    jsonld = client.get("/catalog/datasets/lung-ct", headers={"accept": "application/ld+json"})
    rdfxml = client.get("/catalog/datasets/lung-ct?format=rdfxml")
    assert jsonld.headers["content-type"].startswith("application/ld+json")
    assert rdfxml.headers["content-type"].startswith("application/rdf+xml")
    assert rdflib.compare.isomorphic(graph, graph_of(jsonld.text, "json-ld"))
    assert rdflib.compare.isomorphic(graph, graph_of(rdfxml.text, "xml"))
    # HealthDCAT-AP extends DCAT-AP 3: the published record passes the official shapes too (the
    # test skips here, after every check above has run, where a bare clone lacks them).
    official = conformance_file("dcat", *(f"dcat/{name}" for name in OFFICIAL_SHAPE_FILES))
    report = validate_graph(graph, official_shapes(official))
    assert report.conforms, report


def test_small_counts_are_suppressed_and_ages_banded_in_the_public_record(
    client: TestClient, runtime: Runtime, steward: dict[str, str]
) -> None:
    add_cohort(runtime, "rare-mr", 7, modality="MR", bands=("20-29", "30-39", "90+"))
    client.put("/v1/catalog/datasets/rare-mr/description", json=example_fields(), headers=steward)
    assert client.post("/v1/catalog/datasets/rare-mr/publish", headers=steward).status_code == 200
    graph = graph_of(client.get("/catalog/datasets/rare-mr?format=turtle").text, "turtle")
    node = dataset_node(graph, "rare-mr")
    # The shipped policy's k is 10: seven patients are published as "<10", never as 7.
    assert value(graph, node, HEALTH.numberOfUniqueIndividuals) == "<10"
    assert value(graph, node, HEALTH.numberOfRecords) == "<10"
    assert not list(graph.objects(node, HEALTH.minTypicalAge))
    assert "7" not in {str(o) for o in graph.objects(node, None) if isinstance(o, rdflib.Literal)}


def test_local_pacs_values_are_left_out_of_the_record_rather_than_refusing_it(
    client: TestClient, runtime: Runtime, steward: dict[str, str]
) -> None:
    add_cohort(runtime, "local-terms", 12, modality="CT,XYZ", body_part="thorax ")
    add_cohort(runtime, "known-terms", 12, modality="MR", body_part=" brain")
    for name in ("local-terms", "known-terms"):
        client.put(f"/v1/catalog/datasets/{name}/description", json=example_fields(), headers=steward)
        assert client.post(f"/v1/catalog/datasets/{name}/publish", headers=steward).status_code == 200
    assert client.get("/catalog?modality=CT&format=turtle").text.count("/catalog/datasets/local-terms>") >= 1
    assert "local-terms" not in client.get("/catalog?modality=XYZ&format=turtle").text
    assert "known-terms" in client.get("/catalog?body_part=BRAIN&format=turtle").text


def test_the_age_range_is_banded_with_both_tails_merged_until_k() -> None:
    bands = {"0-9": 1, "30-39": 4, "40-49": 10, "80-89": 3, "90+": 1}
    assert banded_age_range(bands, 5).minimum == 30  # the lone child is not disclosed
    assert banded_age_range(bands, 5).maximum == 49  # nor the four oldest patients
    assert banded_age_range(bands, 1).minimum == 0 and banded_age_range(bands, 1).maximum == 90
    assert banded_age_range({"40-49": 4}, 5).minimum is None
    # Both tails need the other band to reach k: the range spans both bands, never crosses.
    assert banded_age_range({"20-29": 6, "30-39": 6}, 10) == AgeRange(20, 39)


def test_an_invalid_description_is_refused_with_every_problem_and_nothing_is_stored(
    client: TestClient, runtime: Runtime, steward: dict[str, str]
) -> None:
    add_cohort(runtime, "lung-ct", 12)
    fields = example_fields()
    fields["title"] = {"en": ""}
    fields["contact"] = {**fields["contact"], "email": "not-an-address"}
    fields["diseases"] = [{"system": "SNOMED-CT", "code": "363358001"}]  # wrong check digit
    refused = client.put("/v1/catalog/datasets/lung-ct/description", json=fields, headers=steward)
    assert refused.status_code == 422, refused.text
    problems = " | ".join(refused.json()["problems"]).lower()
    assert "title" in problems and "e-mail" in problems.replace("email", "e-mail") and "363358001" in problems
    assert client.get("/v1/catalog/datasets/lung-ct/description", headers=steward).status_code == 404
    hostile = client.put(
        "/v1/catalog/datasets/lung-ct/description", json={"title": {"en": "x"}, "bogus": 1}, headers=steward
    )
    assert hostile.status_code == 422 and "bogus" in json.dumps(hostile.json()["problems"])
    unknown = client.put("/v1/catalog/datasets/nope/description", json=example_fields(), headers=steward)
    assert unknown.status_code == 404


def test_only_stewards_describe_and_publish_and_the_catalog_is_public(
    client: TestClient, runtime: Runtime, token_for
) -> None:  # type: ignore[no-untyped-def]
    add_cohort(runtime, "lung-ct", 12)
    researcher = bearer(token_for(Role.RESEARCHER, sub="alice"))
    assert (
        client.put(
            "/v1/catalog/datasets/lung-ct/description", json=example_fields(), headers=researcher
        ).status_code
        == 403
    )
    assert client.post("/v1/catalog/datasets/lung-ct/publish", headers=researcher).status_code == 403
    assert client.post("/v1/catalog/datasets/lung-ct/publish").status_code == 401
    assert client.get("/catalog").status_code == 200


def publish_many(runtime: Runtime, steward: dict[str, str], client: TestClient) -> None:
    fields = example_fields()
    for index in range(23):
        modality, body = (("MR", "BRAIN"), ("CT", "CHEST"), ("MG", "BREAST"))[index % 3]
        bands = ("20-29", "30-39") if index % 2 else ("60-69", "70-79")
        name = f"set-{index:02d}"
        add_cohort(runtime, name, 12, modality=modality, body_part=body, bands=bands)
        assert (
            client.put(f"/v1/catalog/datasets/{name}/description", json=fields, headers=steward).status_code
            == 200
        )
        assert client.post(f"/v1/catalog/datasets/{name}/publish", headers=steward).status_code == 200


def listed(page: rdflib.Graph) -> list[str]:
    catalogs = list(page.subjects(RDF.type, DCAT.Catalog))
    assert len(catalogs) == 1
    return sorted(str(o).rsplit("/", 1)[-1] for o in page.objects(catalogs[0], DCAT.dataset))


def test_the_catalog_is_paged_with_hydra_and_searchable_by_facets(
    client: TestClient, runtime: Runtime, steward: dict[str, str]
) -> None:
    publish_many(runtime, steward, client)
    hydra = rdflib.Namespace("http://www.w3.org/ns/hydra/core#")
    first = graph_of(client.get("/catalog?per_page=10", headers={"accept": "text/turtle"}).text, "turtle")
    assert listed(first) == [f"set-{i:02d}" for i in range(10)]
    view = next(first.subjects(RDF.type, hydra.PartialCollectionView))
    assert "page=2" in str(next(first.objects(view, hydra.next)))
    assert not list(first.objects(view, hydra.previous))
    assert "page=3" in str(next(first.objects(view, hydra.last)))
    assert [o.toPython() for o in first.objects(None, hydra.totalItems)] == [23]
    last = graph_of(client.get("/catalog?per_page=10&page=3&format=jsonld").text, "json-ld")
    assert listed(last) == ["set-20", "set-21", "set-22"]
    assert not list(last.objects(None, hydra.next))

    def search(query: str) -> list[str]:
        reply = client.get(f"/catalog?per_page=100&format=turtle&{query}")
        assert reply.status_code == 200, reply.text
        return listed(graph_of(reply.text, "turtle"))

    assert search("modality=MR") == [f"set-{i:02d}" for i in range(0, 23, 3)]
    assert search("modality=mr&body_part=BRAIN") == search("modality=MR")
    assert search("modality=MR&body_part=CHEST") == []
    assert search("modality=MR&modality=MG") == sorted(search("modality=MR") + search("modality=MG"))
    assert search("age=25") == [f"set-{i:02d}" for i in range(1, 23, 2)]
    assert search("disease=C34") == listed(
        graph_of(client.get("/catalog?per_page=100&format=turtle").text, "turtle")
    )
    assert search("disease=C50") == []
    assert search("purpose=ai-development&country=BE") == search("modality=MR&modality=CT&modality=MG")
    assert search("purpose=insurance-or-credit-decision") == []
    # Filters are kept in the paging links.
    filtered = graph_of(client.get("/catalog?modality=CT&per_page=2&format=turtle").text, "turtle")
    view = next(filtered.subjects(RDF.type, hydra.PartialCollectionView))
    assert "modality=CT" in str(next(filtered.objects(view, hydra.next)))


def test_content_negotiation(client: TestClient, runtime: Runtime, steward: dict[str, str]) -> None:
    add_cohort(runtime, "lung-ct", 12)
    client.put("/v1/catalog/datasets/lung-ct/description", json=example_fields(), headers=steward)
    client.post("/v1/catalog/datasets/lung-ct/publish", headers=steward)
    kinds = {
        "text/turtle": "text/turtle",
        "application/rdf+xml": "application/rdf+xml",
        "application/ld+json": "application/ld+json",
        "*/*": "application/ld+json",
        "text/html;q=0.9, text/turtle;q=0.5, application/ld+json;q=0.1": "text/turtle",
    }
    for accept, expected in kinds.items():
        reply = client.get("/catalog", headers={"accept": accept})
        assert reply.status_code == 200 and reply.headers["content-type"].startswith(expected), accept
        assert reply.headers["vary"] == "Accept"
    assert client.get("/catalog", headers={"accept": "text/html"}).status_code == 406
    assert client.get("/catalog?format=pdf").status_code == 400
    assert client.get("/catalog?page=0").status_code == 422


def test_publish_update_and_withdraw_reach_a_live_remote_catalog(
    remote_runtime: Runtime, remote_catalog: RemoteCatalogServer, eucaim_catalog: RemoteCatalogServer
) -> None:
    runtime = remote_runtime
    pseudonyms = add_cohort(runtime, "lung-ct", 14)
    with TestClient(create_app(runtime)) as client:
        steward = bearer(runtime.dev_issuer.issue("anna", [Role.STEWARD]))  # type: ignore[union-attr]
        assert (
            client.put(
                "/v1/catalog/datasets/lung-ct/description", json=example_fields(), headers=steward
            ).status_code
            == 200
        )
        unknown = client.post(
            "/v1/catalog/datasets/lung-ct/publish", json={"to": ["nowhere"]}, headers=steward
        )
        assert unknown.status_code == 422 and "national" in unknown.json()["detail"]
        assert client.get("/catalog/datasets/lung-ct").status_code == 404  # refused: nothing changed

        pushed = client.post(
            "/v1/catalog/datasets/lung-ct/publish", json={"to": ["national", "eucaim"]}, headers=steward
        ).json()
        assert [p["ok"] for p in pushed["pushes"]] == [True, True]
        assert set(remote_catalog.records) == set(eucaim_catalog.records) == {"lung-ct"}
        national = graph_of(held(remote_catalog, "lung-ct")["body"].decode(), "turtle")
        assert value(national, dataset_node(national, "lung-ct"), HEALTH.numberOfUniqueIndividuals) == 14
        # Publishing the same record again changes nothing: same version, same body at the remote.
        again = client.post(
            "/v1/catalog/datasets/lung-ct/publish", json={"to": ["national"]}, headers=steward
        )
        assert again.json()["entry"]["version"] == 1

        # Opt-outs change the counts: the record gets a new version here and at both remotes.
        rows = [{"dataset": "lung-ct", "pseudonym": p, "status": "opted-out"} for p in pseudonyms[:3]]
        import_consent(runtime, rows, "register", "dpo")
        national = graph_of(held(remote_catalog, "lung-ct")["body"].decode(), "turtle")
        node = dataset_node(national, "lung-ct")
        assert value(national, node, HEALTH.numberOfUniqueIndividuals) == 11
        assert str(value(national, node, rdflib.URIRef(str(DCAT) + "version"))) == "2"
        eucaim = json.loads(held(eucaim_catalog, "lung-ct")["body"])
        assert "11" in json.dumps(eucaim)

        # Shredding a patient: below k now, so the remote copy shows "<10".
        shred(runtime, "lung-ct", patient=pseudonyms[3])
        shred(runtime, "lung-ct", patient=pseudonyms[4])
        from connector.cataloging.service import refresh_after_change

        outcomes = refresh_after_change(runtime, "lung-ct", "steward")
        assert [o.ok for o in outcomes] == [True, True]
        national = graph_of(held(remote_catalog, "lung-ct")["body"].decode(), "turtle")
        assert value(national, dataset_node(national, "lung-ct"), HEALTH.numberOfUniqueIndividuals) == "<10"

        # A remote that refuses: the answer is recorded, the local record stays published.
        remote_catalog.refuse_with(422, "record rejected: missing healthdcatap:hdab")
        fields = example_fields()
        fields["keywords"] = {"en": ["lung", "screening", "refused"]}
        updated = client.put("/v1/catalog/datasets/lung-ct/description", json=fields, headers=steward)
        assert updated.status_code == 200
        remote_catalog.refuse_with(None)
        history = client.get("/v1/catalog/publications?dataset=lung-ct", headers=steward).json()
        refused = [row for row in history if not row["ok"]]
        assert (
            refused
            and refused[0]["status_code"] == 422
            and "missing healthdcatap:hdab" in refused[0]["answer"]
        )

        # Withdrawal: deprecated here (still listed for harvesters), withdrawn at each remote.
        withdrawn = client.post("/v1/catalog/datasets/lung-ct/withdraw", headers=steward).json()
        assert withdrawn["entry"]["status"] == "withdrawn" and all(p["ok"] for p in withdrawn["pushes"])
        local = graph_of(client.get("/catalog/datasets/lung-ct?format=turtle").text, "turtle")
        assert "DEPRECATED" in str(value(local, dataset_node(local, "lung-ct"), ADMS.status))
        assert held(remote_catalog, "lung-ct")["status"] in ("deprecated", "withdrawn")
        assert held(eucaim_catalog, "lung-ct")["status"] in ("deprecated", "withdrawn")
        assert published_targets(runtime, "lung-ct") == []
        assert client.get("/catalog?modality=CT&format=turtle").text.count("lung-ct") == 0


def test_shredding_a_whole_dataset_withdraws_its_record_everywhere(
    remote_runtime: Runtime, remote_catalog: RemoteCatalogServer
) -> None:
    runtime = remote_runtime
    add_cohort(runtime, "lung-ct", 12)
    runner = CliRunner()
    env = {"CONNECTOR_DATA_DIR": str(runtime.settings.data_dir)}
    settings_file = runtime.settings.data_dir / "connector.toml"
    targets = [t.model_dump(mode="json", exclude_none=True) for t in runtime.settings.catalog_targets]
    import tomli_w

    settings_file.write_text(tomli_w.dumps({"catalog_targets": targets}), encoding="utf-8")
    env["CONNECTOR_CONFIG"] = str(settings_file)
    described = runner.invoke(app, ["catalog", "describe", "lung-ct", str(EXAMPLE)], env=env)
    assert described.exit_code == 0, described.output
    published = runner.invoke(app, ["publish", "lung-ct", "--to", "national"], env=env)
    assert published.exit_code == 0, published.output
    assert "national: publish accepted" in published.output
    exported = runner.invoke(app, ["catalog", "export", "--format", "turtle"], env=env)
    assert exported.exit_code == 0
    assert listed(graph_of(exported.stdout, "turtle")) == ["lung-ct"]

    shredded = runner.invoke(app, ["shred", "--dataset", "lung-ct", "--all", "--yes"], env=env)
    assert shredded.exit_code == 0, shredded.output
    assert "catalog record at national: updated" in shredded.output
    assert held(remote_catalog, "lung-ct")["status"] in ("deprecated", "withdrawn")
    shown = runner.invoke(app, ["catalog", "show", "lung-ct", "--format", "turtle"], env=env)
    graph = graph_of(shown.stdout, "turtle")
    assert "DEPRECATED" in str(value(graph, dataset_node(graph, "lung-ct"), ADMS.status))


def test_the_cli_refuses_a_bad_description_file_with_its_problems(runtime: Runtime, tmp_path: Path) -> None:
    add_cohort(runtime, "lung-ct", 12)
    bad = tmp_path / "bad.toml"
    bad.write_text('title = { en = "Lung" }\ncolour = "blue"\n[contact]\nname = 3\n', encoding="utf-8")
    env = {"CONNECTOR_DATA_DIR": str(runtime.settings.data_dir)}
    result = CliRunner().invoke(app, ["catalog", "describe", "lung-ct", str(bad)], env=env)
    assert result.exit_code == 2
    assert "colour" in result.output and "contact" in result.output and "description" in result.output
    not_toml = tmp_path / "broken.toml"
    not_toml.write_text("title = [", encoding="utf-8")
    result = CliRunner().invoke(app, ["catalog", "describe", "lung-ct", str(not_toml)], env=env)
    assert result.exit_code == 2 and "TOML" in result.output
    assert CliRunner().invoke(app, ["publish", "lung-ct"], env=env).exit_code == 2  # no description yet
