"""The dataset authorisation policy, as a table of who asks what of which dataset."""

from __future__ import annotations

import dataclasses

import pytest

from dataset_service.policy import (
    Action,
    Actor,
    DatasetFacts,
    Decision,
    decide,
    decide_use,
    may_edit_contents,
    visible_to,
)

P = "project-1"

# People. Platform roles come from the token; project roles from ProjectMember rows.
STEWARD = Actor("sam", frozenset({"steward"}), {P: "steward"})
MEMBER = Actor("rita", frozenset({"researcher"}), {P: "researcher"})
AUTHOR = Actor("alice", frozenset({"researcher"}), {P: "researcher"})
FORMER_AUTHOR = Actor("alice", frozenset({"researcher"}), {})  # has left the project
OUTSIDER = Actor("otto", frozenset({"researcher"}))
LISTED = Actor("dora", frozenset({"researcher"}))  # on the access lists below
OTHER_STEWARD = Actor("sue", frozenset({"steward"}), {"project-2": "steward"})
NO_ROLE = Actor("nora")  # signed in, but not a registered researcher
ADMIN = Actor("ada", frozenset({"admin"}))
AUDITOR = Actor("aud", frozenset({"auditor"}))
REVOKED_MEMBER = Actor("rex", frozenset({"researcher"}), {P: "researcher"}, revoked=True)
REVOKED_STEWARD = Actor("ron", frozenset({"steward"}), {P: "steward"}, revoked=True)
SERVICE = Actor("portal", frozenset({"service", "admin"}))

# Datasets of project-1.
DRAFT = DatasetFacts("d-draft", P, "draft", created_by="alice")
RELEASED = DatasetFacts("d-rel", P, "released", "alice", access_list=frozenset({"dora"}))
RELEASED_PUBLIC = DatasetFacts("d-rel-pub", P, "released", "alice", public_use=True)
PUBLISHED = DatasetFacts("d-pub", P, "published", "alice", access_list=frozenset({"dora"}))
PUBLISHED_PUBLIC = DatasetFacts("d-pub-pub", P, "published", "alice", public_use=True)
INVALIDATED = DatasetFacts("d-inv", P, "invalidated", "alice", public_use=True,
                           access_list=frozenset({"dora"}),
                           invalidation_reason="consent withdrawn")

