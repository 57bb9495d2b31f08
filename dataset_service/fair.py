"""FAIR metadata: pure renderers of one dataset record into DataCite, schema.org and DCAT-AP.

Every renderer is a function from a `DatasetRecord` to a dict or str; the service fills the
record from its tables and serves the result. Text from users is data, never markup: nothing
here produces HTML, and `schema_org_script` escapes what it embeds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal, NamedTuple

from rdflib import BNode, Graph, Namespace, URIRef
from rdflib import Literal as RDFLiteral
from rdflib.namespace import DCTERMS, FOAF, OWL, PROV, RDF, RDFS, SDO, SKOS, XSD

State = Literal["draft", "released", "published", "invalidated"]

DCAT = Namespace("http://www.w3.org/ns/dcat#")  # DCAT 3: rdflib's own DCAT is version 2
DCATAP = Namespace("http://data.europa.eu/r5r/")
ADMS = Namespace("http://www.w3.org/ns/adms#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
DPV = Namespace("https://w3id.org/dpv#")
# The EUCAIM DCAT-AP 2.0 profile (github.com/EUCAIM/eucaim_dcat_ap, releases/v2.0) names its
# terms in the EUCAIM hyper-ontology and takes HealthDCAT-AP terms in the w3id namespace below.
# HealthDCAT-AP's own namespace is not final (ckanext-dcat uses healthdataportal.eu/ns/health#).
EUCAIM = Namespace("https://hyperontology.eucaim.cancerimage.eu/#")
HEALTHDCATAP = Namespace("https://w3id.org/healthdcat-ap#")

RESTRICTED = URIRef("http://publications.europa.eu/resource/authority/access-right/RESTRICTED")
GDPR = URIRef("http://data.europa.eu/eli/reg/2016/679/oj")
EHDS = URIRef("http://data.europa.eu/eli/reg/2025/327/oj")  # Regulation (EU) 2025/327
HEALTH_THEME = URIRef("http://publications.europa.eu/resource/authority/data-theme/HEAL")
DICOM_MEDIA_TYPE = URIRef("https://www.iana.org/assignments/media-types/application/dicom")
_STATUS = "http://publications.europa.eu/resource/authority/distribution-status/"
ADMS_STATUS = {"draft": "DEVELOP", "released": "COMPLETED", "published": "COMPLETED",
               "invalidated": "WITHDRAWN"}
CONDITIONS_OF_ACCESS = "restricted: data stays in the platform, access on request"
DICOM_MODALITY_SCHEME = ("https://dicom.nema.org/medical/dicom/current/output/chtml/"
                         "part16/sect_CID_29.html")
PREFIXES = {"dcat": DCAT, "dct": DCTERMS, "dcatap": DCATAP, "adms": ADMS, "foaf": FOAF,
            "vcard": VCARD, "dpv": DPV, "eucaim": EUCAIM, "healthdcatap": HEALTHDCATAP,
            "schema": SDO, "prov": PROV, "owl": OWL, "rdfs": RDFS, "skos": SKOS, "xsd": XSD}
# Where the service serves each format; the API's route must match this template.
FORMAT_URL = "{base}/api/v1/datasets/{id}/metadata?format={name}"


# A count in public statistics: a number, or a suppressed small cell ("< 5", "≥ 5").
Count = int | str

@dataclass(frozen=True, kw_only=True)
class Person:
    """An author; `orcid` is the bare iD or its https://orcid.org/ URL."""

    name: str
    given_name: str | None = None
    family_name: str | None = None
    orcid: str | None = None
    affiliation: str | None = None


@dataclass(frozen=True, kw_only=True)
class Licence:
    """A licence by its SPDX identifier (e.g. CC-BY-4.0) and the URL of its text."""

    spdx_id: str
    url: str


@dataclass(frozen=True, kw_only=True)
class Contact:
    """Who answers questions and access requests about a dataset."""

    name: str
    email: str


