"""Datasets: selecting studies, content hashes and statistics, the facts the policy is asked
about, the mount tree of a released dataset, and the FAIR record of one dataset."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dataset_service import fair
from dataset_service.dicom import dataset_hash, instances_hash
from dataset_service.models import (
    Dataset,
    DatasetAccess,
    DatasetStudy,
    Instance,
    Project,
    ProjectMember,
    RevokedUser,
    Series,
    Study,
    Subject,
)
from dataset_service.policy import Actor, DatasetFacts
from dataset_service.repository import Repository, TreeFile
from vre.config import Config
from vre.db import on_rollback
from vre.tokens import Principal

# SPDX licences offered without a URL of their own; others need license_url.
KNOWN_LICENSES = {
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-NC-4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "CC-BY-NC-SA-4.0": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "CC-BY-SA-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "ODbL-1.0": "https://opendatacommons.org/licenses/odbl/1-0/",
}
AGE_BIN = 10


@dataclass(frozen=True)
class StudyQuery:
    """Studies of a project chosen by their properties rather than one by one."""

    modality: str | None = None
    body_part: str | None = None
    age_min: int | None = None
    age_max: int | None = None
    sex: str | None = None
    diagnosis: str | None = None


def select_studies(session: Session, project_id: str, query: StudyQuery) -> list[Study]:
    """The project's studies matching every given criterion."""
    stmt = sa.select(Study).join(Subject, Subject.id == Study.subject_id).where(
        Study.project_id == project_id)
    if query.modality:
        stmt = stmt.where(Study.id.in_(sa.select(Series.study_id).where(
            Series.modality == query.modality.upper())))
    if query.body_part:
        stmt = stmt.where(Study.id.in_(sa.select(Series.study_id).where(
            Series.body_part == query.body_part.upper())))
    if query.age_min is not None:
        stmt = stmt.where(Subject.age >= query.age_min)
    if query.age_max is not None:
        stmt = stmt.where(Subject.age <= query.age_max)
    if query.sex:
        stmt = stmt.where(Subject.sex == query.sex.upper()[:1])
    if query.diagnosis:
        stmt = stmt.where(sa.func.lower(Subject.diagnosis) == query.diagnosis.lower())
    return list(session.scalars(stmt.order_by(Study.study_uid)))


def studies_by_ids(session: Session, project_id: str, ids: Sequence[str]) -> tuple[
        list[Study], list[str]]:
    """(found studies, ids not found in the project); ids may be row ids or Study UIDs."""
    wanted = list(dict.fromkeys(ids))
    rows = list(session.scalars(sa.select(Study).where(
        Study.project_id == project_id,
        sa.or_(Study.id.in_(wanted), Study.study_uid.in_(wanted)))))
    found = {r.id for r in rows} | {r.study_uid for r in rows}
    return sorted(rows, key=lambda r: r.study_uid), [i for i in wanted if i not in found]


def content_hash(studies: Sequence[Study]) -> str:
    return dataset_hash(s.content_hash for s in studies)


