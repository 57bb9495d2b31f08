"""Who may do what with a dataset: the one authorisation policy, pure (no database, no I/O).

A handler loads the facts (the caller's roles, project memberships and revocation; the
dataset's state, project, author and access list), asks `decide` one question and maps the
answer's stable `code` to its HTTP error: `not_visible` to 404 (the caller may not even
learn that the dataset exists), any other refusal to 403.

Services (role "service": the portal, a desktop, a job) act on behalf of a user. `decide`
must be given that end user, never the service itself: a service actor is refused
everything (`service_actor`), so a handler that forgets to pass the user fails closed.

Decisions taken where the product spec is silent, as a data steward would expect:

- Seeing: a draft is seen by its author, its project's stewards, admins and auditors
  (auditors see every dataset, drafts included). A released, published or invalidated
  dataset is seen by every registered user (platform role researcher or steward), its
  project's members, its access list, admins and auditors; published metadata is public,
  so anyone signed in sees it. Released is the platform's own catalogue, where researchers
  find what to request; publishing adds the public landing page (rendered elsewhere).
- Authorship counts only while the author is still a member of the dataset's project:
  removing someone from a project ends their rights over its drafts.
- Using (USE, and VIEW_STUDIES, which shows clinical variables): nobody uses a draft, whose
  contents are not fixed; a steward tries on released data. Roles never grant use: admins
  and auditors use data only as project members or access-list entries would (separation
  of duties). Public use needs a registered user, a published dataset and `public_use`.
  The explorer of a draft is open to its author and project stewards, who are building it.
- An invalidated dataset was at least released (drafts cannot be invalidated), so it stays
  visible to whoever saw it released; it cannot be used, explored, edited, released,
  published or have its access list changed, but its access log stays readable and a new,
  corrected version may be created from it.
- A revoked user sees only published metadata (what is public anyway) and may do nothing
  else, stewarding included: a revoked steward cannot grant access or release data.
- Stewarding belongs to the project's stewards and admins, never to the platform role
  "steward" alone; the draft's author may also edit it, but releasing it is a steward's
  review. INVALIDATE needs released or published data (a draft is deleted instead: nobody
  ever used it). CREATE_VERSION starts from released, published or invalidated data (a draft
  is simply edited). MANAGE_ACCESS works on drafts too, so a list is ready at release.
- REQUEST_ACCESS is for registered users (researcher or steward platform role) who cannot
  already use the dataset (`already_allowed` otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum


class Action(Enum):
    """What a caller wants to do with one dataset."""

    VIEW_METADATA = "view_metadata"  # the record and statistics, signed in
    VIEW_STUDIES = "view_studies"  # explorer: studies, series, clinical variables; no pixels
    USE = "use"  # mount in a desktop or job
    EDIT = "edit"  # metadata in any live state; contents only while draft
    RELEASE = "release"
    PUBLISH = "publish"
    INVALIDATE = "invalidate"
    MANAGE_ACCESS = "manage_access"  # access list entries and access requests
    REQUEST_ACCESS = "request_access"
    CREATE_VERSION = "create_version"
    VIEW_ACCESS_LOG = "view_access_log"


class Code(StrEnum):
    """Stable codes of decisions; API error bodies carry them unchanged."""

    OK = "ok"
    SERVICE_ACTOR = "service_actor"
    NOT_VISIBLE = "not_visible"
    USER_REVOKED = "user_revoked"
    DATASET_INVALIDATED = "dataset_invalidated"
    DRAFT_NOT_USABLE = "draft_not_usable"
    NOT_A_MEMBER = "not_a_member"
    NOT_A_STEWARD = "not_a_steward"
    NOT_A_RESEARCHER = "not_a_researcher"
    ALREADY_ALLOWED = "already_allowed"
    WRONG_STATE = "wrong_state"


DRAFT, RELEASED, PUBLISHED, INVALIDATED = "draft", "released", "published", "invalidated"
STATES = frozenset({DRAFT, RELEASED, PUBLISHED, INVALIDATED})
REGISTERED_ROLES = frozenset({"researcher", "steward"})

# The states each stewarding action may start from.
_STEWARDING: dict[Action, frozenset[str]] = {
    Action.EDIT: frozenset({DRAFT, RELEASED, PUBLISHED}),
    Action.RELEASE: frozenset({DRAFT}),
    Action.PUBLISH: frozenset({RELEASED}),
    Action.INVALIDATE: frozenset({RELEASED, PUBLISHED}),
    Action.MANAGE_ACCESS: frozenset({DRAFT, RELEASED, PUBLISHED}),
    Action.CREATE_VERSION: frozenset({RELEASED, PUBLISHED, INVALIDATED}),
    Action.VIEW_ACCESS_LOG: STATES,
}


@dataclass(frozen=True)
class Actor:
    """The end user a decision is about (never a service acting for them)."""

    user_id: str
    roles: frozenset[str] = frozenset()
    project_roles: Mapping[str, str] = field(default_factory=dict)  # project id -> role
    revoked: bool = False

    @property
    def registered(self) -> bool:
        return bool(self.roles & REGISTERED_ROLES)

    def member_of(self, project_id: str) -> bool:
        return self.project_roles.get(project_id) in ("steward", "researcher")

    def steward_of(self, project_id: str) -> bool:
        return self.project_roles.get(project_id) == "steward"


@dataclass(frozen=True)
class DatasetFacts:
    """What the policy needs to know of a dataset."""

    id: str
    project_id: str
    state: str
    created_by: str
    public_use: bool = False
    access_list: frozenset[str] = frozenset()
    invalidation_reason: str | None = None


@dataclass(frozen=True)
class Decision:
    """An answer: allowed or not, why in words, and a stable code."""

    allowed: bool
    reason: str
    code: str

    def __bool__(self) -> bool:
        return self.allowed


_OK = Decision(True, "allowed", Code.OK.value)


def _no(code: Code, reason: str) -> Decision:
    return Decision(False, reason, code.value)


def _invalidated(dataset: DatasetFacts) -> Decision:
    return _no(Code.DATASET_INVALIDATED,
               f"invalidated: {dataset.invalidation_reason or 'no reason given'}")


def _is_author(actor: Actor, dataset: DatasetFacts) -> bool:
    return actor.user_id == dataset.created_by and actor.member_of(dataset.project_id)


def _may_steward(actor: Actor, dataset: DatasetFacts) -> bool:
    return "admin" in actor.roles or actor.steward_of(dataset.project_id)


def _may_see(actor: Actor, dataset: DatasetFacts) -> bool:
    """Visibility regardless of revocation, which `decide` applies afterwards."""
    if actor.roles & {"admin", "auditor"} or actor.steward_of(dataset.project_id):
        return True
    if dataset.state == DRAFT:
        return _is_author(actor, dataset)
    return (dataset.state == PUBLISHED or actor.registered or actor.member_of(dataset.project_id)
            or actor.user_id in dataset.access_list)


def _may_use(actor: Actor, dataset: DatasetFacts) -> Decision:
    """USE of a released or published dataset: membership, access list or public use."""
    if actor.member_of(dataset.project_id) or actor.user_id in dataset.access_list:
        return _OK
    if dataset.public_use and dataset.state == PUBLISHED and actor.registered:
        return _OK
    return _no(Code.NOT_A_MEMBER, "not a member of the dataset's project nor on its access list")


def decide(actor: Actor, dataset: DatasetFacts, action: Action) -> Decision:
    """May `actor` (the end user, never a service) do `action` on `dataset`?"""
    if "service" in actor.roles:
        return _no(Code.SERVICE_ACTOR, "a service must be asked about the user it acts for")
    if dataset.state not in STATES:
        return _no(Code.WRONG_STATE, f"unknown dataset state {dataset.state!r}")
    if not _may_see(actor, dataset):
        return _no(Code.NOT_VISIBLE, "no such dataset")
    if actor.revoked and not (action is Action.VIEW_METADATA and dataset.state == PUBLISHED):
        return _no(Code.USER_REVOKED, "the user's access has been revoked")

    if action is Action.VIEW_METADATA:
        return _OK
    if action in (Action.USE, Action.VIEW_STUDIES):
        if dataset.state == INVALIDATED:
            return _invalidated(dataset)
        if dataset.state != DRAFT:
            return _may_use(actor, dataset)
        if action is Action.USE:
            return _no(Code.DRAFT_NOT_USABLE, "a draft's contents are not fixed; release it")
        if _is_author(actor, dataset) or actor.steward_of(dataset.project_id):
            return _OK
        return _no(Code.NOT_A_MEMBER, "a draft's studies are shown to its author and stewards")
    if action is Action.REQUEST_ACCESS:
        if not actor.registered:
            return _no(Code.NOT_A_RESEARCHER, "only registered researchers request access")
        if dataset.state == INVALIDATED:
            return _invalidated(dataset)
        if dataset.state == DRAFT:
            return _no(Code.WRONG_STATE, "access is requested to released or published data")
        if _may_use(actor, dataset):
            return _no(Code.ALREADY_ALLOWED, "the user may already use this dataset")
        return _OK

    # Stewarding: who first, then from which state.
    may = _may_steward(actor, dataset)
    if action is Action.EDIT and dataset.state == DRAFT:
        may = may or _is_author(actor, dataset)
    if action is Action.VIEW_ACCESS_LOG:
        may = may or "auditor" in actor.roles
    if not may:
        return _no(Code.NOT_A_STEWARD, "only the project's stewards and admins may do this")
    if dataset.state not in _STEWARDING[action]:
        if dataset.state == INVALIDATED:
            return _invalidated(dataset)
        return _no(Code.WRONG_STATE, f"cannot {action.value} a {dataset.state} dataset")
    return _OK


def may_edit_contents(actor: Actor, dataset: DatasetFacts) -> Decision:
    """May `actor` change which studies `dataset` holds? Only EDIT of a draft."""
    decision = decide(actor, dataset, Action.EDIT)
    if decision and dataset.state != DRAFT:
        return _no(Code.WRONG_STATE, "contents are fixed once released; create a new version")
    return decision


def decide_use(actor: Actor, datasets: Sequence[DatasetFacts]) -> dict[str, Decision]:
    """For a grant: may this user use these datasets? One decision per dataset id."""
    return {dataset.id: decide(actor, dataset, Action.USE) for dataset in datasets}


def visible_to(actor: Actor, dataset: DatasetFacts) -> bool:
    """May `actor` see the dataset's record (VIEW_METADATA)?"""
    return bool(decide(actor, dataset, Action.VIEW_METADATA))