@dataclass(frozen=True, kw_only=True)
class DatasetStatistics:
    """Aggregate counts over a dataset's DICOM headers: never anything about one person. A
    count is a number, or a suppressed small cell as its text ("< 5", "≥ 5")."""

    subjects: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    size_bytes: int = 0
    modalities: Mapping[str, Count] = field(default_factory=dict)
    body_parts: Mapping[str, Count] = field(default_factory=dict)
    manufacturers: Mapping[str, Count] = field(default_factory=dict)
    sex: Mapping[str, Count] = field(default_factory=dict)
    age_histogram: Sequence[tuple[int, int, Count]] = ()  # (bin start, bin end, count), years
    age_min: int | None = None
    age_max: int | None = None
    diagnoses: Mapping[str, Count] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DatasetRecord:
    """Everything public about one dataset version, as the renderers need it."""

    id: str
    pid_url: str
    title: str
    description: str
    version: str
    state: State
    created: date | datetime
    licence: Licence
    contact: Contact
    publisher: str
    landing_page_url: str
    base_url: str
    content_hash: str
    statistics: DatasetStatistics = field(default_factory=DatasetStatistics)
    doi: str | None = None  # bare 10.x/y, doi:10.x/y or https://doi.org/10.x/y
    invalidation_reason: str | None = None
    released: date | datetime | None = None
    published: date | datetime | None = None
    modified: date | datetime | None = None
    invalidated: date | datetime | None = None
    authors: Sequence[Person] = ()
    keywords: Sequence[str] = ()
    purpose: str = ""
    provenance: str = ""
    project: str | None = None
    previous_version: str | None = None
    next_version: str | None = None
    language: str | None = "en"  # BCP 47 tag of the title, description and keywords


# -- shared helpers ------------------------------------------------------------------------


def _iso(value: date | datetime) -> str:
    return value.isoformat()


def _year(record: DatasetRecord) -> str:
    return f"{(record.published or record.released or record.created).year:04d}"


def _issued(record: DatasetRecord) -> date | datetime | None:
    return record.published or record.released


def _bare_doi(doi: str) -> str:
    for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:"):
        if doi.lower().startswith(prefix):
            return doi[len(prefix):]
    return doi


def _doi_url(record: DatasetRecord) -> str | None:
    return f"https://doi.org/{_bare_doi(record.doi)}" if record.doi else None


def _orcid_url(person: Person) -> str | None:
    if not person.orcid:
        return None
    return "https://orcid.org/" + person.orcid.rstrip("/").rsplit("/", 1)[-1]


def _compact(value: Any) -> Any:
    """Drop None and empty values, recursively, so absent fields are absent, not null."""
    if isinstance(value, dict):
        items = ((k, _compact(v)) for k, v in value.items())
        return {k: v for k, v in items if v is not None and v != "" and v != [] and v != {}}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _counts(counts: Mapping[str, Count]) -> str:
    """Largest first; suppressed cells (text) after the counts shown."""
    def largest(cell: tuple[str, Count]) -> int:
        return -cell[1] if isinstance(cell[1], int) else 0

    return ", ".join(f"{name} ({n})" for name, n in sorted(counts.items(), key=largest))


def _human_bytes(size: int) -> str:
    value, units = float(size), ["B", "kB", "MB", "GB", "TB", "PB"]
    while value >= 1000 and len(units) > 1:
        value, units = value / 1000, units[1:]
    return f"{value:.0f} {units[0]}" if units[0] == "B" else f"{value:.1f} {units[0]}"


def _size(stats: DatasetStatistics) -> str:
    return (f"{stats.subjects} subjects, {stats.studies} studies, {stats.series} series, "
            f"{stats.instances} instances, {_human_bytes(stats.size_bytes)}")


def statistics_summary(stats: DatasetStatistics) -> str:
    """One paragraph of plain text that sums up the statistics, for descriptions."""
    parts = [f"{_size(stats)}."]
    for label, counts in (("Modalities", stats.modalities), ("Body parts", stats.body_parts),
                          ("Manufacturers", stats.manufacturers), ("Sex", stats.sex),
                          ("Diagnoses", stats.diagnoses)):
        if counts:
            parts.append(f"{label}: {_counts(counts)}.")
    if stats.age_min is not None and stats.age_max is not None:
        parts.append(f"Age {stats.age_min} to {stats.age_max} years.")
    if stats.age_histogram:
        bins = ", ".join(f"{lo}-{hi}: {n}" for lo, hi, n in stats.age_histogram)
        parts.append(f"Age histogram: {bins}.")
    return " ".join(parts)


