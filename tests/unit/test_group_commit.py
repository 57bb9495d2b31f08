"""The group commit of job submissions: a lone submission is recorded at once; those arriving
while a group is being recorded go together in the next one, in their order; each gets its
own outcome; a group that fails is recorded again one by one, so a submission that breaks it
fails alone, and the next group is still recorded."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from portal.jobs import GroupCommit, JobRequest, Outcome, Submission
from vre.errors import ApiError
from vre.tokens import Principal


def submission(name: str) -> Submission:
    return Submission(Principal("res-1", frozenset({"researcher"})),
                      JobRequest(command=("true",), name=name))


class Recorder:
    """Records groups; the first group is held until released, so others gather meanwhile."""

    def __init__(self, poison: str | None = None) -> None:
        self.groups: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.poison = poison  # a name that fails any group it is in

    def __call__(self, items: list[Submission]) -> list[Outcome]:
        number = len(self.groups)
        self.groups.append([i.ask.name for i in items])
        if number == 0:
            self.entered.set()
            assert self.release.wait(10)
        if self.poison is not None and any(self.poison in i.ask.name for i in items):
            raise RuntimeError(f"group {number} failed: it holds {self.poison or 'anything'}")
        return [ApiError("refused", code="refused") if i.ask.name.startswith("bad")
                else ({"name": i.ask.name}, True) for i in items]


def test_a_lone_submission_is_recorded_at_once() -> None:
    recorder = Recorder()
    recorder.release.set()
    assert GroupCommit(recorder).submit(submission("a")) == ({"name": "a"}, True)
    assert recorder.groups == [["a"]]


def test_submissions_arriving_meanwhile_go_together_each_with_its_own_outcome() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(commit.submit, submission("first"))
        assert recorder.entered.wait(10)
        names = ["b1", "bad2", "b3", "b4", "bad5", "b6"]
        later: dict[str, Any] = {}
        for name in names:  # queued one after another while the first group is recorded
            later[name] = pool.submit(commit.submit, submission(name))
            _wait_for(lambda: commit.waiting == len(later))
        recorder.release.set()
        assert first.result(10) == ({"name": "first"}, True)
        outcomes = {name: future.result(10) for name, future in later.items()}
    assert recorder.groups == [["first"], names]
    for name, outcome in outcomes.items():
        if name.startswith("bad"):
            assert isinstance(outcome, ApiError) and outcome.code == "refused"
        else:
            assert outcome == ({"name": name}, True)


def test_a_submission_that_breaks_its_group_fails_alone() -> None:
    """A group whose transaction fails is recorded again one submission at a time: the one
    that broke it fails by itself, the others are recorded."""
    recorder = Recorder(poison="poison")
    commit = GroupCommit(recorder)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(commit.submit, submission("first"))
        assert recorder.entered.wait(10)
        later = {n: pool.submit(commit.submit, submission(n)) for n in ("a", "poison", "b")}
        _wait_for(lambda: commit.waiting == 3)
        recorder.release.set()
        assert first.result(10) == ({"name": "first"}, True)
        assert later["a"].result(10) == ({"name": "a"}, True)
        assert later["b"].result(10) == ({"name": "b"}, True)
        with pytest.raises(RuntimeError, match="poison"):
            later["poison"].result(10)
    assert recorder.groups[1:] == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]
    assert commit.submit(submission("after")) == ({"name": "after"}, True)


def test_when_nothing_can_be_recorded_every_request_gets_the_failure() -> None:
    recorder = Recorder(poison="")  # every name: the database is down
    recorder.release.set()
    commit = GroupCommit(recorder)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(commit.submit, submission(f"s{i}")) for i in range(4)]
        for future in futures:
            with pytest.raises(RuntimeError):
                future.result(10)
    assert commit.waiting == 0


def test_a_group_takes_at_most_its_size_and_the_rest_follow() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder)
    count = GroupCommit.MOST + 5
    with ThreadPoolExecutor(count + 1) as pool:
        first = pool.submit(commit.submit, submission("first"))
        assert recorder.entered.wait(10)
        rest = [pool.submit(commit.submit, submission(f"s{i}")) for i in range(count)]
        _wait_for(lambda: commit.waiting == count)
        recorder.release.set()
        assert first.result(10)[1] is True
        assert all(f.result(10)[1] is True for f in rest)
    assert [len(g) for g in recorder.groups] == [1, GroupCommit.MOST, 5]


def _burst(commit: GroupCommit, recorder: Recorder, pool: ThreadPoolExecutor) -> None:
    """A first group held while two more wait, then recorded: those two make a group of
    more than one, as a burst does."""
    first = pool.submit(commit.submit, submission("first"))
    assert recorder.entered.wait(10)
    pair = [pool.submit(commit.submit, submission(n)) for n in ("a", "b")]
    _wait_for(lambda: commit.waiting == 2)
    recorder.release.set()
    assert [f.result(10)[1] for f in (first, *pair)] == [True, True, True]
    assert recorder.groups == [["first"], ["a", "b"]]


def test_during_a_burst_the_next_group_waits_for_those_arriving_meanwhile() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder)
    commit.LINGER_SECONDS = 2.0  # long enough that the next one surely comes meanwhile
    with ThreadPoolExecutor(8) as pool:
        _burst(commit, recorder, pool)
        leader = pool.submit(commit.submit, submission("c"))
        _wait_for(lambda: commit.waiting == 1)  # c leads, and lingers
        follower = pool.submit(commit.submit, submission("d"))
        assert leader.result(10) == ({"name": "c"}, True)
        assert follower.result(10) == ({"name": "d"}, True)
    assert recorder.groups[2:] == [["c", "d"]]


def test_a_full_group_is_recorded_at_once_however_long_it_could_wait() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder)
    commit.LINGER_SECONDS, commit.MOST = 60.0, 3
    with ThreadPoolExecutor(8) as pool:
        _burst(commit, recorder, pool)
        later = []
        for name in ("c", "d", "e"):
            later.append(pool.submit(commit.submit, submission(name)))
            _wait_for(lambda: commit.waiting == len(later) or later[0].done())
        assert [f.result(10)[1] for f in later] == [True, True, True]  # not after 60 s
    assert recorder.groups[2:] == [["c", "d", "e"]]


def test_a_submission_after_a_lone_one_waits_for_nobody() -> None:
    recorder = Recorder()
    recorder.release.set()
    commit = GroupCommit(recorder)
    commit.LINGER_SECONDS = 60.0
    with ThreadPoolExecutor(2) as pool:
        assert pool.submit(commit.submit, submission("a")).result(10)[1] is True
        assert pool.submit(commit.submit, submission("b")).result(10)[1] is True
    assert recorder.groups == [["a"], ["b"]]


def _wait_for(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the condition never held")
