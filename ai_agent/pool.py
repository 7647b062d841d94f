# -*- test-case-name: tests.test_pool -*-
"""
The concurrency pool: at most C{concurrency} agent runs at once, a bounded
queue behind them and a bounded wait in it.  Past either bound a request is
refused with 503 and C{Retry-After}, before anything was sent to it.

The queue is fair between client keys: a freed slot goes to the keys with
someone waiting in turn (round robin), so one key queueing many requests
does not make the others wait behind all of them.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ai_agent.errors import AgentError, overloaded
from ai_agent.observe import NULL_OBSERVER, Observer

if TYPE_CHECKING:
    from ai_agent.quotas import Quotas


@attrs.define(eq=False)
class _FairQueue:
    """
    C{tokens} slots, and a queue per owner (client key) of those waiting
    for one; a freed slot goes to the owners in turn.
    """

    tokens: int
    _queues: dict[str, deque[Deferred[None]]] = attrs.field(factory=dict)

    @property
    def waiting(self) -> int:
        """
        How many wait.
        """
        return sum(len(queue) for queue in self._queues.values())

    def acquire(self, owner: str) -> Deferred[None]:
        """
        A slot, at once when one is free, else in C{owner}'s turn.
        Cancelling the wait leaves the queue.
        """
        if self.tokens > 0:
            self.tokens -= 1
            return succeed(None)

        def forget(waiter: Deferred[None]) -> None:
            queue = self._queues.get(owner)
            if queue is not None and waiter in queue:
                queue.remove(waiter)
                if not queue:
                    del self._queues[owner]

        waiter: Deferred[None] = Deferred(canceller=forget)
        self._queues.setdefault(owner, deque()).append(waiter)
        return waiter

    def release(self) -> None:
        """
        A slot is free: to the first waiter of the owner whose turn it is
        (that owner then goes to the back of the turn), else kept.
        """
        if not self._queues:
            self.tokens += 1
            return
        owner = next(iter(self._queues))
        queue = self._queues.pop(owner)
        waiter = queue.popleft()
        if queue:
            self._queues[owner] = queue
        waiter.callback(None)

    def takeAll(self) -> list[Deferred[None]]:
        """
        Empty the queue: every waiter, oldest owner first.
        """
        found = [waiter for queue in self._queues.values() for waiter in queue]
        self._queues.clear()
        return found


@attrs.define(eq=False)
class Slot:
    """
    The right to run one agent.  Call L{release} exactly once when the run
    ends; further calls do nothing.
    """

    _release: Callable[[Slot], None]
    _released: bool = False
    onAbort: Callable[[AgentError], None] | None = None

    def release(self) -> None:
        """
        Give the slot back to the pool.
        """
        if not self._released:
            self._released = True
            self._release(self)

    def abort(self, error: AgentError) -> None:
        """
        Ask the run holding this slot to stop with C{error} (at shutdown).
        """
        if not self._released and self.onAbort is not None:
            self.onAbort(error)


@attrs.define(eq=False)
class RunPool(Service):
    """
    A L{Service} limiting concurrent agent runs.

    @ivar concurrency: runs allowed at once.
    @ivar maxQueue: requests allowed to wait for a slot.
    @ivar queueTimeout: seconds a request may wait before it is refused.
    @ivar observer: told of queue depth, waits and refusals.
    """

    log = Logger()

    reactor: IReactorTime
    concurrency: int = 4
    maxQueue: int = 16
    queueTimeout: float = 30.0
    observer: Observer = NULL_OBSERVER
    #: The limits per key and agent runs are admitted by before they wait
    #: for a slot (see L{ai_agent.headends._quota.admitted}), if any.
    quotas: Quotas | None = None
    _semaphore: _FairQueue = attrs.field(init=False)
    _stopping: bool = attrs.field(init=False, default=False)
    _active: set[Slot] = attrs.field(init=False, factory=set)
    _idle: list[Deferred[None]] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.maxQueue < 0:
            raise ValueError("maxQueue must not be negative")
        self._semaphore = _FairQueue(self.concurrency)

    @property
    def activeRuns(self) -> int:
        """
        Runs holding a slot now.
        """
        return self.concurrency - self._semaphore.tokens

    @property
    def queuedRuns(self) -> int:
        """
        Requests waiting for a slot now.
        """
        return self._semaphore.waiting

    def _retryAfter(self) -> float:
        return float(max(1, min(30, math.ceil(self.queueTimeout / 4))))

    def acquire(self, owner: str = "") -> Deferred[Slot]:
        """
        Wait for a slot, in C{owner}'s turn (the client key's name: see
        L{_FairQueue}).

        @return: a Deferred firing with a L{Slot}, or failing with an
            overloaded L{AgentError} when the queue is full, the wait
            exceeded C{queueTimeout}, or the pool is stopping.  Cancelling
            it leaves the queue.
        """
        observer = self.observer
        if self._stopping:
            observer.rejected()
            return _failed(overloaded("the server is shutting down", self._retryAfter()))
        if self._semaphore.tokens == 0 and self.queuedRuns >= self.maxQueue:
            observer.rejected()
            self.log.warn(
                "pool full: {running} running, {queued} queued; refusing",
                running=self.activeRuns,
                queued=self.queuedRuns,
            )
            return _failed(
                overloaded(
                    f"all {self.concurrency} agent slots are busy and the queue is full;"
                    " retry later",
                    self._retryAfter(),
                )
            )
        waiter = self._semaphore.acquire(owner)
        if waiter.called:
            observer.slotAcquired(0.0)
            return waiter.addCallback(lambda _: self._newSlot())
        observer.queueEntered()
        queued = observer.clock()
        timedOut = [False]

        def onTimeout() -> None:
            timedOut[0] = True
            waiter.cancel()

        timer = self.reactor.callLater(self.queueTimeout, onTimeout)

        def acquired(_: object) -> Slot:
            timer.cancel()
            observer.queueLeft()
            observer.slotAcquired(observer.clock() - queued)
            return self._newSlot()

        def failed(reason: Failure) -> Failure:
            if timer.active():
                timer.cancel()
            observer.queueLeft()
            if timedOut[0] or reason.check(AgentError):
                # Waited too long, or the server began shutting down.
                observer.rejected()
            if timedOut[0]:
                raise overloaded(
                    f"no agent slot became free within {self.queueTimeout:g} s; retry later",
                    self._retryAfter(),
                )
            return reason

        return waiter.addCallbacks(acquired, failed)

    def _newSlot(self) -> Slot:
        slot = Slot(self._releaseSlot)
        self._active.add(slot)
        return slot

    def _releaseSlot(self, slot: Slot) -> None:
        self._active.discard(slot)
        self._semaphore.release()
        if not self._active:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    @property
    def draining(self) -> bool:
        """
        Whether the pool refuses new work (the server is stopping).
        """
        return self._stopping

    def stopAccepting(self) -> None:
        """
        Refuse new work from now on; what runs or waits is left alone.
        """
        self._stopping = True

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Refuse new work, refuse the queued requests, and wait for the running
        ones to finish; after C{timeout} seconds, ask those still running to
        stop, and fire once they have.
        """
        self._stopping = True
        shutdown = overloaded("the server is shutting down", self._retryAfter())
        for waiter in self._semaphore.takeAll():
            waiter.errback(shutdown)
        if not self._active:
            return succeed(None)

        def forget(d: Deferred[None]) -> None:
            if d in self._idle:
                self._idle.remove(d)

        idle: Deferred[None] = Deferred(canceller=forget)
        self._idle.append(idle)
        self.log.info(
            "draining: waiting up to {timeout:g} s for {running} run(s)",
            timeout=timeout,
            running=len(self._active),
        )

        def expire() -> None:
            self.log.warn(
                "drain timeout: stopping {running} run(s) still going", running=len(self._active)
            )
            for slot in list(self._active):
                slot.abort(overloaded("the server shut down before the run finished", 1))

        timer = self.reactor.callLater(timeout, expire)

        def done(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        return idle.addBoth(done)

    def stopService(self) -> None:
        """
        Refuse new work from now on.
        """
        self._stopping = True
        super().stopService()


def _failed(error: AgentError) -> Deferred[Slot]:
    d: Deferred[Slot] = Deferred()
    d.errback(error)
    return d


__all__ = ["RunPool", "Slot"]