def state_note(record: DatasetRecord) -> str | None:
    """The sentence every format carries for a dataset that is not (or no longer) citable."""
    if record.state == "invalidated":
        return f"Invalidated: {record.invalidation_reason or 'no reason given'}"
    return "Draft: not yet released" if record.state == "draft" else None


def format_url(record: DatasetRecord, name: str) -> str:
    """The public URL at which the service serves `record` in format `name`."""
    return FORMAT_URL.format(base=record.base_url.rstrip("/"), id=record.id, name=name)


def citation(record: DatasetRecord) -> str:
    """A human citation: Authors (year). Title. Version. Publisher. DOI or PID."""
    names = []
    for person in record.authors:
        if person.family_name:
            initials = " ".join(f"{part[0]}." for part in (person.given_name or "").split())
            names.append(f"{person.family_name}, {initials}".rstrip(", "))
        else:
            names.append(person.name)
    text = (f"{'; '.join(names) or record.publisher} ({_year(record)}). "
            f"{record.title.rstrip('.')}. Version {record.version}. {record.publisher}. "
            f"{_doi_url(record) or record.pid_url}")
    note = state_note(record)
    return f"{text} [{note}]" if note else text


# -- DataCite ------------------------------------------------------------------------------


def _datacite_creator(person: Person) -> dict[str, Any]:
    name = (f"{person.family_name}, {person.given_name}" if person.family_name
            and person.given_name else person.name)
    orcid = _orcid_url(person)
    return {
        "name": name, "nameType": "Personal",
        "givenName": person.given_name, "familyName": person.family_name,
        "nameIdentifiers": [{"nameIdentifier": orcid, "nameIdentifierScheme": "ORCID",
                             "schemeUri": "https://orcid.org"}] if orcid else [],
        "affiliation": [{"name": person.affiliation}] if person.affiliation else [],
    }


