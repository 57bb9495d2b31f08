"""FAIR metadata renderers: each format is valid by its own standard and says the same thing."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any

import pytest
import rdflib.namespace as ns
import rdflib.plugins.shared.jsonld.context as jsonld_context
from jsonschema import FormatChecker
from jsonschema.validators import validator_for
from rdflib import Graph, Literal, URIRef
from rdflib.compare import isomorphic
from rdflib.namespace import DCTERMS, RDF, RDFS
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT201909

from dataset_service.fair import (
    ADMS,
    DCAT,
    DCAT_JSONLD_MEDIA_TYPE,
    DCATAP,
    DEFAULT_FORMAT,
    EHDS,
    EUCAIM,
    FORMATS,
    GDPR,
    HEALTHDCATAP,
    RESTRICTED,
    Contact,
    DatasetRecord,
    DatasetStatistics,
    Licence,
    Person,
    UnknownFormat,
    citation,
    datacite,
    dcat,
    dcat_jsonld,
    dcat_turtle,
    negotiate,
    schema_org,
    schema_org_script,
)

PID = "https://vre.example/pid/6f1c2a52-8d0e-4b8e-9a51-1f0c6b1f2d11"
XSS = "</script><script>alert(1)</script>"
# schema.org's published context maps terms into http://schema.org/ (not https): the
# stand-in keeps that quirk and the terms the renderer relies on being IRIs.
SCHEMA_ORG_CONTEXT = {"@context": {"@vocab": "http://schema.org/",
                                   "url": {"@type": "@id"}, "license": {"@type": "@id"},
                                   "sameAs": {"@type": "@id"}}}
SCHEMA = "http://schema.org/"


@pytest.fixture
def rich() -> DatasetRecord:
    """A published second version with DOI, ORCID authors, links both ways and statistics."""
    stats = DatasetStatistics(
        subjects=120, studies=310, series=1250, instances=98_000, size_bytes=52_300_000_000,
        modalities={"CT": 200, "MR": 110}, body_parts={"CHEST": 250, "ABDOMEN": 60},
        manufacturers={"SIEMENS": 180, "GE MEDICAL SYSTEMS": 130}, sex={"F": 58, "M": 62},
        age_histogram=((20, 40, 10), (40, 60, 50), (60, 80, 60)), age_min=20, age_max=80,
        diagnoses={"Lung adenocarcinoma": 70, "Pulmonary nodule": 50})
    return DatasetRecord(
        id=PID.rsplit("/", 1)[-1], pid_url=PID, doi="https://doi.org/10.5281/vre.1234",
        title="Lung CT & MR cohort", description='Chest CT with "quotes", a \\ and\nnew lines.',
        version="2.0.0", state="published", created=date(2024, 1, 15),
        released=date(2024, 2, 1), published=datetime(2024, 2, 3, 9, 30, tzinfo=UTC),
        modified=date(2024, 6, 1),
        licence=Licence(spdx_id="CC-BY-NC-4.0",
                        url="https://creativecommons.org/licenses/by-nc/4.0/"),
        contact=Contact(name="Imaging data steward", email="steward@hospital.example"),
        authors=(Person(name="Ana García López", given_name="Ana", family_name="García López",
                        orcid="https://orcid.org/0000-0002-1825-0097",
                        affiliation="Hospital Universitario Example"),
                 Person(name="Li Wei", given_name="Wei", family_name="Li",
                        orcid="0000-0001-5109-3700")),
        keywords=("lung cancer", "CT", "radiomics"), purpose="Training detection models.",
        provenance="Exported from the hospital PACS, pseudonymised at ingestion.",
        project="LungAI", publisher="Example Hospital Imaging Platform",
        landing_page_url="https://vre.example/datasets/6f1c2a52", base_url="https://vre.example/",
        previous_version="https://vre.example/pid/0aa1", next_version="https://vre.example/pid/0bb2",
        content_hash="sha256:" + "ab" * 32, statistics=stats)


@pytest.fixture
def minimal() -> DatasetRecord:
    """A draft: no DOI, no ORCID, no authors' details, no versions, empty statistics."""
    return DatasetRecord(
        id="d1", pid_url="https://vre.example/pid/d1", title="Draft", description="",
        version="0.1", state="draft", created=datetime(2025, 3, 1, 12, 0),
        licence=Licence(spdx_id="CC0-1.0",
                        url="https://creativecommons.org/publicdomain/zero/1.0/"),
        contact=Contact(name="Steward", email="s@h.example"), publisher="Example Hospital",
        landing_page_url="https://vre.example/datasets/d1", base_url="https://vre.example",
        content_hash="sha256:" + "00" * 32, authors=(Person(name="Jo Bloggs"),), language=None)