A = Action
ROWS = [
    # USE: membership, access list, or public use of a published dataset.
    ("member-researcher-uses-released", MEMBER, RELEASED, A.USE, True, "ok"),
    ("project-steward-uses-released", STEWARD, RELEASED, A.USE, True, "ok"),
    ("non-member-refused-released", OUTSIDER, RELEASED, A.USE, False, "not_a_member"),
    ("access-list-user-uses-released", LISTED, RELEASED, A.USE, True, "ok"),
    ("access-list-user-uses-published", LISTED, PUBLISHED, A.USE, True, "ok"),
    ("non-member-uses-published-public-use", OUTSIDER, PUBLISHED_PUBLIC, A.USE, True, "ok"),
    ("non-member-refused-published-not-public", OUTSIDER, PUBLISHED, A.USE, False,
     "not_a_member"),
    ("public-use-on-released-does-not-open", OUTSIDER, RELEASED_PUBLIC, A.USE, False,
     "not_a_member"),
    ("role-less-user-refused-public-use", NO_ROLE, PUBLISHED_PUBLIC, A.USE, False,
     "not_a_member"),
    ("steward-of-other-project-refused", OTHER_STEWARD, RELEASED, A.USE, False, "not_a_member"),
    ("admin-cannot-use-data", ADMIN, RELEASED, A.USE, False, "not_a_member"),
    ("admin-cannot-use-public-data", ADMIN, PUBLISHED_PUBLIC, A.USE, False, "not_a_member"),
    ("auditor-cannot-use-data", AUDITOR, PUBLISHED_PUBLIC, A.USE, False, "not_a_member"),
    ("invalidated-refused-its-steward", STEWARD, INVALIDATED, A.USE, False,
     "dataset_invalidated"),
    ("invalidated-refused-member", MEMBER, INVALIDATED, A.USE, False, "dataset_invalidated"),
    ("invalidated-refused-access-list", LISTED, INVALIDATED, A.USE, False,
     "dataset_invalidated"),
    ("invalidated-refused-public-use", OUTSIDER, INVALIDATED, A.USE, False,
     "dataset_invalidated"),
    ("draft-not-usable-by-author", AUTHOR, DRAFT, A.USE, False, "draft_not_usable"),
    ("draft-not-usable-by-steward", STEWARD, DRAFT, A.USE, False, "draft_not_usable"),
    ("revoked-member-cannot-use", REVOKED_MEMBER, RELEASED, A.USE, False, "user_revoked"),
    ("service-must-ask-for-its-user", SERVICE, PUBLISHED_PUBLIC, A.USE, False,
     "service_actor"),
    # VIEW_STUDIES: the explorer shows clinical variables, so it follows USE.
    ("member-explores-released", MEMBER, RELEASED, A.VIEW_STUDIES, True, "ok"),
    ("non-member-cannot-explore-published", OUTSIDER, PUBLISHED, A.VIEW_STUDIES, False,
     "not_a_member"),
    ("admin-cannot-explore", ADMIN, RELEASED, A.VIEW_STUDIES, False, "not_a_member"),
    ("revoked-member-cannot-explore", REVOKED_MEMBER, RELEASED, A.VIEW_STUDIES, False,
     "user_revoked"),
    ("author-explores-draft", AUTHOR, DRAFT, A.VIEW_STUDIES, True, "ok"),
    ("admin-cannot-explore-draft", ADMIN, DRAFT, A.VIEW_STUDIES, False, "not_a_member"),
    ("nobody-explores-invalidated", STEWARD, INVALIDATED, A.VIEW_STUDIES, False,
     "dataset_invalidated"),
    # VIEW_METADATA: drafts to author, stewards, admins, auditors; the rest to registered users.
    ("author-sees-draft", AUTHOR, DRAFT, A.VIEW_METADATA, True, "ok"),
    ("project-steward-sees-draft", STEWARD, DRAFT, A.VIEW_METADATA, True, "ok"),
    ("admin-sees-draft", ADMIN, DRAFT, A.VIEW_METADATA, True, "ok"),
    ("auditor-sees-draft", AUDITOR, DRAFT, A.VIEW_METADATA, True, "ok"),
    ("other-member-cannot-see-draft", MEMBER, DRAFT, A.VIEW_METADATA, False, "not_visible"),
    ("outsider-cannot-see-draft", OUTSIDER, DRAFT, A.VIEW_METADATA, False, "not_visible"),
    ("former-author-cannot-see-draft", FORMER_AUTHOR, DRAFT, A.VIEW_METADATA, False,
     "not_visible"),
    ("other-projects-steward-cannot-see-draft", OTHER_STEWARD, DRAFT, A.VIEW_METADATA, False,
     "not_visible"),
    ("registered-user-sees-released", OUTSIDER, RELEASED, A.VIEW_METADATA, True, "ok"),
    ("role-less-user-cannot-see-released", NO_ROLE, RELEASED, A.VIEW_METADATA, False,
     "not_visible"),
    ("role-less-user-sees-published", NO_ROLE, PUBLISHED, A.VIEW_METADATA, True, "ok"),
    ("invalidated-metadata-still-resolves", OUTSIDER, INVALIDATED, A.VIEW_METADATA, True, "ok"),
    ("revoked-user-sees-published-metadata", REVOKED_MEMBER, PUBLISHED, A.VIEW_METADATA, True,
     "ok"),
    ("revoked-user-cannot-see-released", REVOKED_MEMBER, RELEASED, A.VIEW_METADATA, False,
     "user_revoked"),
    # REQUEST_ACCESS: a registered user who cannot use it yet, on released or published data.
    ("outsider-requests-released", OUTSIDER, RELEASED, A.REQUEST_ACCESS, True, "ok"),
    ("outsider-requests-published", OUTSIDER, PUBLISHED, A.REQUEST_ACCESS, True, "ok"),
    ("member-already-allowed", MEMBER, RELEASED, A.REQUEST_ACCESS, False, "already_allowed"),
    ("public-use-already-allowed", OUTSIDER, PUBLISHED_PUBLIC, A.REQUEST_ACCESS, False,
     "already_allowed"),
    ("revoked-user-cannot-request", REVOKED_MEMBER, PUBLISHED, A.REQUEST_ACCESS, False,
     "user_revoked"),
    ("auditor-cannot-request", AUDITOR, PUBLISHED, A.REQUEST_ACCESS, False, "not_a_researcher"),
    ("cannot-request-draft", AUTHOR, DRAFT, A.REQUEST_ACCESS, False, "wrong_state"),
    ("cannot-request-invalidated", OUTSIDER, INVALIDATED, A.REQUEST_ACCESS, False,
     "dataset_invalidated"),
    # Stewarding: the project's stewards and admins, from the right state.
    ("steward-releases-draft", STEWARD, DRAFT, A.RELEASE, True, "ok"),
    ("admin-releases-draft", ADMIN, DRAFT, A.RELEASE, True, "ok"),
    ("author-cannot-release-own-draft", AUTHOR, DRAFT, A.RELEASE, False, "not_a_steward"),
    ("release-only-from-draft", STEWARD, RELEASED, A.RELEASE, False, "wrong_state"),
    ("steward-publishes-released", STEWARD, RELEASED, A.PUBLISH, True, "ok"),
    ("publish-not-from-draft", STEWARD, DRAFT, A.PUBLISH, False, "wrong_state"),
    ("publish-not-twice", STEWARD, PUBLISHED, A.PUBLISH, False, "wrong_state"),
    ("other-projects-steward-cannot-publish", OTHER_STEWARD, RELEASED, A.PUBLISH, False,
     "not_a_steward"),
    ("steward-invalidates-released", STEWARD, RELEASED, A.INVALIDATE, True, "ok"),
    ("admin-invalidates-published", ADMIN, PUBLISHED, A.INVALIDATE, True, "ok"),
    ("draft-is-deleted-not-invalidated", STEWARD, DRAFT, A.INVALIDATE, False, "wrong_state"),
    ("invalidate-not-twice", STEWARD, INVALIDATED, A.INVALIDATE, False, "dataset_invalidated"),
    ("member-cannot-invalidate", MEMBER, RELEASED, A.INVALIDATE, False, "not_a_steward"),
    ("author-edits-draft", AUTHOR, DRAFT, A.EDIT, True, "ok"),
    ("author-cannot-edit-released", AUTHOR, RELEASED, A.EDIT, False, "not_a_steward"),
    ("steward-edits-published-metadata", STEWARD, PUBLISHED, A.EDIT, True, "ok"),
    ("invalidated-is-not-edited", STEWARD, INVALIDATED, A.EDIT, False, "dataset_invalidated"),
    ("steward-manages-access", STEWARD, PUBLISHED, A.MANAGE_ACCESS, True, "ok"),
    ("member-cannot-manage-access", MEMBER, RELEASED, A.MANAGE_ACCESS, False, "not_a_steward"),
    ("no-access-changes-once-invalidated", STEWARD, INVALIDATED, A.MANAGE_ACCESS, False,
     "dataset_invalidated"),
    ("revoked-steward-cannot-manage-access", REVOKED_STEWARD, RELEASED, A.MANAGE_ACCESS, False,
     "user_revoked"),
    ("new-version-of-invalidated", STEWARD, INVALIDATED, A.CREATE_VERSION, True, "ok"),
    ("no-new-version-of-draft", STEWARD, DRAFT, A.CREATE_VERSION, False, "wrong_state"),
    ("auditor-views-access-log", AUDITOR, RELEASED, A.VIEW_ACCESS_LOG, True, "ok"),
    ("auditor-views-invalidated-access-log", AUDITOR, INVALIDATED, A.VIEW_ACCESS_LOG, True,
     "ok"),
    ("auditor-cannot-manage-access", AUDITOR, RELEASED, A.MANAGE_ACCESS, False,
     "not_a_steward"),
    ("member-cannot-view-access-log", MEMBER, RELEASED, A.VIEW_ACCESS_LOG, False,
     "not_a_steward"),
]