def datacite(record: DatasetRecord) -> dict[str, Any]:
    """DataCite Metadata Schema 4.5 in its JSON form (the `datacite` package's schema).

    That schema has no `identifiers` key: the DOI goes in `doi`, the PID URL in
    `alternateIdentifiers`. A record with no authors credits the publisher as creator.
    """
    stats, lang = record.statistics, record.language
    creators = [_datacite_creator(p) for p in record.authors] or [
        {"name": record.publisher, "nameType": "Organizational"}]
    contributors = [{"name": record.contact.name, "contributorType": "ContactPerson"},
                    {"name": record.publisher, "nameType": "Organizational",
                     "contributorType": "HostingInstitution"}]
    if record.project:
        contributors.append({"name": record.project, "nameType": "Organizational",
                             "contributorType": "ResearchGroup"})
    subjects = [{"subject": k, "lang": lang} for k in dict.fromkeys(record.keywords)]
    subjects += [{"subject": m, "subjectScheme": "DICOM modality",
                  "schemeUri": DICOM_MODALITY_SCHEME} for m in stats.modalities]
    subjects += [{"subject": b, "subjectScheme": "DICOM body part examined"}
                 for b in stats.body_parts]
    dates = [{"date": _iso(record.created), "dateType": "Created"}]
    if _issued(record):
        dates.append({"date": _iso(_issued(record)), "dateType": "Issued"})
    if record.modified:
        dates.append({"date": _iso(record.modified), "dateType": "Updated"})
    if record.state == "invalidated" and (record.invalidated or record.modified):
        dates.append({"date": _iso(record.invalidated or record.modified),
                      "dateType": "Withdrawn", "dateInformation": state_note(record)})
    related = [{"relatedIdentifier": record.previous_version, "relatedIdentifierType": "URL",
                "relationType": "IsNewVersionOf"}] if record.previous_version else []
    if record.next_version:
        related.append({"relatedIdentifier": record.next_version,
                        "relatedIdentifierType": "URL", "relationType": "IsPreviousVersionOf"})
    related += [{"relatedIdentifier": format_url(record, name), "relatedIdentifierType": "URL",
                 "relationType": "HasMetadata", "relatedMetadataScheme": scheme,
                 "schemeUri": uri}
                for name, scheme, uri in (("dcat-ttl", "DCAT-AP", str(DCATAP)),
                                          ("schemaorg", "schema.org", "https://schema.org/"))]
    descriptions = [(record.description, "Abstract"), (record.provenance, "Methods"),
                    (record.purpose, "Other"), (state_note(record) or "", "Other"),
                    (f"{statistics_summary(stats)} Content hash: {record.content_hash}.",
                     "TechnicalInfo")]
    return _compact({
        "doi": _bare_doi(record.doi) if record.doi else None,
        "url": record.landing_page_url,
        "types": {"resourceTypeGeneral": "Dataset", "resourceType": "DICOM imaging dataset"},
        "creators": creators,
        "titles": [{"title": record.title, "lang": lang}],
        "publisher": {"name": record.publisher},
        "publicationYear": _year(record),
        "subjects": subjects,
        "contributors": contributors,
        "dates": dates,
        "alternateIdentifiers": [{"alternateIdentifier": record.pid_url,
                                  "alternateIdentifierType": "URL"}],
        "relatedIdentifiers": related,
        "sizes": [f"{stats.subjects} subjects", f"{stats.studies} studies",
                  f"{stats.series} series", f"{stats.instances} instances",
                  f"{stats.size_bytes} bytes"],
        "formats": ["application/dicom"],
        "version": record.version,
        "rightsList": [
            {"rights": record.licence.spdx_id, "rightsUri": record.licence.url,
             "rightsIdentifier": record.licence.spdx_id, "rightsIdentifierScheme": "SPDX",
             "schemeUri": "https://spdx.org/licenses/"},
            {"rights": f"Restricted access ({CONDITIONS_OF_ACCESS})",
             "rightsUri": "info:eu-repo/semantics/restrictedAccess"}],
        "descriptions": [{"description": text, "descriptionType": kind, "lang": lang}
                         for text, kind in descriptions if text],
        "schemaVersion": "http://datacite.org/schema/kernel-4",
    })


# -- schema.org ----------------------------------------------------------------------------


def _sdo_person(person: Person) -> dict[str, Any]:
    return {"@type": "Person", "@id": _orcid_url(person), "name": person.name,
            "givenName": person.given_name, "familyName": person.family_name,
            "affiliation": {"@type": "Organization", "name": person.affiliation}
            if person.affiliation else None}


