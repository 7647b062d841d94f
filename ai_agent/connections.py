# -*- test-case-name: tests.test_testing -*-
"""
Tracking a listening port's open connections, so a server (or a test) can
drop long-lived ones such as idle keep-alives and SSE streams when it stops.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import WrappingFactory


class TrackingFactory(WrappingFactory):
    """
    Wraps a server factory and keeps its open connections.
    """

    noisy = False

    def __init__(self, wrappedFactory: IProtocolFactory) -> None:
        super().__init__(wrappedFactory)
        self._allGone: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Protocol) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._allGone = self._allGone, []
            for d in waiters:
                d.callback(None)

    def dropConnections(self) -> Deferred[None]:
        """
        Abort every open connection; fire when all are closed.
        """
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._allGone.append(d)
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
        return d


__all__ = ["TrackingFactory"]