@pytest.mark.parametrize("description,actor,dataset,action,allowed,code", ROWS,
                         ids=[row[0] for row in ROWS])
def test_policy_table(description: str, actor: Actor, dataset: DatasetFacts, action: Action,
                      allowed: bool, code: str) -> None:
    decision = decide(actor, dataset, action)
    assert (decision.allowed, decision.code) == (allowed, code), decision.reason
    assert bool(decision) is allowed
    assert decision.reason


def test_every_action_is_in_the_table() -> None:
    assert {row[3] for row in ROWS} == set(Action)


def test_invalidated_refusal_carries_the_reason() -> None:
    decision = decide(MEMBER, INVALIDATED, Action.USE)
    assert decision == Decision(False, "invalidated: consent withdrawn", "dataset_invalidated")


def test_a_revoked_user_may_do_nothing_but_read_public_metadata() -> None:
    for dataset in (DRAFT, RELEASED, PUBLISHED_PUBLIC, INVALIDATED):
        for action in Action:
            if (action, dataset) == (Action.VIEW_METADATA, PUBLISHED_PUBLIC):
                continue
            assert not decide(REVOKED_STEWARD, dataset, action), (action, dataset.state)


def test_admin_and_auditor_see_every_dataset_but_use_none() -> None:
    for actor in (ADMIN, AUDITOR):
        for dataset in (DRAFT, RELEASED, PUBLISHED_PUBLIC, INVALIDATED):
            assert visible_to(actor, dataset)
            assert not decide(actor, dataset, Action.USE)
            assert not decide(actor, dataset, Action.VIEW_STUDIES)


def test_contents_are_edited_only_in_draft() -> None:
    assert may_edit_contents(AUTHOR, DRAFT)
    assert may_edit_contents(STEWARD, DRAFT)
    assert may_edit_contents(STEWARD, RELEASED).code == "wrong_state"
    assert may_edit_contents(STEWARD, PUBLISHED).code == "wrong_state"
    assert may_edit_contents(STEWARD, INVALIDATED).code == "dataset_invalidated"
    assert may_edit_contents(MEMBER, RELEASED).code == "not_a_steward"


def test_one_question_for_a_grant_answers_per_dataset() -> None:
    answers = decide_use(OUTSIDER, [PUBLISHED_PUBLIC, RELEASED, INVALIDATED, DRAFT])
    assert {id_: d.code for id_, d in answers.items()} == {
        "d-pub-pub": "ok", "d-rel": "not_a_member", "d-inv": "dataset_invalidated",
        "d-draft": "not_visible",
    }
    assert not all(answers.values())
    assert all(decide_use(MEMBER, [RELEASED, PUBLISHED, PUBLISHED_PUBLIC]).values())
    assert decide_use(MEMBER, []) == {}


def test_an_unknown_state_fails_closed() -> None:
    odd = dataclasses.replace(RELEASED, state="archived")
    for actor in (STEWARD, ADMIN, MEMBER):
        for action in Action:
            assert decide(actor, odd, action).code == "wrong_state"