@pytest.fixture
def invalidated(rich: DatasetRecord) -> DatasetRecord:
    return dataclasses.replace(rich, state="invalidated", invalidated=date(2024, 7, 1),
                               invalidation_reason="Series 12 was not de-identified")


@pytest.fixture(scope="module")
def datacite_validator() -> Any:
    """A validator for the DataCite 4.5 JSON schema shipped in the `datacite` package, offline.

    Every schema in that folder (iso-8601.json, ietf-bcp-47.json, ...) is registered under its
    file name: the URI a relative `$ref` resolves to from the root, which has no `$id`. The
    4.5 schema itself only refers to its own definitions today; a ref to anything else would
    raise `Unresolvable` rather than go to the network.
    """
    folder = resources.files("datacite") / "schemas"
    registry = Registry().with_resources(
        (entry.name, Resource.from_contents(json.loads(entry.read_text()),
                                            default_specification=DRAFT201909))
        for entry in folder.iterdir() if entry.name.endswith(".json"))
    schema = json.loads((folder / "datacite-v4.5.json").read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry, format_checker=FormatChecker())


@pytest.fixture
def offline_schema_org(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve schema.org's context from a local stand-in; fail on any other fetch."""
    def fetch(url: Any, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], None]:
        assert str(url).rstrip("/") == "https://schema.org", f"unexpected fetch of {url}"
        return SCHEMA_ORG_CONTEXT, None
    monkeypatch.setattr(jsonld_context, "source_to_json", fetch)


def schema_org_graph(doc: dict[str, Any]) -> Graph:
    return Graph().parse(data=json.dumps(doc), format="json-ld")


# -- DataCite ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rich", "minimal", "invalidated"])
def test_datacite_validates_against_the_4_5_schema(name: str, request: pytest.FixtureRequest,
                                                   datacite_validator: Any) -> None:
    record = request.getfixturevalue(name)
    errors = [e.message for e in datacite_validator.iter_errors(datacite(record))]
    assert errors == []


def test_the_datacite_validator_is_not_vacuous(rich: DatasetRecord,
                                               datacite_validator: Any) -> None:
    for broken in ({"identifiers": []}, {"creators": []}, {"doi": "not-a-doi"},
                   {"types": {"resourceTypeGeneral": "Spreadsheet"}},
                   {"creators": [{"name": "X", "orcid": "0000-0002-1825-0097"}]},
                   {"relatedIdentifiers": [{"relatedIdentifier": "x", "relationType": "Cites",
                                            "relatedIdentifierType": "URL", "schemeUri": "y"}]}):
        assert not datacite_validator.is_valid({**datacite(rich), **broken}), broken


