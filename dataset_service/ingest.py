"""Ingestion: a folder of DICOM files (and its clinical data) into the repository. Headers are
read in parallel without pixel data; each study goes in whole or not at all; every refused
file or study is recorded with its reason; running it again skips what is already in."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import multiprocessing
import os
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dataset_service import dropfolders
from dataset_service.dicom import (
    DeidPolicy,
    InstanceHeader,
    InvalidInstance,
    StudyGroup,
    group_instances,
    quiet_pydicom,
    read_instance,
    study_demographics,
    study_hash,
    subject_conflicts,
)
from dataset_service.models import (
    IngestRun,
    Instance,
    QuarantineEntry,
    Series,
    Study,
    Subject,
)
from dataset_service.repository import Repository
from vre.db import Database, bulk_insert, utcnow

log = logging.getLogger(__name__)

CLINICAL_FILES = ("clinical.csv", "clinical.json")
# Clinical columns that would identify a person; a table carrying one is refused whole.
IDENTIFYING_COLUMNS = frozenset({
    "name", "patient_name", "first_name", "last_name", "surname", "birth_date", "dob",
    "date_of_birth", "address", "street", "postcode", "zip", "phone", "telephone", "email",
    "mrn", "medical_record_number", "ssn", "national_id", "insurance_number",
})
KNOWN_CLINICAL = ("subject_id", "age", "sex", "diagnosis")
# Admitted studies are stored and recorded together until they hold this many files: one
# flush of the file system and one transaction for them all, rather than one a study.
BATCH_FILES = 500
# Records one trace in the session's transaction (the service's outbox sends it once that
# commits), or raises: an action whose trace cannot be recorded is not done.
Trace = Callable[[Session, dict[str, Any]], Any]


@dataclass
class IngestReport:
    """What one run did; also kept, as counts, on its IngestRun row."""

    files: int = 0
    read: int = 0
    studies_ingested: int = 0
    studies_skipped: int = 0
    studies_quarantined: int = 0
    files_ingested: int = 0
    files_quarantined: int = 0
    bytes_stored: int = 0
    subjects_with_clinical_data: int = 0
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    subjects_seen: set[str] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


def dicom_candidates(source: Path) -> list[Path]:
    """Every regular file under the folder except hidden files and the clinical tables,
    folder by folder (the files of a folder by name, then its subfolders by name)."""
    found: list[Path] = []
    _candidates(source, source, found)
    return found


def _candidates(directory: Path, source: Path, found: list[Path]) -> None:
    # os.scandir rather than os.walk: the kind of each entry comes with it, not from a stat.
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # as os.walk: a folder that cannot be listed is passed over
    subdirs = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            # Folders are entered, except hidden ones and links to folders.
            if not entry.name.startswith(".") and not entry.is_symlink():
                subdirs.append(entry.name)
            continue
        if entry.name.startswith(".") or (directory == source and entry.name in CLINICAL_FILES):
            continue
        try:
            if entry.is_file(follow_symlinks=False):  # a regular file, not a link to one
                found.append(directory / entry.name)
        except OSError:
            pass
    for name in subdirs:
        _candidates(directory / name, source, found)


@dataclass(frozen=True)
class Refusal:
    """A file read_instance refused, and the study it claims to belong to, if it says."""

    path: str
    reason: str
    message: str
    study_uid: str | None
    series_uid: str | None = None


@dataclass(frozen=True)
class Accepted:
    """A file read_instance accepted, and its copy in the repository's staging area (None
    if its blob is already in), made while it was being read: not yet a blob."""

    header: InstanceHeader
    staged: str | None


def _read(path: Path, policy: DeidPolicy, repository: Repository, area: Path
          ) -> Accepted | Refusal:
    try:
        header = read_instance(path, policy)
    except InvalidInstance as exc:
        return Refusal(str(path), exc.reason_code, exc.message, exc.study_uid, exc.series_uid)
    return Accepted(header, repository.stage(header.path, header.sha256, area))


# Set in each header-reading process by _start_worker.
_worker_args: tuple[DeidPolicy, Repository, Path] | None = None


def _start_worker(policy: DeidPolicy, repository: Repository, area: Path) -> None:
    global _worker_args
    quiet_pydicom()
    _worker_args = (policy, repository, area)


def _read_in_worker(path: Path) -> Accepted | Refusal:
    assert _worker_args is not None
    return _read(path, *_worker_args)


def read_headers(paths: list[Path], policy: DeidPolicy, repository: Repository, area: Path,
                 workers: int, progress: Callable[[int], None]
                 ) -> Iterator[Accepted | Refusal]:
    """Every file read, across processes, in order: accepted ones with their copy staged
    in the repository's staging `area`, refused ones as Refusals."""
    if workers <= 1 or len(paths) < 64:
        for n, path in enumerate(paths, 1):
            yield _read(path, policy, repository, area)
            progress(n)
        return
    # forkserver: the service is multi-threaded, and forking such a process is unsafe. The
    # server imports this module once, so each worker starts ready rather than importing
    # the service anew (about a second of CPU per worker, per run).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_start_worker,
                             initargs=(policy, repository, area)) as pool:
        chunk = max(1, min(64, len(paths) // (4 * workers)))
        for n, result in enumerate(pool.map(_read_in_worker, paths, chunksize=chunk), 1):
            yield result
            progress(n)


# -- clinical data ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ClinicalRow:
    subject_id: str
    age: int | None
    sex: str | None
    diagnosis: str | None
    extra: dict[str, Any]


def read_clinical(source: Path) -> tuple[dict[str, ClinicalRow], list[tuple[str, str, str]]]:
    """Clinical rows by subject from clinical.csv or clinical.json; refusals as quarantine."""
    for name in CLINICAL_FILES:
        path = source / name
        if path.is_symlink():
            # A link could bring in another project's table, or any file of the host.
            return {}, [(str(path), "malformed_clinical_data", "a link, not a file")]
        if not path.is_file():
            continue
        try:
            if name.endswith(".csv"):
                with open(path, newline="") as handle:
                    rows = list(csv.DictReader(handle))
            else:
                rows = json.loads(path.read_text())
                if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                    raise ValueError("must be a JSON list of objects")
        except OSError as exc:  # its words only: str(exc) names the file where it lies
            return {}, [(str(path), "malformed_clinical_data", exc.strerror or "unreadable")]
        except (ValueError, csv.Error) as exc:
            return {}, [(str(path), "malformed_clinical_data", str(exc))]
        columns = {str(c).strip().lower() for r in rows for c in r}
        identifying = sorted(columns & IDENTIFYING_COLUMNS)
        if identifying:
            return {}, [(str(path), "identifying_data",
                         f"clinical data has identifying columns: {', '.join(identifying)}")]
        if "subject_id" not in columns:
            return {}, [(str(path), "malformed_clinical_data", "no subject_id column")]
        table = {}
        for row in rows:
            clean = {str(k).strip().lower(): v for k, v in row.items()}
            subject = str(clean.get("subject_id", "")).strip()
            if not subject:
                continue
            table[subject] = ClinicalRow(
                subject, _int_or_none(clean.get("age")), _sex(clean.get("sex")),
                str(clean["diagnosis"]) if clean.get("diagnosis") not in (None, "") else None,
                {k: v for k, v in clean.items() if k not in KNOWN_CLINICAL})
        return table, []
    return {}, []


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _sex(value: Any) -> str | None:
    text = str(value or "").strip().upper()[:1]
    return text if text in ("M", "F", "O") else None


# -- the run ------------------------------------------------------------------------------------

def _run_name(run_id: str) -> str:
    """The name a run's lock, journal and staging folder go by in the repository."""
    return f"ingest-{run_id}"


class Ingestor:
    """Runs ingestions for one project into one repository and database.

    Safe to kill at any point, with several processes ingesting into one repository: each
    run holds its lock from `start` to its end, notes the blobs it names in a journal before
    naming them, and commits its counts with each batch of studies; `recover` (at the start
    of the service and of every run) ends the runs whose process died and removes what they
    left: staged copies, and blobs that never got their row."""

    def __init__(self, db: Database, repository: Repository, policy: DeidPolicy,
                 workers: int = 0, trace: Trace | None = None) -> None:
        self.db = db
        self.repository = repository
        self.policy = policy
        self.workers = workers or os.cpu_count() or 1
        self.trace = trace
        self._held: dict[str, int] = {}  # run id -> its lock, from start to run's end
        # run id -> (its folder, the folder its paths are stored relative to): where they
        # lie on this host is known to the process that runs them, never stored
        self._folders: dict[str, tuple[Path, Path]] = {}
        quiet_pydicom()

    def start(self, project_id: str, source: Path, started_by: str,
              drop_folder: Path | None = None) -> str:
        """Record a new run and return its id (the work is done by `run`, in this process).
        The run's folder and its quarantined files are stored relative to `drop_folder`
        (the source itself when none is given), never by where they lie on the host."""
        run_id = str(uuid.uuid4())
        base = drop_folder or source
        lock = self.repository.hold(_run_name(run_id))  # before the row: never seen unheld
        try:
            with self.db.session() as session:
                session.add(IngestRun(id=run_id, project_id=project_id,
                                      source=dropfolders.shown(source, base),
                                      started_by=started_by))
        except BaseException:
            self.repository.release(_run_name(run_id), lock)
            raise
        self._held[run_id] = lock
        self._folders[run_id] = (source, base)
        return run_id

    def run(self, run_id: str, progress: Callable[[IngestReport], None] | None = None
            ) -> IngestReport:
        """Ingest the run's folder; the run ends 'finished' or 'failed', never half-done."""
        if run_id not in self._folders:
            raise ValueError(f"ingestion run {run_id!r} was not started here")
        source, base = self._folders.pop(run_id)
        lock = self._held.pop(run_id, None)
        if lock is None:
            lock = self.repository.hold(_run_name(run_id))
        try:
            self.recover()
            with self.db.session() as session:
                run = session.get(IngestRun, run_id)
                assert run is not None
                project_id, actor = run.project_id, run.started_by
            report = IngestReport()
            try:
                self._ingest(run_id, project_id, actor, source, base, report,
                             progress or (lambda _r: None))
                state = "finished"
            except Exception:
                log.exception("ingestion failed",
                              extra={"event": "ingest_failed", "run": run_id})
                state = "failed"
            with self.db.session() as session:
                run = session.get(IngestRun, run_id)
                assert run is not None
                run.state, run.finished_at, run.counts = state, utcnow(), report.counts()
            return report
        finally:
            self.repository.release(_run_name(run_id), lock)

    def recover(self) -> int:
        """End the runs whose process died ('interrupted', with the counts they committed)
        and remove what they left in the repository; returns how many blobs went. Safe
        beside live runs of any process: those hold their locks and are left alone."""
        dropped = 0
        with self.repository.locked(exclusive=True):  # no blob between rename and row
            for name in self.repository.abandoned():
                journaled = sorted(self.repository.journaled(name))
                kept: set[str] = set()
                with self.db.session() as session:
                    for start in range(0, len(journaled), 1000):
                        kept.update(session.scalars(sa.select(Instance.sha256).where(
                            Instance.sha256.in_(journaled[start:start + 1000]))))
                orphans = [sha for sha in journaled if sha not in kept]
                self.repository.discard(orphans)
                dropped += len(orphans)
                self.repository.drop_abandoned(name)
            self.repository.drop_loose_staged()
            with self.db.session() as session:
                for run in session.scalars(sa.select(IngestRun).where(
                        IngestRun.state == "running")):
                    if not self.repository.is_held(_run_name(run.id)):
                        run.state, run.finished_at = "interrupted", utcnow()
        if dropped:
            log.warning("removed blobs an interrupted ingestion left without rows",
                        extra={"event": "ingest_recovered", "blobs": dropped})
        return dropped

    def _ingest(self, run_id: str, project_id: str, actor: str, source: Path, base: Path,
                report: IngestReport, progress: Callable[[IngestReport], None]) -> None:
        paths = dicom_candidates(source)
        report.files = len(paths)
        headers: list[InstanceHeader] = []
        refused_by_study: dict[str, list[Refusal]] = {}
        # Copies of the files made while they are read; the area goes at the end, with
        # the copies of files that did not go in (refused, quarantined, already there).
        area = self.repository.staging_area(f"ingest-{run_id}")
        staged: dict[str, str] = {}  # sha256 -> its copy in the area
        saved = 0

        def tick(n: int) -> None:
            report.read = n
            if n % 50 == 0 or n == len(paths):
                progress(report)

        def save_quarantine() -> None:
            # One transaction per step, not per refused file.
            nonlocal saved
            new = report.quarantine[saved:]
            if new:
                with self.db.session() as session:
                    session.add_all(QuarantineEntry(
                        ingest_id=run_id, **{**e, "path": dropfolders.shown(e["path"], base)})
                        for e in new)
                saved += len(new)

        unnamed: list[Refusal] = []  # refused files that cannot name their study
        try:
            for result in read_headers(paths, self.policy, self.repository, area,
                                       self.workers, tick):
                if isinstance(result, Accepted):
                    headers.append(result.header)
                    if result.staged is not None:
                        staged[result.header.sha256] = result.staged
                elif result.study_uid:
                    refused_by_study.setdefault(result.study_uid, []).append(result)
                else:
                    unnamed.append(result)
            held, unclaimed = _claim_unnamed(unnamed, headers, refused_by_study)
            for result in unclaimed:
                self._quarantine(report, result.path, None, result.reason, result.message)
            clinical, refusals = read_clinical(source)
            for path, reason, message in refusals:
                self._quarantine(report, path, None, reason, message)
            studies = group_instances(headers)
            grouped = {s.study_instance_uid for s in studies}
            for study_uid, refused in refused_by_study.items():
                if study_uid not in grouped:
                    report.studies_quarantined += 1
                    for r in refused:
                        self._quarantine(report, r.path, study_uid, r.reason, r.message)
            save_quarantine()
            present = self._studies_present([s.study_instance_uid for s in studies])
            known = self._subjects_known(project_id, {s.patient_id for s in studies})
            batch: list[StudyGroup] = []
            for n, study in enumerate(studies, 1):
                if self._admit(study, refused_by_study.get(study.study_instance_uid, []),
                               report, present, held, known, clinical):
                    batch.append(study)
                if batch and (n == len(studies) or sum(
                        s.instance_count for s in batch) >= BATCH_FILES):
                    self._ingest_batch(run_id, project_id, actor, batch, clinical, report,
                                       staged)
                    batch = []
                save_quarantine()
                progress(report)
        finally:
            save_quarantine()
            self.repository.drop_staging_area(area)

    def _studies_present(self, study_uids: list[str]) -> set[str]:
        """Which of these studies are already in (any project): those a run skips."""
        present: set[str] = set()
        with self.db.session() as session:
            for start in range(0, len(study_uids), 1000):
                present.update(session.scalars(sa.select(Study.study_uid).where(
                    Study.study_uid.in_(study_uids[start:start + 1000]))))
        return present

    def _subjects_known(self, project_id: str, pseudonyms: set[str]) -> dict[str, _Known]:
        """What the project already knows of these subjects: sex, and each study's date and
        age, for `subject_conflicts`."""
        known: dict[str, _Known] = {}
        names = sorted(pseudonyms)
        with self.db.session() as session:
            for start in range(0, len(names), 1000):
                chunk = names[start:start + 1000]
                for pseudonym, sex in session.execute(sa.select(
                        Subject.pseudonym, Subject.sex).where(
                        Subject.project_id == project_id, Subject.pseudonym.in_(chunk))):
                    known[pseudonym] = _Known(sex, [])
                for pseudonym, when, age in session.execute(sa.select(
                        Subject.pseudonym, Study.study_date, Study.patient_age).join(
                        Study, Study.subject_id == Subject.id).where(
                        Subject.project_id == project_id, Subject.pseudonym.in_(chunk),
                        Study.patient_age.is_not(None))):
                    known[pseudonym].studies.append((when, age))
        return known

    def _admit(self, study: StudyGroup, refused: list[Refusal], report: IngestReport,
               present: set[str], held: set[str], known: dict[str, _Known],
               clinical: dict[str, ClinicalRow]) -> bool:
        """Whether the study goes in: not if it is already in (skipped), nor if any of its
        files was refused, a refused file that cannot name its study shares its series or
        folder (`held`), or it has a conflict, with itself, another study or what is known
        of its subject (then all its files are quarantined)."""
        uid = study.study_instance_uid
        if uid in present:
            report.studies_skipped += 1
            return False
        first = str(study.instances[0].path)
        problems = [(r.path, r.reason, r.message) for r in refused]
        problems += [(first, p.code, p.message) for p in study.problems]
        subject = known.get(study.patient_id, _Known(None, []))
        row = clinical.get(study.patient_id)
        sex = subject.sex or (row.sex if row else None)
        if conflicts := subject_conflicts(study, sex, subject.studies):
            problems.append((first, "subject_conflict",
                             f"{', '.join(conflicts)} differs from what is known of subject "
                             f"{study.patient_id}: a different person under one pseudonym?"))
        if not problems and uid in held:
            problems.append((first, "study_incomplete",
                             "a refused file that names no study shares its series or folder"))
        if problems:
            # One bad file keeps the whole study out; the good ones are named with the cause.
            report.studies_quarantined += 1
            for path, reason, message in problems:
                self._quarantine(report, path, uid, reason, message)
            bad = {p for p, _, _ in problems}
            for header in study.instances:
                if str(header.path) not in bad:
                    self._quarantine(report, str(header.path), uid, "study_incomplete",
                                     "another file of this study was refused")
            return False
        study_sex, study_age = study_demographics(study)
        entry = known.setdefault(study.patient_id, _Known(None, []))
        entry.sex = entry.sex or study_sex or sex
        if study_age is not None:
            entry.studies.append((study.study_date, study_age))
        return True

    def _ingest_batch(self, run_id: str, project_id: str, actor: str,
                      batch: list[StudyGroup], clinical: dict[str, ClinicalRow],
                      report: IngestReport, staged: dict[str, str]) -> None:
        """Store and record admitted studies, each whole or not at all, several at a time:
        one flush of the repository's file system and one transaction for all of them.
        Should that fail, the studies go one by one, so that a run that stops, stops at the
        same study with the same studies in as if they had always gone one by one."""
        if len(batch) > 1:
            try:
                self._store_and_record(run_id, project_id, actor, batch, clinical, report,
                                       staged)
            except Exception:
                log.warning("a batch of studies failed; ingesting them one by one",
                            exc_info=True, extra={"event": "ingest_batch_failed",
                                                  "run": run_id})
            else:
                for study in batch:
                    self._count_ingested(report, study, clinical)
                return
        for study in batch:
            self._store_and_record(run_id, project_id, actor, [study], clinical, report,
                                   staged)
            self._count_ingested(report, study, clinical)

    def _store_and_record(self, run_id: str, project_id: str, actor: str,
                          studies: list[StudyGroup], clinical: dict[str, ClinicalRow],
                          report: IngestReport, staged: dict[str, str]) -> None:
        """Blobs in, then in one transaction their rows, the run's counts as they stand once
        these studies are in, and the trace of their entry; on any failure none stays."""
        # What the run will have done once this commits, so that its row never claims more,
        # nor less, than what is in, wherever the process stops.
        after = dataclasses.replace(report, quarantine=[],
                                    subjects_seen=set(report.subjects_seen))
        for study in studies:
            self._count_ingested(after, study, clinical)
        written: list[str] = []
        with self.repository.locked():
            try:
                written = self.repository.store_many(
                    [(h.path, h.sha256) for study in studies for h in study.instances], staged,
                    journal=self.repository.journal_path(_run_name(run_id)))
                with self.db.session() as session:
                    self._record_studies(session, run_id, project_id, studies, clinical)
                    session.execute(sa.update(IngestRun).where(IngestRun.id == run_id).values(
                        counts=after.counts()))
                    self._trace_entry(session, actor, project_id, run_id, studies, after)
            except BaseException:
                self.repository.discard(written)  # no blob without its row
                raise

    def _trace_entry(self, session: Session, actor: str, project_id: str, run_id: str,
                     studies: list[StudyGroup], after: IngestReport) -> None:
        """Trace the studies' entry in its transaction, as every dataset action is traced:
        who, the project, the run, the content hash of each study and the run's counts."""
        if self.trace is None:
            return
        self.trace(session, {"actor": actor, "action": "INGEST_STUDIES", "datasets": [],
                             "details": {"project": project_id, "ingest_run": run_id,
                                         "study_hashes": sorted(study_hash(s) for s in studies),
                                         "counts": after.counts()}})

    @staticmethod
    def _count_ingested(report: IngestReport, study: StudyGroup,
                        clinical: dict[str, ClinicalRow]) -> None:
        report.studies_ingested += 1
        report.files_ingested += study.instance_count
        report.bytes_stored += study.size_bytes
        if study.patient_id in clinical and study.patient_id not in report.subjects_seen:
            report.subjects_with_clinical_data += 1
        report.subjects_seen.add(study.patient_id)

    def _record_studies(self, session: Session, run_id: str, project_id: str,
                        studies: list[StudyGroup], clinical: dict[str, ClinicalRow]) -> None:
        """The rows of studies, their series and instances, and their subjects (created or
        completed), as plain inserts: one round trip a table (COPY for the instances on
        PostgreSQL) rather than one an object."""
        subjects = {subject.pseudonym: subject for subject in session.scalars(
            sa.select(Subject).where(Subject.project_id == project_id, Subject.pseudonym.in_(
                sorted({s.patient_id for s in studies}))))}
        study_rows, series_rows, instance_rows = [], [], []
        for study in studies:
            first = study.instances[0]
            subject = subjects.get(study.patient_id)
            row = clinical.get(study.patient_id)
            if subject is None:
                subject = Subject(id=str(uuid.uuid4()), project_id=project_id,
                                  pseudonym=study.patient_id, clinical={})
                session.add(subject)
                subjects[study.patient_id] = subject
            # The clinical table wins over the headers; the headers fill what it leaves out.
            subject.sex = (row.sex if row else None) or subject.sex or _sex(first.patient_sex)
            age = row.age if row else None
            subject.age = age if age is not None else (subject.age or first.patient_age_years)
            if row is not None:
                subject.diagnosis = row.diagnosis or subject.diagnosis
                subject.clinical = {**(subject.clinical or {}), **row.extra}
            study_id = str(uuid.uuid4())
            patient_sex, patient_age = study_demographics(study)
            study_rows.append({
                "id": study_id, "study_uid": study.study_instance_uid,
                "subject_id": subject.id, "project_id": project_id,
                "study_date": study.study_date, "description": study.study_description[:200],
                "modalities": ",".join(study.modalities),
                "body_parts": ",".join(sorted({s.body_part for s in study.series
                                               if s.body_part})),
                "series_count": len(study.series), "instance_count": study.instance_count,
                "size_bytes": study.size_bytes, "content_hash": study_hash(study),
                "patient_sex": patient_sex, "patient_age": patient_age,
                "ingest_id": run_id, "ingested_at": utcnow()})
            for group in study.series:
                head = group.instances[0]
                series_id = str(uuid.uuid4())
                series_rows.append({
                    "id": series_id, "series_uid": group.series_instance_uid,
                    "study_id": study_id, "modality": group.modality,
                    "body_part": group.body_part, "manufacturer": head.manufacturer[:64],
                    "model": head.manufacturer_model[:64],
                    "description": group.series_description[:200],
                    "number": group.series_number, "instance_count": group.instance_count,
                    "size_bytes": group.size_bytes, "rows": head.rows, "columns": head.columns,
                    "slice_thickness": head.slice_thickness,
                    "slice_spacing": group.geometry.slice_spacing,
                    "pixel_spacing": "\\".join(f"{v:g}" for v in head.pixel_spacing)
                    if head.pixel_spacing else None})
                instance_rows += [{"sop_uid": h.sop_instance_uid, "series_id": series_id,
                                   "sha256": h.sha256, "size_bytes": h.size_bytes,
                                   "number": h.instance_number} for h in group.instances]
        session.flush()  # the subjects, before the studies that name them
        session.execute(sa.insert(Study.__table__), study_rows)
        session.execute(sa.insert(Series.__table__), series_rows)
        bulk_insert(session, Instance.__table__, instance_rows)

    @staticmethod
    def _quarantine(report: IngestReport, path: str, study_uid: str | None, reason: str,
                    message: str) -> None:
        report.quarantine.append({"path": path, "study_uid": study_uid, "reason": reason,
                                  "message": message})
        report.files_quarantined += 1


@dataclass
class _Known:
    """What is known of one subject: sex, and (study date, age) of each of its studies."""

    sex: str | None
    studies: list[tuple[Any, int | None]]


def _claim_unnamed(unnamed: list[Refusal], headers: list[InstanceHeader],
                   refused_by_study: dict[str, list[Refusal]]
                   ) -> tuple[set[str], list[Refusal]]:
    """The whole-study rule for refused files that name no study: each is put with the study
    of the series it names, else of the folder it shares with other files (DICOM ones: a
    stray non-DICOM file claims nothing). Adds each to `refused_by_study` under the first such
    study; returns the other studies they also keep out, and the files no study claims."""
    study_of_series: dict[str, str] = {}
    studies_in_folder: dict[Path, set[str]] = defaultdict(set)
    for header in headers:
        study_of_series.setdefault(header.series_instance_uid, header.study_instance_uid)
        studies_in_folder[header.path.parent].add(header.study_instance_uid)
    for study_uid, refused in refused_by_study.items():
        for r in refused:
            if r.series_uid:
                study_of_series.setdefault(r.series_uid, study_uid)
            studies_in_folder[Path(r.path).parent].add(study_uid)
    held: set[str] = set()
    unclaimed: list[Refusal] = []
    for r in unnamed:
        if r.reason == "not_dicom":
            unclaimed.append(r)
            continue
        if r.series_uid in study_of_series:
            claimed = [study_of_series[r.series_uid]]
        else:
            claimed = sorted(studies_in_folder.get(Path(r.path).parent, ()))
        if claimed:
            refused_by_study.setdefault(claimed[0], []).append(r)
            held.update(claimed[1:])
        else:
            unclaimed.append(r)
    return held, unclaimed