def schema_org(record: DatasetRecord) -> dict[str, Any]:
    """schema.org `Dataset` JSON-LD, for search engines and the landing page.

    No `distribution`: no file can be downloaded, access is requested on the landing page
    (`conditionsOfAccess`). No `isAccessibleForFree`: access is restricted, not paid for.
    `creditText` carries the human citation (schema.org `citation` means works cited *by*
    this one). The previous version is `isBasedOn`; schema.org has no "next version", so the
    next one is stated from its side (`@reverse isBasedOn`).
    """
    stats = record.statistics
    age = ({"@type": "PropertyValue", "name": "Patient's Age", "unitText": "years",
            "minValue": stats.age_min, "maxValue": stats.age_max}
           if stats.age_min is not None and stats.age_max is not None else None)
    variables = [{"@type": "PropertyValue", "name": name, "value": sorted(values)}
                 for name, values in (("Modality", stats.modalities),
                                      ("Body Part Examined", stats.body_parts),
                                      ("Manufacturer", stats.manufacturers),
                                      ("Patient's Sex", stats.sex)) if values]
    status = state_note(record) if record.state == "invalidated" else record.state.title()
    return _compact({
        "@context": "https://schema.org/",
        "@type": "Dataset",
        "@id": record.pid_url,
        "identifier": [i for i in (_doi_url(record), record.pid_url) if i],
        "sameAs": _doi_url(record),
        "name": record.title,
        "description": record.description,
        "url": record.landing_page_url,
        "version": record.version,
        "license": record.licence.url,
        "creator": [_sdo_person(p) for p in record.authors]
        or [{"@type": "Organization", "name": record.publisher}],
        "publisher": {"@type": "Organization", "name": record.publisher},
        "sourceOrganization": {"@type": "ResearchProject", "name": record.project}
        if record.project else None,
        "keywords": list(record.keywords),
        "dateCreated": _iso(record.created),
        "datePublished": _iso(_issued(record)) if _issued(record) else None,
        "dateModified": _iso(record.modified) if record.modified else None,
        "expires": _iso(record.invalidated) if record.invalidated else None,
        "creativeWorkStatus": status,
        "conditionsOfAccess": CONDITIONS_OF_ACCESS,
        "encodingFormat": "application/dicom",
        "measurementTechnique": sorted(stats.modalities),
        "variableMeasured": [*variables, age] if age else variables,
        "about": [{"@type": "MedicalCondition", "name": d} for d in sorted(stats.diagnoses)],
        "size": _size(stats),
        "creditText": citation(record),
        "isBasedOn": {"@id": record.previous_version} if record.previous_version else None,
        "@reverse": {"isBasedOn": {"@id": record.next_version}}
        if record.next_version else None,
    })


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                   "\u2028": "\\u2028", "\u2029": "\\u2029"}


def schema_org_script(record: DatasetRecord) -> str:
    """The `<script type="application/ld+json">` element to embed in the landing page.

    `<`, `>` and `&` are written as JSON escapes, so no user text (say a description holding
    `</script>`) can close the element or open markup; the JSON value is unchanged.
    """
    text = json.dumps(schema_org(record), ensure_ascii=False, indent=2)
    for char, escape in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return f'<script type="application/ld+json">\n{text}\n</script>'


# -- DCAT-AP -------------------------------------------------------------------------------


