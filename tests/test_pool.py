"""
Tests for L{ai_agent.pool}.
"""

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.errors import AgentError
from ai_agent.pool import RunPool


class RunPoolTests(SynchronousTestCase):
    """
    The pool runs at most C{concurrency} at once, queues a bounded number
    and refuses the rest with 503 and C{Retry-After}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = RunPool(self.clock, concurrency=2, maxQueue=1, queueTimeout=10)

    def test_slotsUpToConcurrency(self) -> None:
        """
        The first C{concurrency} acquisitions get a slot at once; the next
        one waits in the queue.
        """
        first = self.successResultOf(self.pool.acquire())
        self.successResultOf(self.pool.acquire())
        waiting = self.pool.acquire()
        self.assertNoResult(waiting)
        self.assertEqual((self.pool.activeRuns, self.pool.queuedRuns), (2, 1))
        first.release()
        self.successResultOf(waiting)
        self.assertEqual((self.pool.activeRuns, self.pool.queuedRuns), (2, 0))

    def test_fullQueueRefused(self) -> None:
        """
        With every slot busy and the queue full, acquiring fails at once
        with a 503 carrying C{Retry-After}.
        """
        self.pool.acquire()
        self.pool.acquire()
        self.pool.acquire()
        error = self.failureResultOf(self.pool.acquire(), AgentError).value
        self.assertEqual(error.status, 503)
        self.assertEqual(error.code, "overloaded")
        self.assertIsNotNone(error.retryAfter)

    def test_queueTimeout(self) -> None:
        """
        A request that waits longer than C{queueTimeout} is refused with a
        503 and leaves the queue.
        """
        self.pool.acquire()
        self.pool.acquire()
        waiting = self.pool.acquire()
        self.clock.advance(9.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.2)
        error = self.failureResultOf(waiting, AgentError).value
        self.assertEqual(error.status, 503)
        self.assertEqual(self.pool.queuedRuns, 0)

    def test_cancelLeavesQueue(self) -> None:
        """
        Cancelling a queued acquisition removes it from the queue and its
        timer, so a later release goes to the next waiter.
        """
        held = self.successResultOf(self.pool.acquire())
        self.pool.acquire()
        waiting = self.pool.acquire()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(self.pool.queuedRuns, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        held.release()
        self.assertEqual(self.pool.activeRuns, 1)

    def test_releaseIsIdempotent(self) -> None:
        """
        Releasing a slot twice gives back only one slot.
        """
        slot = self.successResultOf(self.pool.acquire())
        slot.release()
        slot.release()
        self.assertEqual(self.pool.activeRuns, 0)
        self.successResultOf(self.pool.acquire())
        self.successResultOf(self.pool.acquire())
        self.assertNoResult(self.pool.acquire())

    def test_stoppedRefuses(self) -> None:
        """
        Once the service stops, new acquisitions are refused with a 503.
        """
        self.pool.startService()
        self.pool.stopService()
        error = self.failureResultOf(self.pool.acquire(), AgentError).value
        self.assertEqual(error.status, 503)

    def test_invalidSettings(self) -> None:
        """
        A concurrency below 1 or a negative queue is refused at construction.
        """
        self.assertRaises(ValueError, RunPool, self.clock, 0)
        self.assertRaises(ValueError, RunPool, self.clock, 1, -1)


class DrainTests(SynchronousTestCase):
    """
    L{RunPool.drain} waits for running work, refuses queued work, and stops
    what is still running after its timeout.
    """

    def test_drain(self) -> None:
        """
        Draining refuses the queued request with a 503, waits for the
        running one, and fires when it releases its slot.
        """
        clock = Clock()
        pool = RunPool(clock, concurrency=1, maxQueue=2, queueTimeout=10)
        slot = self.successResultOf(pool.acquire())
        queued = pool.acquire()
        drained = pool.drain(30)
        self.assertEqual(self.failureResultOf(queued, AgentError).value.status, 503)
        self.assertNoResult(drained)
        slot.release()
        self.successResultOf(drained)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeoutAborts(self) -> None:
        """
        After the timeout, each running run is asked to stop with a 503.
        """
        clock = Clock()
        pool = RunPool(clock, concurrency=1)
        slot = self.successResultOf(pool.acquire())
        stopped: list[AgentError] = []
        slot.onAbort = stopped.append
        drained = pool.drain(5)
        clock.advance(5)
        self.assertEqual([e.status for e in stopped], [503])
        slot.release()
        self.successResultOf(drained)

    def test_cancel(self) -> None:
        """
        Cancelling a drain stops waiting and leaves no timer behind.
        """
        clock = Clock()
        pool = RunPool(clock, concurrency=1)
        self.successResultOf(pool.acquire())
        drained = pool.drain(5)
        drained.cancel()
        self.failureResultOf(drained, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