def test_datacite_carries_identifiers_rights_versions_and_descriptions(
        rich: DatasetRecord) -> None:
    doc = datacite(rich)
    assert doc["doi"] == "10.5281/vre.1234"
    assert doc["alternateIdentifiers"] == [{"alternateIdentifier": PID,
                                            "alternateIdentifierType": "URL"}]
    assert doc["publicationYear"] == "2024"
    assert doc["types"]["resourceTypeGeneral"] == "Dataset"
    assert doc["creators"][0]["nameIdentifiers"][0]["nameIdentifier"] == \
        "https://orcid.org/0000-0002-1825-0097"
    assert doc["creators"][1]["name"] == "Li, Wei"
    assert {"name": "Imaging data steward", "contributorType": "ContactPerson"} in \
        doc["contributors"]
    assert doc["rightsList"][0] == {
        "rights": "CC-BY-NC-4.0", "rightsUri": "https://creativecommons.org/licenses/by-nc/4.0/",
        "rightsIdentifier": "CC-BY-NC-4.0", "rightsIdentifierScheme": "SPDX",
        "schemeUri": "https://spdx.org/licenses/"}
    relations = {r["relationType"]: r["relatedIdentifier"] for r in doc["relatedIdentifiers"]}
    assert relations["IsNewVersionOf"] == "https://vre.example/pid/0aa1"
    assert relations["IsPreviousVersionOf"] == "https://vre.example/pid/0bb2"
    assert relations["HasMetadata"].startswith("https://vre.example/api/v1/datasets/")
    kinds = {d["descriptionType"] for d in doc["descriptions"]}
    assert kinds == {"Abstract", "Methods", "Other", "TechnicalInfo"}
    assert {"subject": "CT", "subjectScheme": "DICOM modality"}.items() <= \
        next(s for s in doc["subjects"] if s.get("subjectScheme") == "DICOM modality").items()
    assert {d["dateType"] for d in doc["dates"]} == {"Created", "Issued", "Updated"}
    assert doc["formats"] == ["application/dicom"]


def test_datacite_credits_the_publisher_when_no_author_is_named(
        minimal: DatasetRecord, datacite_validator: Any) -> None:
    doc = datacite(dataclasses.replace(minimal, authors=()))
    assert doc["creators"] == [{"name": "Example Hospital", "nameType": "Organizational"}]
    assert "doi" not in doc and "relatedIdentifiers" in doc
    assert datacite_validator.is_valid(doc)


# -- schema.org ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rich", "minimal"])
def test_schema_org_parses_as_a_dataset_named_by_its_pid(
        name: str, request: pytest.FixtureRequest, offline_schema_org: None) -> None:
    record = request.getfixturevalue(name)
    graph = schema_org_graph(schema_org(record))
    subject = URIRef(record.pid_url)
    assert (subject, RDF.type, URIRef(SCHEMA + "Dataset")) in graph
    assert (subject, URIRef(SCHEMA + "name"), Literal(record.title)) in graph
    assert (subject, URIRef(SCHEMA + "license"), URIRef(record.licence.url)) in graph


def test_schema_org_links_versions_creators_and_access(rich: DatasetRecord,
                                                       offline_schema_org: None) -> None:
    doc = schema_org(rich)
    assert doc["@context"] == "https://schema.org/"
    assert "distribution" not in doc
    assert doc["conditionsOfAccess"].startswith("restricted")
    assert doc["measurementTechnique"] == ["CT", "MR"]
    graph = schema_org_graph(doc)
    this, based_on = URIRef(PID), URIRef(SCHEMA + "isBasedOn")
    assert (this, based_on, URIRef("https://vre.example/pid/0aa1")) in graph
    assert (URIRef("https://vre.example/pid/0bb2"), based_on, this) in graph
    orcid = URIRef("https://orcid.org/0000-0001-5109-3700")
    assert (this, URIRef(SCHEMA + "creator"), orcid) in graph
    assert (orcid, RDF.type, URIRef(SCHEMA + "Person")) in graph


def test_script_helper_neutralises_a_script_in_the_description(rich: DatasetRecord) -> None:
    element = schema_org_script(dataclasses.replace(rich, description=XSS, title="a & b <i>"))
    assert element.startswith('<script type="application/ld+json">')
    body = element.removeprefix('<script type="application/ld+json">').removesuffix("</script>")
    assert "<" not in body and ">" not in body and "&" not in body
    assert json.loads(body)["description"] == XSS
    assert json.loads(body)["name"] == "a & b <i>"


# -- DCAT-AP -------------------------------------------------------------------------------


