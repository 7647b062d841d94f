"""
The server with a reactor probe: C{python -m bench._probed ARGS} runs
C{ai-agent ARGS} (L{ai_agent.cli.run}) in this process, and a
C{LoopingCall} every millisecond appends each gap between two of its calls
longer than L{THRESHOLD} to the file C{AI_AGENT_PROBE} names, one line
C{<time.monotonic() at the end of the gap> <gap in ms> <CPU ms> <reactor
CPU ms>}.  A gap is
the time the reactor was held by something else (a parse, an encoding, a
write) plus the time the machine gave other processes; the CPU time the
process used during the gap (every thread: a parse in a thread holds the
interpreter, which the reactor's thread then waits for) is the part that
does not depend on the machine's load (an upper bound of the hold: the
store's thread may run beside the reactor on the other CPU), and the
reactor thread's own CPU time in it (a lower bound: without the time it
waited for the interpreter).  C{time.monotonic} is shared by
every process of the machine, so C{bench/parse.py} finds the gaps of the
window in which it sent a body.

A development tool of C{bench/parse.py}; never part of the server.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

#: Gaps shorter than this (seconds) are not written.
THRESHOLD = 0.002
#: How often the probe asks to run (seconds).
INTERVAL = 0.001


def installProbe(reactor: Any, out: IO[str]) -> None:
    """
    Start the probe on C{reactor}, writing to C{out}.
    """
    from twisted.internet.task import LoopingCall

    last = [time.monotonic(), time.process_time(), time.thread_time()]

    def tick() -> None:
        now, cpu, own = time.monotonic(), time.process_time(), time.thread_time()
        gap, used, mine = now - last[0], cpu - last[1], own - last[2]
        if gap > THRESHOLD:
            out.write(f"{now:.6f} {gap * 1000:.3f} {used * 1000:.3f} {mine * 1000:.3f}\n")
            # The probe's own write (slow on a busy disk) is not a gap.
            now, cpu, own = time.monotonic(), time.process_time(), time.thread_time()
        last[0], last[1], last[2] = now, cpu, own

    probe = LoopingCall(tick)
    probe.clock = reactor
    reactor.callWhenRunning(probe.start, INTERVAL)


def main() -> None:
    from twisted.internet import reactor

    from ai_agent.cli import run

    out = open(os.environ["AI_AGENT_PROBE"], "a", buffering=1)
    installProbe(reactor, out)
    sys.exit(run(sys.argv[1:], sys.stdout, sys.stderr))


if __name__ == "__main__":
    main()
