"""
C{ai-agent --workers N}: several processes answering on one port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.cli import Options
from ai_agent.testing import Reply, startFakeUpstream
from ai_agent.workers import (
    WorkerSupervisor,
    _Worker,
    encodeInherited,
    parseInherited,
    workerCommand,
)
from tests._harness import writeAgent
from tests._process import (
    ServerProcess,
    childEnvironment,
    command,
    freePort,
    waitUntilListening,
)
from tests.test_http_guard import _Raw, _request

AGENT = """\
---
description: Worker test agent
models: fake/test-model
---
"""


STREAM = json.dumps(
    {"model": "agent", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


async def _get(port: int, path: str) -> tuple[int, bytes]:
    """
    One GET on a new connection (so the kernel picks the accepting process
    afresh each time).
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Collect(Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.done: Deferred[bytes] = Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: Failure | None = None) -> None:
            self.done.callback(self.data)

    protocol = Collect()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    assert protocol.transport is not None
    protocol.transport.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    raw = await protocol.done
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


class WorkersTests(TestCase):
    """
    Real processes on 127.0.0.1.
    """

    timeout = 60

    async def test_twoWorkersShareOnePort(self) -> None:
        """
        With C{--workers 2} the parent and one worker both accept on the
        one port: while an agent run is held open in one process, fresh
        connections see C{running: 1} from it and C{running: 0} from the
        other.  SIGTERM to the parent stops the worker too, and the parent
        exits 0.
        """
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        running.upstream.script(Reply(content="held", hold=True))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        writeAgent(directory, "agent.ai", AGENT)
        port = freePort()
        argv = [
            *command("ai-agent"),
            "--agent",
            "agent.ai",
            "--openai-completions",
            str(port),
            "--workers",
            "2",
        ]
        server = ServerProcess()
        env = childEnvironment(HOME=directory)
        transport = reactor.spawnProcess(server, argv[0], argv, env=env, path=directory)
        pid = transport.pid
        assert pid is not None

        def killAll() -> None:
            for child in _children(pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
            if not server.ended.called:
                transport.signalProcess("KILL")

        self.addCleanup(lambda: server.ended if server.ended.called else _killed(killAll, server))

        for _ in range(200):
            try:
                status, _ = await _get(port, "/health")
                if status == 200 and _children(pid):
                    break
            except Exception:
                pass
            await deferLater(reactor, 0.05, lambda: None)
        workers = _children(pid)
        self.assertEqual(len(workers), 1, server.output.decode())

        # Hold one run open in whichever process takes it.
        holder = _HeldStream(port)
        await holder.start()
        await running.upstream.waitForRequests(1)
        # The worker may still be starting: ask for up to 20 seconds.
        seen: set[int] = set()
        for _ in range(1000):
            status, body = await _get(port, "/health")
            self.assertEqual(status, 200)
            seen.add(json.loads(body)["running"])
            if seen == {0, 1}:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(seen, {0, 1}, server.output.decode())
        holder.close()
        running.upstream.release()

        transport.signalProcess("TERM")
        code = await server.waitForEnd()
        self.assertEqual(code, 0, server.output.decode())
        for child in workers:
            for _ in range(100):
                if not os.path.exists(f"/proc/{child}") or _isZombie(child):
                    break
                await deferLater(reactor, 0.05, lambda: None)
            self.assertTrue(
                not os.path.exists(f"/proc/{child}") or _isZombie(child), "worker still running"
            )


#: Runs an argv as the leader of a new session (and process group), as a
#: service manager or a terminal's job control would.
_NEW_SESSION = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


def _serverSidePids(serverPort: int, clientPorts: set[int], pids: list[int]) -> dict[int, int]:
    """
    For each client port of a connection to C{serverPort}, the one of
    C{pids} holding the server's end (found in C{/proc}: the socket's inode
    in the TCP tables, then in each process's descriptors).
    """
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            if local == serverPort and remote in clientPorts:
                inodes[fields[9]] = remote
    owners: dict[int, int] = {}
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners[inodes[target[8:-1]]] = pid
    return owners


async def _waitForOutput(server: ServerProcess, marker: bytes, timeout: float = 20.0) -> None:
    """
    Wait until C{server} has written C{marker}; fail with its output after
    C{timeout} seconds.
    """
    for _ in range(int(timeout / 0.02)):
        if marker in server.output:
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{marker!r} not written; the server said:\n{server.output.decode()}")


class GroupSignalTests(TestCase):
    """
    A stop signal sent to the whole process group of C{ai-agent --workers
    2} (Ctrl-C in a terminal, systemd's C{KillMode=control-group}): each
    worker gets it from there and again from the first process, and still
    drains instead of exiting at once.
    """

    timeout = 90

    async def groupStop(self, signum: int) -> None:
        running = await startFakeUpstream(reactor)
        self.addCleanup(running.stop)
        upstream = running.upstream
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, ".ai-agent.json"), "w") as f:
            json.dump({"providers": {"fake": {"type": "openai", "baseUrl": running.baseUrl}}}, f)
        writeAgent(directory, "agent.ai", AGENT)
        port = freePort()
        argv = [
            sys.executable,
            "-c",
            _NEW_SESSION,
            *command("ai-agent"),
            "--agent",
            "agent.ai",
            "--openai-completions",
            str(port),
            "--workers",
            "2",
        ]
        server = ServerProcess()
        transport = reactor.spawnProcess(
            server, argv[0], argv, env=childEnvironment(HOME=directory), path=directory
        )
        pid = transport.pid
        assert pid is not None

        def killAll() -> Deferred[int]:
            if server.status is None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            return server.ended

        self.addCleanup(killAll)
        await waitUntilListening(server, port)
        await _waitForOutput(server, b"ready, serving")
        workers = _children(pid)
        self.assertEqual(len(workers), 1, server.output.decode())
        self.assertEqual(os.getpgid(workers[0]), pid)

        # One connection accepted by each process (the first and its
        # worker), each then running a stream held open by the upstream.
        processes = {pid, *workers}
        connections: dict[int, _Raw] = {}
        owners: dict[int, int] = {}
        for _ in range(30):
            for _ in range(8):
                raw = _Raw()
                await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
                self.addCleanup(
                    lambda raw=raw: None if raw.closed else raw.transport.loseConnection()
                )
                connections[raw.transport.getHost().port] = raw
            for _ in range(250):
                owners = _serverSidePids(port, set(connections), list(processes))
                if len(owners) == len(connections):
                    break
                await deferLater(reactor, 0.02, lambda: None)
            if set(owners.values()) == processes:
                break
        self.assertEqual(set(owners.values()), processes, owners)
        streams = []
        for process in sorted(processes):
            clientPort = next(p for p, owner in owners.items() if owner == process)
            streams.append(connections[clientPort])
        for raw in connections.values():
            if raw not in streams:
                raw.transport.loseConnection()
        upstream.script(*[Reply(content=["one", "two", "three"], hold=True)] * len(streams))
        for raw in streams:
            raw.transport.write(_request(STREAM))
        await upstream.waitForRequests(len(streams))

        os.killpg(pid, signum)
        # The first process has passed the signal on: the worker has it twice.
        await _waitForOutput(server, b"sent SIGTERM to 1 worker(s)")
        upstream.release()
        for raw in streams:
            await raw.waitFor(b"[DONE]")
            self.assertIn(b'"content":"three"', raw.received)
            self.assertIn(b'"finish_reason":"stop"', raw.received)
            self.assertNotIn(b'"error"', raw.received)
        code = await server.waitForEnd()
        output = server.output.decode()
        self.assertEqual(code, 0, output)
        self.assertIn("worker 1 stopped (exit status 0)", output)
        self.assertNotIn("exiting at once", output)

    async def test_sigtermToGroupDrains(self) -> None:
        """
        SIGTERM to the process group: every stream, in the first process
        and in its worker, completes with its last frame and C{[DONE]};
        the worker exits 0 (as the first process reports) and so does the
        first process.
        """
        await self.groupStop(signal.SIGTERM)

    async def test_sigintToGroupDrains(self) -> None:
        """
        SIGINT to the process group (Ctrl-C in a terminal), which the first
        process passes on as SIGTERM: the same drain and the same exit 0
        everywhere.
        """
        await self.groupStop(signal.SIGINT)