def dcat(record: DatasetRecord) -> Graph:
    """DCAT-AP 3 with HealthDCAT-AP and EUCAIM DCAT-AP imaging terms, as an RDF graph.

    EUCAIM terms (eucaim:hasImageModality, hasImageBodyPart, hasEquipmentManufacturer,
    hasCondition, hasBirthSex) are emitted with the DICOM codes as literals: the profile
    wants hyper-ontology classes, and no mapping to them exists yet. Subject and study counts
    are healthdcatap:numberOfUniqueIndividuals and numberOfRecords, as the profile says.
    Standard terms ride along: schema:measurementTechnique (modalities), dct:subject
    (diagnoses). The one distribution has an access URL (the landing page, where access is
    requested) and no download URL: files never leave the platform.
    """
    g, ds, stats = Graph(), URIRef(record.pid_url), record.statistics
    for prefix, namespace in PREFIXES.items():
        g.bind(prefix, namespace)

    def text(value: str) -> RDFLiteral:
        return RDFLiteral(value, lang=record.language)

    def count(value: int) -> RDFLiteral:
        return RDFLiteral(value, datatype=XSD.nonNegativeInteger)

    def node(*pairs: tuple[URIRef, Any], subject: URIRef | None = None) -> URIRef | BNode:
        resource = subject or BNode()
        for predicate, value in pairs:
            g.add((resource, predicate, value))
        return resource

    node((RDF.type, DCAT.Dataset),
         (DCTERMS.identifier, RDFLiteral(record.pid_url, datatype=XSD.anyURI)),
         (DCTERMS.title, text(record.title)),
         (DCTERMS.description, text(record.description)),
         (DCAT.version, RDFLiteral(record.version)),
         (OWL.versionInfo, RDFLiteral(record.version)),
         (DCAT.landingPage, URIRef(record.landing_page_url)),
         (DCTERMS.accessRights, RESTRICTED),
         (DCTERMS.license, URIRef(record.licence.url)),
         (DCAT.theme, HEALTH_THEME),
         (DCATAP.applicableLegislation, GDPR),
         (DCATAP.applicableLegislation, EHDS),
         (DCTERMS.type, DPV.PseudonymisedData),
         (ADMS.status, URIRef(_STATUS + ADMS_STATUS[record.state])),
         (HEALTHDCATAP.numberOfUniqueIndividuals, count(stats.subjects)),
         (HEALTHDCATAP.numberOfRecords, count(stats.studies)), subject=ds)
    node((RDF.type, DCTERMS.LicenseDocument), (DCTERMS.identifier, RDFLiteral(
        record.licence.spdx_id)), subject=URIRef(record.licence.url))
    g.add((ds, DCTERMS.publisher, node((RDF.type, FOAF.Organization),
                                       (FOAF.name, RDFLiteral(record.publisher)))))
    g.add((ds, DCAT.contactPoint, node(
        (RDF.type, VCARD.Kind), (VCARD.fn, RDFLiteral(record.contact.name)),
        (VCARD.hasEmail, URIRef(f"mailto:{record.contact.email}")))))
    for person in record.authors:
        orcid = _orcid_url(person)
        agent = node((RDF.type, FOAF.Person), (FOAF.name, RDFLiteral(person.name)),
                     subject=URIRef(orcid) if orcid else None)
        g.add((ds, DCTERMS.creator, agent))
    for keyword in record.keywords:
        g.add((ds, DCAT.keyword, text(keyword)))
    for predicate, value in ((DCTERMS.issued, _issued(record)),
                             (DCTERMS.modified, record.modified)):
        if value:
            g.add((ds, predicate, RDFLiteral(value)))
    if record.doi:
        g.add((ds, ADMS.identifier, node(
            (RDF.type, ADMS.Identifier), (ADMS.schemaAgency, RDFLiteral("DataCite")),
            (SKOS.notation, RDFLiteral(_doi_url(record), datatype=XSD.anyURI)))))
    g.add((ds, ADMS.identifier, node((RDF.type, ADMS.Identifier),
                                     (SKOS.notation, RDFLiteral(record.content_hash)),
                                     (RDFS.label, RDFLiteral("content hash")))))
    if record.previous_version:
        g.add((ds, DCAT.previousVersion, URIRef(record.previous_version)))
    if record.next_version:
        g.add((URIRef(record.next_version), DCAT.previousVersion, ds))
    if record.provenance:
        g.add((ds, DCTERMS.provenance, node((RDF.type, DCTERMS.ProvenanceStatement),
                                            (RDFS.label, text(record.provenance)))))
    if record.purpose:
        g.add((ds, DPV.hasPurpose, node((RDF.type, DPV.Purpose),
                                        (DCTERMS.description, text(record.purpose)))))
    if record.project:
        g.add((ds, PROV.wasGeneratedBy, node((RDF.type, PROV.Activity),
                                             (RDFS.label, RDFLiteral(record.project)))))
    if note := state_note(record):
        g.add((ds, RDFS.comment, text(note)))
    for predicates, values in (((EUCAIM.hasImageModality, SDO.measurementTechnique),
                                stats.modalities),
                               ((EUCAIM.hasImageBodyPart,), stats.body_parts),
                               ((EUCAIM.hasEquipmentManufacturer,), stats.manufacturers),
                               ((EUCAIM.hasCondition, DCTERMS.subject), stats.diagnoses),
                               ((EUCAIM.hasBirthSex,), stats.sex)):
        for value in values:
            for predicate in predicates:
                g.add((ds, predicate, RDFLiteral(value)))
    if stats.age_min is not None and stats.age_max is not None:
        g.add((ds, HEALTHDCATAP.minTypicalAge, count(stats.age_min)))
        g.add((ds, HEALTHDCATAP.maxTypicalAge, count(stats.age_max)))
    g.add((ds, HEALTHDCATAP.populationCoverage, text(statistics_summary(stats))))
    g.add((ds, DCAT.distribution, node(
        (RDF.type, DCAT.Distribution), (DCTERMS.title, text("DICOM files, in-platform access")),
        (DCAT.accessURL, URIRef(record.landing_page_url)), (DCAT.mediaType, DICOM_MEDIA_TYPE),
        (DCTERMS.accessRights, RESTRICTED), (DCTERMS.license, URIRef(record.licence.url)),
        (DCAT.byteSize, count(stats.size_bytes)))))
    return g


