"""
The reactor interfaces this project uses, declared as what they are.

Twisted splits the reactor into interfaces (C{IReactorTime},
C{IReactorThreads}, ...), and a type annotation cannot intersect two of
them.  A part of the server that needs a clock I{and} the reactor's thread
pool (the headends parse large bodies in it) declares
L{IReactorTimeAndThreads}: an interface extending both, so that the type
checker (mypy-zope) knows every method it calls and accepts it wherever
either interface is asked for, without casting the reactor to C{Any}.  It
adds nothing: any reactor providing both interfaces (Twisted's own do) is
one.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorThreads, IReactorTime


class IReactorTimeAndThreads(IReactorTime, IReactorThreads):
    """
    C{IReactorTime} and C{IReactorThreads}: a clock, delayed calls, the
    reactor's thread pool and calls into the reactor thread from others.
    """


__all__ = ["IReactorTimeAndThreads"]
