"""GroupCommit: requests from several threads at once go as one statement, each answered."""

import threading

import pytest

from sftp_minio_assets.db.group_commit import GroupCommit


class Held:
    """A send that records its batches and holds the first until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.sending = threading.Event()
        self.release = threading.Event()

    def __call__(self, requests: list[str]) -> list[str]:
        self.batches.append(list(requests))
        if len(self.batches) == 1:
            self.sending.set()
            assert self.release.wait(10)
        if "bad" in requests:
            raise ConnectionError("the database went away")
        return [request.upper() for request in requests]


def ask_together(commit: GroupCommit, first: str, others: list[str], held: Held) -> dict:
    """`first` is sent alone and held; meanwhile `others` queue up; then all are answered."""
    answers: dict[str, object] = {}

    def ask(request: str) -> None:
        try:
            answers[request] = commit(request)
        except ConnectionError as error:
            answers[request] = error

    threads = [threading.Thread(target=ask, args=(first,))]
    threads[0].start()
    assert held.sending.wait(10)
    threads += [threading.Thread(target=ask, args=(request,)) for request in others]
    for thread in threads[1:]:
        thread.start()
    while len(commit._queue) < len(others):  # every other request is queued behind the first
        threading.Event().wait(0.01)
    held.release.set()
    for thread in threads:
        thread.join(10)
    return answers


def test_requests_made_while_a_statement_is_in_flight_go_together_and_each_gets_its_answer():
    held = Held()
    answers = ask_together(GroupCommit(held), "a", ["b", "c", "d"], held)
    assert answers == {"a": "A", "b": "B", "c": "C", "d": "D"}
    assert held.batches[0] == ["a"]
    assert sorted(held.batches[1]) == ["b", "c", "d"]  # one statement for the three


def test_a_lone_request_is_sent_at_once():
    held = Held()
    held.release.set()
    commit = GroupCommit(held)
    assert [commit("x"), commit("y")] == ["X", "Y"]
    assert held.batches == [["x"], ["y"]]


def test_requests_apart_or_not_together_never_share_a_statement_and_at_most_most_do():
    held = Held()
    commit = GroupCommit(held, apart=lambda r: (r[0],), together=lambda r: r.endswith("!"), most=2)
    answers = ask_together(commit, "a0", ["k1", "k2", "m3", "n4!", "p5"], held)
    assert answers == {r: r.upper() for r in ["a0", "k1", "k2", "m3", "n4!", "p5"]}
    for batch in held.batches:
        assert len(batch) <= 2
        assert len({r[0] for r in batch}) == len(batch)  # no two with the same first letter
        assert len({r.endswith("!") for r in batch}) == 1
    assert sum(len(batch) for batch in held.batches) == 6


def test_a_failed_statement_fails_each_request_it_carried_in_its_own_thread():
    held = Held()
    answers = ask_together(GroupCommit(held), "a", ["bad", "c"], held)
    assert answers["a"] == "A"
    assert isinstance(answers["bad"], ConnectionError)
    assert isinstance(answers["c"], ConnectionError)  # sent with "bad"
    with pytest.raises(ConnectionError):
        GroupCommit(held)("bad")
