"""Group commit: what several threads ask at once goes to PostgreSQL as one statement.

A run copies files on several threads, and each claims its file, then records its copy, in a
statement of its own. Here a thread that asks while another's statement is in flight queues
its request; when that statement returns, the first thread waiting sends everything queued as
one statement (the same rules, one row per request) and hands each thread its own answer. Alone,
a thread sends its request at once: nothing waits for a batch to fill. A failed statement fails
every request it carried, each in its own thread, as the single statement would have.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar, cast

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class _Pending(Generic[Request, Answer]):
    def __init__(self, request: Request) -> None:
        self.request = request
        self.done = False
        self.answer: Answer | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Request, Answer]):
    """send(requests) -> one answer per request, in order, run in one of the requests' threads.
    apart(request): requests sharing any of these marks never share a statement (two claims of
    one object key, which a statement's NOT EXISTS would not see in its own rows).
    together(request): requests share a statement only where this is the same (its scalar
    parameters)."""

    def __init__(
        self,
        send: Callable[[list[Request]], Sequence[Answer]],
        apart: Callable[[Request], Iterable[Hashable]] = lambda _: (),
        together: Callable[[Request], Hashable] = lambda _: None,
        most: int = 100,
    ) -> None:
        self._send = send
        self._apart = apart
        self._together = together
        self._most = most
        self._queue: list[_Pending[Request, Answer]] = []
        self._sending = False
        self._changed = threading.Condition()

    def __call__(self, request: Request) -> Answer:
        pending: _Pending[Request, Answer] = _Pending(request)
        with self._changed:
            self._queue.append(pending)
        while True:
            with self._changed:
                while not pending.done and self._sending:
                    self._changed.wait()
                if pending.done:
                    return _answer(pending)
                self._sending = True
                batch = self._take()
            try:
                self._deliver(batch)
            finally:
                with self._changed:
                    self._sending = False
                    self._changed.notify_all()

    def _take(self) -> list[_Pending[Request, Answer]]:
        """The queued requests that may share a statement, oldest first; the rest stay queued."""
        batch: list[_Pending[Request, Answer]] = []
        rest: list[_Pending[Request, Answer]] = []
        seen: set[Hashable] = set()
        shared = self._together(self._queue[0].request)
        for pending in self._queue:
            marks = set(self._apart(pending.request))
            if (
                len(batch) >= self._most
                or marks & seen
                or self._together(pending.request) != shared
            ):
                rest.append(pending)
                continue
            seen |= marks
            batch.append(pending)
        self._queue = rest
        return batch

    def _deliver(self, batch: list[_Pending[Request, Answer]]) -> None:
        try:
            answers = self._send([pending.request for pending in batch])
        except BaseException as error:
            for pending in batch:
                pending.error = error
        else:
            for pending, answer in zip(batch, answers, strict=True):
                pending.answer = answer
        for pending in batch:
            pending.done = True


def _answer(pending: _Pending[Request, Answer]) -> Answer:
    if pending.error is not None:
        raise pending.error
    return cast(Answer, pending.answer)