def compute_statistics(session: Session, study_ids: Sequence[str]) -> dict[str, Any]:
    """What a dataset holds, in counts: shown publicly, so no per-person values."""
    studies = list(session.scalars(sa.select(Study).where(Study.id.in_(study_ids))))
    series = list(session.scalars(sa.select(Series).where(Series.study_id.in_(study_ids))))
    subjects = list(session.scalars(sa.select(Subject).where(
        Subject.id.in_({s.subject_id for s in studies}))))
    ages = [s.age for s in subjects if s.age is not None]
    bins = Counter((a // AGE_BIN) * AGE_BIN for a in ages)
    return {
        "subjects": len(subjects),
        "studies": len(studies),
        "series": len(series),
        "instances": sum(s.instance_count for s in series),
        "size_bytes": sum(s.size_bytes for s in series),
        "modalities": dict(Counter(s.modality for s in series if s.modality)),
        "body_parts": dict(Counter(s.body_part for s in series if s.body_part)),
        "manufacturers": dict(Counter(s.manufacturer for s in series if s.manufacturer)),
        "sex": dict(Counter(s.sex or "unknown" for s in subjects)),
        "age_histogram": [[b, b + AGE_BIN - 1, bins[b]] for b in sorted(bins)],
        "age_min": min(ages) if ages else None,
        "age_max": max(ages) if ages else None,
        "diagnoses": dict(Counter(s.diagnosis for s in subjects if s.diagnosis)),
    }


# Counts of people (or their series) in public statistics: a category or an age bin.
_CATEGORY_CELLS = ("modalities", "body_parts", "manufacturers", "sex", "diagnoses")


def public_statistics(stats: dict[str, Any], threshold: int) -> dict[str, Any]:
    """Statistics as anyone may read them (statistical disclosure control): a count below
    `threshold` reads "< N"; where that hides one cell only, the next smallest reads "≥ N"
    (the public total would give the hidden one away); exact extreme ages become the bounds
    of their age bins. Totals stay exact: they are the dataset's size."""
    shown = dict(stats)
    for key in _CATEGORY_CELLS:
        if key in stats:
            cells = _suppressed(list((stats[key] or {}).values()), threshold)
            shown[key] = dict(zip((stats[key] or {}).keys(), cells, strict=True))
    bins = stats.get("age_histogram") or []
    if "age_histogram" in stats:
        counts = _suppressed([n for _lo, _hi, n in bins], threshold)
        shown["age_histogram"] = [[lo, hi, n] for (lo, hi, _), n in zip(bins, counts,
                                                                         strict=True)]
    if bins:
        shown["age_min"], shown["age_max"] = bins[0][0], bins[-1][1]
    elif "age_min" in stats:
        shown["age_min"] = shown["age_max"] = None
    shown["suppressed_below"] = threshold
    return shown


def _suppressed(counts: list[int], threshold: int) -> list[int | str]:
    small = [i for i, n in enumerate(counts) if n < threshold]
    cells: list[int | str] = [f"< {threshold}" if i in small else n
                              for i, n in enumerate(counts)]
    if len(small) == 1 and len(counts) > 1:
        others = [i for i in range(len(counts)) if i not in small]
        cells[min(others, key=lambda i: counts[i])] = f"≥ {threshold}"
    return cells


def actor_for(session: Session, user_id: str, roles: frozenset[str]) -> Actor:
    """The policy's view of a user: platform roles, project roles, revocation."""
    project_roles = {project: role for project, role in session.execute(sa.select(
        ProjectMember.project_id, ProjectMember.role).where(ProjectMember.user_id == user_id))}
    revoked = session.get(RevokedUser, user_id) is not None
    return Actor(user_id=user_id, roles=roles, project_roles=project_roles, revoked=revoked)


def actor_of(session: Session, principal: Principal) -> Actor:
    return actor_for(session, principal.subject, frozenset(principal.roles))


def facts_of(session: Session, dataset: Dataset) -> DatasetFacts:
    access = frozenset(session.scalars(sa.select(DatasetAccess.user_id).where(
        DatasetAccess.dataset_id == dataset.id)))
    return DatasetFacts(
        id=dataset.id, project_id=dataset.project_id, state=dataset.state,
        created_by=dataset.created_by, public_use=dataset.public_use, access_list=access,
        invalidation_reason=dataset.invalidation_reason)


def study_ids_of(session: Session, dataset_id: str) -> list[str]:
    return list(session.scalars(sa.select(DatasetStudy.study_id).where(
        DatasetStudy.dataset_id == dataset_id)))


def tree_contents(session: Session, dataset_id: str) -> tuple[list[TreeFile], dict[str, Any]]:
    """Every file of a dataset at subject/study/series/NNNN.dcm, and its index document."""
    rows = session.execute(
        sa.select(Subject, Study, Series, Instance)
        .join(Study, Study.subject_id == Subject.id)
        .join(DatasetStudy, DatasetStudy.study_id == Study.id)
        .join(Series, Series.study_id == Study.id)
        .join(Instance, Instance.series_id == Series.id)
        .where(DatasetStudy.dataset_id == dataset_id)
        .order_by(Subject.pseudonym, Study.study_uid, Series.number, Series.series_uid,
                  Instance.number, Instance.sop_uid)).all()
    files: list[TreeFile] = []
    subjects: dict[str, dict[str, Any]] = {}
    counters: dict[str, int] = {}
    for subject, study, series, instance in rows:
        folder = f"{subject.pseudonym}/{study.study_uid}/{series.series_uid}"
        counters[folder] = counters.get(folder, 0) + 1
        files.append(TreeFile(f"{folder}/{counters[folder]:05d}.dcm", instance.sha256))
        entry = subjects.setdefault(subject.pseudonym, {
            "subject": subject.pseudonym, "age": subject.age, "sex": subject.sex,
            "diagnosis": subject.diagnosis, "clinical": subject.clinical or {}, "studies": {}})
        st = entry["studies"].setdefault(study.study_uid, {
            "study_uid": study.study_uid, "date": study.study_date.isoformat()
            if study.study_date else None, "description": study.description, "series": {}})
        st["series"].setdefault(series.series_uid, {
            "series_uid": series.series_uid, "modality": series.modality,
            "body_part": series.body_part, "description": series.description,
            "manufacturer": series.manufacturer, "rows": series.rows,
            "columns": series.columns, "slice_thickness": series.slice_thickness,
            "slice_spacing": series.slice_spacing, "instances": series.instance_count,
            "folder": folder})
    index = {"subjects": [
        {**s, "studies": [{**st, "series": list(st["series"].values())}
                          for st in s["studies"].values()]} for s in subjects.values()]}
    return files, index


def build_tree(session: Session, repository: Repository, dataset: Dataset) -> str:
    """Lay out the dataset's own read-only directory from its rows (whole or not at all; its
    contents never change once released)."""
    files, index = tree_contents(session, dataset.id)
    index = {"dataset": {"id": dataset.id, "name": dataset.name, "version": dataset.version,
                         "content_hash": dataset.content_hash}, **index}
    return str(repository.build_tree(dataset.id, files, index))


def ensure_tree(session: Session, repository: Repository, dataset: Dataset) -> str:
    """The tree a release builds, in the release's transaction: one built here goes again if
    the transaction rolls back, so a failed release leaves no tree behind."""
    dataset_id = dataset.id
    existed = repository.tree_path(dataset_id).is_dir()
    tree = build_tree(session, repository, dataset)
    if not existed:
        on_rollback(session, lambda: repository.remove_tree(dataset_id))
    return tree


def fair_record(config: Config, session: Session, dataset: Dataset) -> fair.DatasetRecord:
    """The one record every public metadata format is rendered from."""
    project = session.get(Project, dataset.project_id)
    stats = public_statistics(dataset.statistics or {}, config.small_cell_threshold)
    pid = f"{config.pid_base}/{dataset.id}"

    def link(other: str | None) -> str | None:
        return f"{config.pid_base}/{other}" if other else None

    return fair.DatasetRecord(
        id=dataset.id, pid_url=pid, title=dataset.name, description=dataset.description,
        version=dataset.version, state=dataset.state, created=dataset.created_at,
        licence=fair.Licence(spdx_id=dataset.license_id, url=dataset.license_url),
        contact=fair.Contact(name=dataset.contact_name, email=dataset.contact_email),
        publisher=config.publisher, landing_page_url=pid,
        base_url=config.url_of("dataset_service"), content_hash=dataset.content_hash,
        statistics=fair.DatasetStatistics(
            subjects=stats.get("subjects", 0), studies=stats.get("studies", 0),
            series=stats.get("series", 0), instances=stats.get("instances", 0),
            size_bytes=stats.get("size_bytes", 0), modalities=stats.get("modalities", {}),
            body_parts=stats.get("body_parts", {}),
            manufacturers=stats.get("manufacturers", {}), sex=stats.get("sex", {}),
            age_histogram=[tuple(b) for b in stats.get("age_histogram", [])],
            age_min=stats.get("age_min"), age_max=stats.get("age_max"),
            diagnoses=stats.get("diagnoses", {})),
        doi=dataset.doi, invalidation_reason=dataset.invalidation_reason,
        released=dataset.released_at, published=dataset.published_at,
        modified=dataset.modified_at, invalidated=dataset.invalidated_at,
        authors=[fair.Person(**a) for a in dataset.authors or []],
        keywords=list(dataset.keywords or []), purpose=dataset.purpose,
        provenance=dataset.provenance, project=project.title if project else None,
        previous_version=link(dataset.previous_id), next_version=link(dataset.next_id))


@dataclass
class IntegrityReport:
    """A dataset's contents recomputed from the repository's files, against what was traced."""

    dataset_id: str
    stored_hash: str
    recomputed_hash: str | None
    traced_hash: str | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_integrity(session: Session, repository: Repository, dataset: Dataset,
                    traced_hash: str | None) -> IntegrityReport:
    """Re-hash every file of the dataset and rebuild its content hash from them."""
    problems: list[str] = []
    study_hashes = []
    for study in session.scalars(sa.select(Study).join(
            DatasetStudy, DatasetStudy.study_id == Study.id).where(
            DatasetStudy.dataset_id == dataset.id).order_by(Study.study_uid)):
        pairs = []
        for sop_uid, recorded in session.execute(
                sa.select(Instance.sop_uid, Instance.sha256).join(
                    Series, Series.id == Instance.series_id).where(
                    Series.study_id == study.id)):
            path = repository.blob_path(recorded)
            try:
                with open(path, "rb") as handle:
                    actual = hashlib.file_digest(handle, "sha256").hexdigest()
            except FileNotFoundError:
                problems.append(f"instance {sop_uid}: its file is missing")
                actual = "0" * 64
            else:
                if actual != recorded:
                    problems.append(f"instance {sop_uid}: its file changed")
            pairs.append((sop_uid, actual))
        recomputed = instances_hash(pairs)
        if recomputed != study.content_hash:
            problems.append(f"study {study.study_uid}: contents differ from when it was ingested")
        study_hashes.append(recomputed)
    recomputed_hash = dataset_hash(study_hashes) if study_hashes else None
    if recomputed_hash != dataset.content_hash:
        problems.append("the dataset's contents differ from its recorded content hash")
    if traced_hash is None:
        problems.append("the ledger holds no CREATE_DATASET trace for this dataset")
    elif traced_hash != dataset.content_hash:
        problems.append("the recorded content hash differs from the one in the ledger")
    return IntegrityReport(dataset.id, dataset.content_hash, recomputed_hash, traced_hash,
                           problems)