def test_dcat_turtle_has_the_dcat_ap_and_eucaim_terms(rich: DatasetRecord) -> None:
    graph = Graph().parse(data=dcat_turtle(rich), format="turtle")
    ds = URIRef(PID)
    assert (ds, RDF.type, DCAT.Dataset) in graph
    assert (ds, DCTERMS.accessRights, RESTRICTED) in graph
    assert {GDPR, EHDS} <= set(graph.objects(ds, DCATAP.applicableLegislation))
    assert {str(k) for k in graph.objects(ds, DCAT.keyword)} == {"lung cancer", "CT",
                                                                  "radiomics"}
    assert (ds, DCTERMS.identifier, Literal(PID, datatype=ns.XSD.anyURI)) in graph
    assert (ds, DCAT.version, Literal("2.0.0")) in graph
    assert (ds, DCAT.previousVersion, URIRef("https://vre.example/pid/0aa1")) in graph
    assert (URIRef("https://vre.example/pid/0bb2"), DCAT.previousVersion, ds) in graph
    assert (ds, DCTERMS.license, URIRef(rich.licence.url)) in graph
    assert (ds, DCAT.landingPage, URIRef(rich.landing_page_url)) in graph
    assert {str(m) for m in graph.objects(ds, EUCAIM.hasImageModality)} == {"CT", "MR"}
    assert {str(m) for m in graph.objects(ds, ns.SDO.measurementTechnique)} == {"CT", "MR"}
    assert {str(b) for b in graph.objects(ds, EUCAIM.hasImageBodyPart)} == {"CHEST", "ABDOMEN"}
    assert len(set(graph.objects(ds, EUCAIM.hasEquipmentManufacturer))) == 2
    assert "Lung adenocarcinoma" in {str(c) for c in graph.objects(ds, EUCAIM.hasCondition)}
    assert graph.value(ds, HEALTHDCATAP.numberOfUniqueIndividuals).toPython() == 120
    assert graph.value(ds, HEALTHDCATAP.numberOfRecords).toPython() == 310
    contact = graph.value(ds, DCAT.contactPoint)
    assert str(graph.value(contact, URIRef("http://www.w3.org/2006/vcard/ns#hasEmail"))) == \
        "mailto:steward@hospital.example"
    notations = {str(graph.value(i, ns.SKOS.notation)) for i in graph.objects(ds, ADMS.identifier)}
    assert notations == {"https://doi.org/10.5281/vre.1234", rich.content_hash}
    assert graph.value(ds, DCTERMS.description).toPython() == rich.description


def test_dcat_distribution_gives_access_not_files(rich: DatasetRecord) -> None:
    graph = dcat(rich)
    distribution = graph.value(URIRef(PID), DCAT.distribution)
    assert graph.value(distribution, DCAT.accessURL) == URIRef(rich.landing_page_url)
    assert graph.value(distribution, DCAT.downloadURL) is None
    assert graph.value(distribution, DCTERMS.accessRights) == RESTRICTED


@pytest.mark.parametrize("name", ["rich", "minimal", "invalidated"])
def test_dcat_jsonld_is_the_same_graph_as_the_turtle(name: str,
                                                     request: pytest.FixtureRequest) -> None:
    record = request.getfixturevalue(name)
    turtle = Graph().parse(data=dcat_turtle(record), format="turtle")
    jsonld = Graph().parse(data=json.dumps(dcat_jsonld(record)), format="json-ld")
    assert len(turtle) > 20
    assert isomorphic(turtle, jsonld)


def test_minimal_record_renders_in_every_format(minimal: DatasetRecord) -> None:
    for fmt in FORMATS.values():
        assert fmt.render(minimal)
    graph = dcat(minimal)
    assert graph.value(URIRef(minimal.pid_url), HEALTHDCATAP.numberOfUniqueIndividuals) \
        == Literal(0, datatype=ns.XSD.nonNegativeInteger)
    assert citation(minimal) == ("Jo Bloggs (2025). Draft. Version 0.1. Example Hospital. "
                                 "https://vre.example/pid/d1 [Draft: not yet released]")


# -- state and citation --------------------------------------------------------------------