def dcat_turtle(record: DatasetRecord) -> str:
    """The DCAT-AP graph as Turtle."""
    return dcat(record).serialize(format="turtle")


DCAT_JSONLD_CONTEXT = {prefix: str(namespace) for prefix, namespace in PREFIXES.items()}


def dcat_jsonld(record: DatasetRecord) -> dict[str, Any]:
    """The same DCAT-AP graph as JSON-LD, with an inline context (nothing to fetch)."""
    text = dcat(record).serialize(format="json-ld", context=DCAT_JSONLD_CONTEXT)
    return json.loads(text)


# -- content negotiation -------------------------------------------------------------------


class Format(NamedTuple):
    media_type: str
    render: Callable[[DatasetRecord], dict[str, Any] | str]


DCAT_JSONLD_MEDIA_TYPE = f'application/ld+json; profile="{DCAT}"'
FORMATS: dict[str, Format] = {
    "datacite": Format("application/vnd.datacite.datacite+json", datacite),
    "schemaorg": Format("application/ld+json", schema_org),
    "jsonld": Format("application/ld+json", schema_org),
    "dcat-ttl": Format("text/turtle", dcat_turtle),
    "dcat-jsonld": Format(DCAT_JSONLD_MEDIA_TYPE, dcat_jsonld),
}
DEFAULT_FORMAT = "schemaorg"


class UnknownFormat(ValueError):
    """No offered format matches the request; the API answers 406 with the offer."""

    def __init__(self, requested: str) -> None:
        self.requested = requested
        self.offered = tuple(FORMATS)
        offer = ", ".join(f"{name} ({fmt.media_type})" for name, fmt in FORMATS.items())
        super().__init__(f"no format matches {requested!r}; offered: {offer}")


def _media_range(text: str) -> tuple[str, dict[str, str]]:
    kind, *params = (p.strip() for p in text.split(";"))
    pairs = (p.partition("=") for p in params if "=" in p)
    return kind.lower(), {k.strip().lower(): v.strip().strip('"') for k, _, v in pairs}


def _specificity(accepted: tuple[str, dict[str, str]], offered: tuple[str, dict[str, str]]
                 ) -> int | None:
    """How precisely a media range names an offered type (None: it does not match)."""
    (kind, params), (offered_kind, offered_params) = accepted, offered
    if kind == "*/*":
        return 0
    if kind.endswith("/*"):
        return 1 if offered_kind.startswith(kind[:-1]) else None
    if kind != offered_kind or any(offered_params.get(k) != v for k, v in params.items()):
        return None
    return 3 if params else 2


def negotiate(accept: str | None, format_param: str | None = None) -> str:
    """The format name to serve: `?format=` wins, then the Accept header (RFC 9110 q-values,
    most specific range first, then the client's order); ties and no Accept: DEFAULT_FORMAT."""
    if format_param:
        if format_param.strip().lower() not in FORMATS:
            raise UnknownFormat(format_param)
        return format_param.strip().lower()
    if not accept or not accept.strip():
        return DEFAULT_FORMAT
    ranges = []
    for index, item in enumerate(r for r in accept.split(",") if r.strip()):
        kind, params = _media_range(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        ranges.append((kind, params, q, index))
    best: tuple[float, int, int, bool, int] | None = None
    chosen = None
    for order, (name, fmt) in enumerate(FORMATS.items()):
        offered = _media_range(fmt.media_type)
        matches = [(s, q, i) for kind, params, q, i in ranges
                   if (s := _specificity((kind, params), offered)) is not None]
        if not matches:
            continue
        spec, q, index = max(matches, key=lambda m: (m[0], -m[2]))
        rank = (q, spec, -index, name == DEFAULT_FORMAT, -order)
        if q > 0 and (best is None or rank > best):
            best, chosen = rank, name
    if chosen is None:
        raise UnknownFormat(accept)
    return chosen
