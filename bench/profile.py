"""
A quick A/B probe for the hot path: start the benchmark's upstream and this
server (pinned as C{bench/run} pins them), then measure the added latency
at concurrency 1 and the server's CPU per request at concurrency 32 for one
API, optionally under C{py-spy} to see where the CPU goes.  The CPU is also
split between the reactor's thread and the process's other threads (the
run store's among them).

C{--api tooltrip} is the client-tool round trip of C{bench/run}
(L{bench._run.measureToolTrip}: a request handed a tool call back, then
the request with the tool's result), its added latency per request against
the same two requests sent directly, and its CPU per request with 32 trips
under way at once.

This is a development tool for iterating on a change; the figures of record
come from C{bench/run}.

    python -m bench.profile [--api chat|stream|responses|anthropic|tooltrip|mcp|a2a|a2a-stream]
        [--count 2000] [--seconds 5] [--py-spy OUT] [--extra ARG ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import bench._upstream
from bench._client import Sampler, Target
from bench._run import (
    KEY,
    OURS,
    PING,
    Proc,
    Setup,
    freePort,
    measureToolTrip,
    spawn,
    waitReady,
)
from bench._stats import cpuSeconds

UPSTREAM_CPU = "1"


def _raw(target: Target, api: str) -> bytes:
    if api == "chat":
        return target.chat(PING, False)
    if api == "stream":
        return target.chat(PING, True)
    if api == "responses":
        return target.responses(PING, False)
    if api == "anthropic":
        body = {
            "model": target.model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": PING}],
        }
        raw = target.post("/v1/messages", json.dumps(body).encode())
        return raw.replace(b"\r\n\r\n", b"\r\nx-api-key: " + target.key.encode() + b"\r\n\r\n", 1)
    if api == "mcp":
        return target.mcpCall(PING)
    if api == "a2a":
        return target.a2a(PING, False)
    if api == "a2a-stream":
        return target.a2a(PING, True)
    raise SystemExit(f"unknown --api {api!r}")


def _threadCPU(proc: Proc) -> tuple[float, float]:
    """
    CPU seconds used so far by the server's main (reactor) thread and by
    its other threads.
    """
    pid = proc.popen.pid
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                used = cpuSeconds(f.read())
        except OSError:
            continue  # a thread that just ended
        if int(tid) == pid:
            main += used
        else:
            other += used
    return main, other


async def _toolTrips(
    ours: Proc, target: Target, direct: Target, options: argparse.Namespace
) -> None:
    """
    The client-tool round trip's rounds (see the module's docstring).
    """
    for _ in range(options.rounds):
        trips = max(options.count // 8, 20)
        mine = await measureToolTrip(target, trips)
        base = await measureToolTrip(direct, trips)
        if mine["bad"] or base["bad"]:
            raise SystemExit(f"bad round trips: {mine['bad']} (ours), {base['bad']} (direct)")
        added = [
            statistics.median(t[leg] for t in mine["legsMs"])
            - statistics.median(t[leg] for t in base["legsMs"])
            for leg in (0, 1)
        ]
        cpu0, threads0 = ours.cpu(), _threadCPU(ours)
        began = time.perf_counter()
        loads = await asyncio.gather(*(measureToolTrip(target, trips // 4) for _ in range(32)))
        elapsed = time.perf_counter() - began
        cpu, threads = ours.cpu() - cpu0, _threadCPU(ours)
        n = 2 * sum(len(load["ms"]) for load in loads)
        bad = sum(load["bad"] for load in loads)
        print(
            f"{OURS} tooltrip: added p50 per request {sum(added) / 2:.3f} ms"
            f" (request 1 {added[0]:.3f}, request 2 {added[1]:.3f}),"
            f" {n / elapsed:.0f} req/s, {cpu / n * 1e6:.0f} µs CPU/request"
            f" (reactor thread {(threads[0] - threads0[0]) / n * 1e6:.0f},"
            f" other threads {(threads[1] - threads0[1]) / n * 1e6:.0f}), bad {bad}",
            flush=True,
        )


async def _measure(options: argparse.Namespace) -> None:
    upstreamPort = freePort()
    upstream = spawn(
        "upstream",
        [sys.executable, bench._upstream.__file__, "--port", str(upstreamPort)],
        UPSTREAM_CPU,
        "/tmp",
        dict(os.environ),
        upstreamPort,
    )
    setup = Setup.create(upstreamPort)
    ours = setup.startOurs(extra=tuple(options.extra))
    spy = None
    try:
        await waitReady(upstream, "/v1/models", 20)
        await waitReady(ours, "/v1/models", 20)
        direct = Target(upstreamPort, "/v1", "m", KEY)
        target = Target(ours.port, "/v1", "bench", KEY)
        if options.api == "tooltrip":
            await _toolTrips(ours, target, direct, options)
            return
        rawOurs = _raw(target, options.api)
        rawDirect = _raw(direct, "stream" if options.api == "stream" else "chat")
        warm = Sampler(ours.port)
        await warm.run(rawOurs, 4, count=500)
        if warm.errors or any(r.status != 200 for r in warm.results):
            first = warm.results[0]
            raise SystemExit(f"warm-up failed: {first.status} {first.body[:300]!r}")
        if options.py_spy:
            spy = subprocess.Popen(
                [
                    shutil.which("py-spy") or "py-spy",
                    *("record --nonblocking -r 400 -f".split()),
                    options.format,
                    "-o",
                    options.py_spy,
                    "-p",
                    str(ours.popen.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)
        for _ in range(options.rounds):
            s1, s0 = Sampler(ours.port), Sampler(upstreamPort)
            await s0.run(rawDirect, 1, count=options.count // 4)
            await s1.run(rawOurs, 1, count=options.count)
            ours50 = statistics.median(r.latency for r in s1.results) * 1000
            dir50 = statistics.median(r.latency for r in s0.results) * 1000
            qs = statistics.quantiles([r.latency * 1000 for r in s1.results], n=100)
            cpu0, threads0 = ours.cpu(), _threadCPU(ours)
            s32 = Sampler(ours.port)
            elapsed = await s32.run(rawOurs, 32, duration=options.seconds)
            cpu, threads = ours.cpu() - cpu0, _threadCPU(ours)
            n = len(s32.results)
            print(
                f"{OURS} {options.api}: added p50 {ours50 - dir50:.3f} ms (p99 {qs[98]:.3f}), "
                f"{n / elapsed:.0f} req/s, {cpu / n * 1e6:.0f} µs CPU/request "
                f"(reactor thread {(threads[0] - threads0[0]) / n * 1e6:.0f}, "
                f"other threads {(threads[1] - threads0[1]) / n * 1e6:.0f}), "
                f"errors {s1.errors + s32.errors}",
                flush=True,
            )
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        ours.stop()
        upstream.stop()
        shutil.rmtree(setup.directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="chat")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--py-spy", default=None)
    parser.add_argument("--format", default="raw")
    parser.add_argument("--extra", nargs="*", default=[])
    options = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(_measure(options))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