def test_invalidated_dataset_shows_state_and_reason_in_every_format(
        invalidated: DatasetRecord, offline_schema_org: None) -> None:
    reason = "Series 12 was not de-identified"
    withdrawn = [d for d in datacite(invalidated)["dates"] if d["dateType"] == "Withdrawn"]
    assert withdrawn == [{"date": "2024-07-01", "dateType": "Withdrawn",
                          "dateInformation": f"Invalidated: {reason}"}]
    assert any(reason in d["description"] for d in datacite(invalidated)["descriptions"])
    doc = schema_org(invalidated)
    assert doc["creativeWorkStatus"] == f"Invalidated: {reason}"
    assert doc["expires"] == "2024-07-01"
    graph = Graph().parse(data=dcat_turtle(invalidated), format="turtle")
    ds = URIRef(PID)
    assert graph.value(ds, ADMS.status) == URIRef(
        "http://publications.europa.eu/resource/authority/distribution-status/WITHDRAWN")
    assert reason in str(graph.value(ds, RDFS.comment))
    assert reason in str(dcat_jsonld(invalidated))
    assert citation(invalidated).endswith(f"[Invalidated: {reason}]")


def test_citation_names_authors_year_title_version_publisher_and_doi(
        rich: DatasetRecord) -> None:
    assert citation(rich) == ("García López, A.; Li, W. (2024). Lung CT & MR cohort. "
                              "Version 2.0.0. Example Hospital Imaging Platform. "
                              "https://doi.org/10.5281/vre.1234")


def test_user_text_stays_text(rich: DatasetRecord) -> None:
    record = dataclasses.replace(rich, description=XSS, keywords=("<b>bold</b>",))
    assert datacite(record)["descriptions"][0]["description"] == XSS
    graph = Graph().parse(data=dcat_turtle(record), format="turtle")
    assert str(graph.value(URIRef(PID), DCTERMS.description)) == XSS
    assert str(graph.value(URIRef(PID), DCAT.keyword)) == "<b>bold</b>"


# -- content negotiation -------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "expected"), [
    ("application/vnd.datacite.datacite+json", "datacite"),
    ("text/turtle", "dcat-ttl"),
    ("application/ld+json", "schemaorg"),
    (DCAT_JSONLD_MEDIA_TYPE, "dcat-jsonld"),
    ('application/ld+json;profile="http://www.w3.org/ns/dcat#"', "dcat-jsonld"),
    ("text/html, text/turtle;q=0.9, */*;q=0.1", "dcat-ttl"),
    ("application/ld+json;q=0.5, application/vnd.datacite.datacite+json", "datacite"),
    ("text/turtle, application/vnd.datacite.datacite+json", "dcat-ttl"),
    ("text/*", "dcat-ttl"),
    ("*/*", DEFAULT_FORMAT),
    ("text/turtle;q=0, */*", DEFAULT_FORMAT),
    ("", DEFAULT_FORMAT),
    (None, DEFAULT_FORMAT),
])
def test_negotiate_by_accept(accept: str | None, expected: str) -> None:
    assert negotiate(accept, None) == expected


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_parameter_wins_over_accept(name: str) -> None:
    assert negotiate("text/turtle", name) == name


@pytest.mark.parametrize(("accept", "param"), [
    ("text/html", None), ("application/xml, image/png", None), ("text/turtle;q=0", None),
    ("text/turtle", "rdf-xml"),
])
def test_negotiate_refuses_what_is_not_offered(accept: str, param: str | None) -> None:
    with pytest.raises(UnknownFormat) as caught:
        negotiate(accept, param)
    assert isinstance(caught.value, ValueError)
    assert "datacite" in str(caught.value) and "dcat-ttl" in str(caught.value)
    assert caught.value.offered == tuple(FORMATS)


def test_formats_render_what_their_media_type_says(rich: DatasetRecord) -> None:
    for name, fmt in FORMATS.items():
        output = fmt.render(rich)
        assert isinstance(output, str) == (fmt.media_type == "text/turtle"), name
