# -*- test-case-name: tests.test_body_parsing,tests.test_hostile_input -*-
"""
Large request bodies, parsed one at a time off the reactor thread.

A body of L{OFF_REACTOR_THRESHOLD} bytes or more is parsed in a worker
thread, but a thread only helps the reactor between the C calls that do the
work (the JSON parser, the regular expressions), since each holds the
interpreter while it runs.  So a L{BodyGate} lets one large body be read
and parsed at a time: the reactor competes with one worker instead of ten,
and at most one large body is in memory as Python objects.  Bodies waiting
for their turn stay where twisted.web put them as they arrived (a temporary
file, for large ones); a bounded number may wait, past which the answer is
C{503 overloaded}.
"""

from __future__ import annotations

from typing import IO, Any, Callable, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore, fail
from twisted.internet.threads import deferToThreadPool

from ai_agent.errors import overloaded
from ai_agent.headends._request import parseChatRequest

_T = TypeVar("_T")

#: Large bodies parsed at once, by default.
PARSE_SLOTS = 1

#: Large bodies that may wait for a parse slot, by default.
MAX_WAITING = 32


@attrs.define(eq=False)
class BodyGate:
    """
    Reads and parses large bodies in a thread pool, a bounded number at a
    time.

    @ivar reactor: the reactor (it delivers the threads' results).
    @ivar threadPool: the pool parses run in.
    @ivar slots: large bodies parsed at once.
    @ivar maxWaiting: large bodies that may wait for a slot.
    """

    reactor: Any
    threadPool: Any
    slots: int = PARSE_SLOTS
    maxWaiting: int = MAX_WAITING
    waiting: int = attrs.field(default=0, init=False)
    _semaphore: DeferredSemaphore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._semaphore = DeferredSemaphore(self.slots)

    def parse(
        self,
        content: IO[bytes],
        parser: Callable[[bytes], _T] = parseChatRequest,  # type: ignore[assignment]
    ) -> Deferred[_T]:
        """
        Read C{content} and parse it with C{parser} (by default as a chat
        completions request), in a thread, once a slot is free.

        @return: fires with what C{parser} returns, or fails with the 400
            L{ai_agent.errors.AgentError}, or a 503 when too many bodies
            wait.  Cancelling it while it waits leaves the queue; while it
            is parsed, stops waiting for the thread (whose slot is freed
            when it finishes, so memory stays bounded).
        """
        if self.waiting >= self.maxWaiting:
            return fail(
                overloaded(f"more than {self.maxWaiting} large request bodies are waiting", 1.0)
            )
        self.waiting += 1
        state: dict[str, Any] = {}

        def cancel(_: Deferred[_T]) -> None:
            state["cancelled"] = True
            if "work" not in state:
                acquiring.cancel()

        result: Deferred[_T] = Deferred(canceller=cancel)

        def acquired(_: object) -> None:
            self.waiting -= 1
            work = deferToThreadPool(self.reactor, self.threadPool, lambda: parser(content.read()))
            state["work"] = work

            def done(outcome: Any) -> None:
                self._semaphore.release()
                if not result.called:
                    result.callback(outcome)

            work.addBoth(done)

        def notAcquired(failure: Any) -> None:
            self.waiting -= 1
            if not state.get("cancelled"):
                result.errback(failure)

        acquiring = self._semaphore.acquire()
        acquiring.addCallbacks(acquired, notAcquired)
        return result


__all__ = ["BodyGate", "MAX_WAITING", "PARSE_SLOTS"]