def _isZombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _killed(killAll: Any, server: ServerProcess) -> Deferred[int]:
    killAll()
    return server.ended


class _HeldStream:
    """
    A streaming chat completion left open.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    async def start(self) -> None:
        body = json.dumps(
            {"model": "agent", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class SupervisorTests(SynchronousTestCase):
    """
    L{WorkerSupervisor} while it stops its workers.
    """

    def test_uncleanStops(self) -> None:
        """
        A worker that ends with a non-zero status or by a signal while the
        workers are stopping is counted as an unclean stop (the first
        process then exits 1); one that exits 0 is not, and the stop fires
        once all have ended.
        """
        supervisor = WorkerSupervisor(Clock(), ["ai-agent"], [], 3)
        workers = {number: _Worker(supervisor, number) for number in (1, 2, 3)}
        supervisor.workers.update(workers)
        stopped = supervisor.stop()
        workers[1].processEnded(Failure(ProcessDone(0)))
        workers[2].processEnded(Failure(ProcessTerminated(1)))
        self.assertNoResult(stopped)
        workers[3].processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.successResultOf(stopped)
        self.assertEqual(supervisor.uncleanStops, [2, 3])
        self.assertEqual(supervisor.workers, {})


class WorkerOptionsTests(SynchronousTestCase):
    """
    Parsing the worker options.
    """

    def test_inheritedRoundTrip(self) -> None:
        """
        C{--worker-fds} names each inherited descriptor with its address
        family, and parses back to the same pairs.
        """
        pairs = [(7, socket.AF_INET), (8, socket.AF_INET6)]
        self.assertEqual(parseInherited(encodeInherited(pairs)), [(7, 2), (8, 10)])

    def test_badInherited(self) -> None:
        """
        A malformed C{--worker-fds} value is a usage error.
        """
        self.assertRaises(usage.UsageError, parseInherited, "7")
        self.assertRaises(usage.UsageError, parseInherited, "x:2")

    def test_workerCommand(self) -> None:
        """
        A worker runs the same command with C{--worker-fds} first, so that no
        later option can make it start workers of its own.
        """
        argv = workerCommand(["--agent", "a.ai", "--workers", "3"], [(5, 2)])
        self.assertEqual(argv[1:5], ["-m", "ai_agent", "--worker-fds", "5:2"])
        self.assertEqual(argv[5:], ["--agent", "a.ai", "--workers", "3"])

    def test_workersNeedAnEndpoint(self) -> None:
        """
        C{--workers} above 1 needs a port to serve.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(AGENT)
        options = Options()
        self.assertRaises(
            usage.UsageError, options.parseOptions, ["--agent", path, "--workers", "2", "hi"]
        )

    def test_workersServeTCPOnly(self) -> None:
        """
        Workers adopt plain TCP or UNIX sockets only; a TLS endpoint is refused.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(AGENT)
        options = Options()
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--agent", path, "--openai-completions", "ssl:8443", "--workers", "2"],
        )
        self.assertIn("TCP or UNIX", str(error))

    def test_inheritedCountMatchesEndpoints(self) -> None:
        """
        A worker must inherit exactly one socket per endpoint.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(AGENT)
        options = Options()
        self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--worker-fds", "5:2,6:2", "--agent", path, "--openai-completions", "8082"],
        )
