# -*- test-case-name: tests.test_wire -*-
"""
Send small writes at once instead of on the reactor's next turn.

A Twisted TCP transport queues every C{write} and sends it when the reactor
next finds the socket writable: one more C{epoll_wait}, two C{epoll_ctl}
calls (start and stop watching for writability) and a reactor iteration
between the decision to answer and the bytes leaving.  On a proxied request
that happens twice (the request to the upstream, the answer to the client),
which shows at concurrency 1 as added latency.  L{EagerWrites.sendNow}
sends straight on
the socket when nothing is queued before it, and queues only what the
kernel did not take, so the order of bytes is kept and back-pressure still
works through the transport's buffer.

This is part of the speed layer (L{ai_agent.speed}): C{--stock-twisted}
(or C{AI_AGENT_STOCK_TWISTED=1}) runs the server without it, on plain
C{transport.write}s.

It relies on the private buffer attributes of
C{twisted.internet.abstract.FileDescriptor} and on C{doWrite} and
C{socket} of C{twisted.internet.tcp.Connection} (pinned in
C{tests/test_private_api.py}) and only acts on the plain TCP transports,
seen through plain C{ProtocolWrapper}s (TLS, UNIX sockets and test
transports get an ordinary C{write}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper

_PLAIN = (tcp.Client, tcp.Server)


def _openTCP(transport: Any) -> Any:
    """
    The plain TCP transport under C{transport} (seen through plain
    C{ProtocolWrapper}s, which write straight through), if it is open for
    writing; else L{None}.
    """
    while type(transport) is ProtocolWrapper:
        transport = transport.transport
    if (
        type(transport) in _PLAIN
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        return transport
    return None


class EagerWrites:
    """
    Eager sends on the plain TCP transports of one reactor: L{sendNow} for
    a write that should leave at once, L{markPending} and L{flushPending}
    for what one turn of the reactor queued, L{flushNow} for one transport.

    The transports written in the current turn are kept here, not in a
    module global: one of these is made by the speed layer
    (L{ai_agent.speed.EagerTwisted}) when the server is assembled, and
    shared by its site (the answers) and its upstream client (which
    flushes them after each upstream read).  With C{--stock-twisted}
    there is none.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[Any] = []

    def sendNow(self, transport: Any, data: bytes) -> None:
        """
        Write C{data} on C{transport}, sent now when nothing is queued.
        """
        tcp = _openTCP(transport)
        if tcp is not None and not tcp.dataBuffer and not tcp._tempDataLen:
            transport = tcp
            try:
                sent = transport.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                # Let the transport meet the error on its own write.
                sent = 0
            if sent >= len(data):
                return
            data = data[sent:]
        transport.write(data)

    def markPending(self, transport: Any) -> None:
        """
        Note that C{transport} was written to (queued) in this turn of the
        reactor, so that L{flushPending} can send it before the turn ends.
        """
        pending = self._pending
        if not pending or pending[-1] is not transport:
            pending.append(transport)

    def flushNow(self, transport: Any) -> None:
        """
        Send what C{transport} has queued now, as the reactor would on its
        next turn (left to the reactor when it is closing or not plain TCP).
        """
        if transport is None:
            return
        tcp = _openTCP(transport)
        if tcp is not None and (tcp.dataBuffer or tcp._tempDataLen):
            # An error is returned, not raised, and the transport stays
            # registered for writing: the reactor meets it on its own
            # doWrite.
            tcp.doWrite()

    def flushPending(self) -> None:
        """
        Send what the transports noted by L{markPending} have queued, now,
        as the reactor would on its next turn: frames of a stream written
        while one upstream read was handled leave together, one turn
        earlier.  A transport that is closing, or whose send fails, is left
        to the reactor.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for transport in pending:
            self.flushNow(transport)


def noDelay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off on C{transport}'s TCP socket (through TLS
    and plain wrappers): what is written here is already whole, so holding
    a small segment back until the peer acknowledges the previous one (up
    to its delayed-ACK timer, 40 ms on Linux) only adds latency.
    """
    for _ in range(4):
        setter = getattr(type(transport), "setTcpNoDelay", None)
        if setter is not None:
            try:
                transport.setTcpNoDelay(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


__all__ = ["EagerWrites", "noDelay"]
