"""
Schemathesis against the server's own OpenAPI document.

Starts the fake upstream (C{python -m ai_agent.testing}) and the server
(C{ai-agent --agent ... --openai-completions PORT}, configured by a
C{.ai-agent.json} pointing at the fake) as subprocesses on loopback ports,
then runs C{schemathesis run http://127.0.0.1:PORT/openapi.json} with the
checks C{not_a_server_error}, C{status_code_conformance},
C{content_type_conformance} and C{response_schema_conformance}, bounded in
examples per operation and in wall time (a run that overruns is killed and
fails).  Exits with schemathesis's status: non-zero on any failure.

Usage: C{python tests/schemathesis_run.py [--max-examples N] [--time-limit S]
[--seed N] [-- extra schemathesis options]} (C{tox -e schemathesis}).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Sequence

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
AGENT = """\
---
description: The agent schemathesis talks to
models: fake/fake-model
maxRetries: 1
---
You answer briefly.
"""


def announcedPort(
    logPath: str, pattern: bytes, process: subprocess.Popen[bytes], timeout: float = 30.0
) -> int:
    """
    The port a child started on port 0 says (in its log at C{logPath}) it
    listens on: the first group of C{pattern}; fail when C{process} exits
    or the time runs out.  No port is picked here and released for the
    child, which another process could take in between.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(logPath, "rb") as log:
            match = re.search(pattern, log.read())
        if match is not None:
            return int(match.group(1))
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode} before listening")
        time.sleep(0.1)
    raise SystemExit(f"{process.args[0]} announced no port within {timeout:g}s")


def waitFor(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """
    Poll C{url} until it answers 200, or fail when C{process} exits or the
    time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode} before {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:g}s")


def command(name: str) -> list[str]:
    """
    The installed console script next to this Python, or C{python -m}.
    """
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", {"ai-agent": "ai_agent", "schemathesis": "schemathesis"}[name]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=50, help="cases per operation")
    parser.add_argument(
        "--time-limit", type=float, default=180, help="seconds before the run is killed"
    )
    parser.add_argument("--seed", type=int, default=None, help="for a reproducible run")
    parser.add_argument("extra", nargs="*", help="more schemathesis options (after --)")
    options = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="ai-agent-schemathesis-")
    processes: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, PYTHONPATH=CHECKOUT, HOME=directory)
    env.pop("AI_AGENT_API_KEYS", None)
    try:
        upstreamLogPath = os.path.join(directory, "upstream.log")
        upstreamLog = open(upstreamLogPath, "wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "ai_agent.testing", "--port", "0"],
                cwd=directory,
                env=env,
                stdout=upstreamLog,
                stderr=subprocess.STDOUT,
            )
        )
        upstreamPort = announcedPort(
            upstreamLogPath,
            rb"fake upstream listening on http://127\.0\.0\.1:([0-9]+)/v1",
            processes[0],
        )
        with open(os.path.join(directory, ".ai-agent.json"), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "providers": {
                        "fake": {
                            "type": "openai",
                            "baseUrl": f"http://127.0.0.1:{upstreamPort}/v1",
                            "apiKey": "not-a-real-key",
                        }
                    }
                },
                f,
            )
        with open(os.path.join(directory, "agent.ai"), "w", encoding="utf-8") as f:
            f.write(AGENT)
        waitFor(f"http://127.0.0.1:{upstreamPort}/v1/models", processes[0])

        serverLogPath = os.path.join(directory, "server.log")
        serverLog = open(serverLogPath, "wb")
        processes.append(
            subprocess.Popen(
                [
                    *command("ai-agent"),
                    "--agent",
                    "agent.ai",
                    "--openai-completions",
                    "0",
                    "--shutdown-timeout",
                    "1",
                ],
                cwd=directory,
                env=env,
                stdout=serverLog,
                stderr=subprocess.STDOUT,
            )
        )
        serverPort = announcedPort(
            serverLogPath, rb"  API: http://127\.0\.0\.1:([0-9]+)/v1 ", processes[1]
        )
        base = f"http://127.0.0.1:{serverPort}"
        waitFor(f"{base}/health", processes[1])

        argv = [
            *command("schemathesis"),
            "run",
            f"{base}/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(options.max_examples),
            "--request-timeout",
            "20",
            # One worker: with two, schemathesis's threads parse Python
            # source at once (hypothesis describing its filters), which
            # CPython 3.11's ast module cannot do safely ("AST constructor
            # recursion depth mismatch", CPython gh-106905).
            "--workers",
            "1",
            "--suppress-health-check",
            "all",
            *([f"--seed={options.seed}"] if options.seed is not None else []),
            *options.extra,
        ]
        started = time.monotonic()
        try:
            result = subprocess.run(argv, cwd=directory, timeout=options.time_limit)
        except subprocess.TimeoutExpired:
            print(f"schemathesis did not finish in {options.time_limit:g}s", file=sys.stderr)
            return 1
        print(
            f"schemathesis finished in {time.monotonic() - started:.1f}s: exit {result.returncode}"
        )
        if result.returncode != 0:
            with open(
                os.path.join(directory, "server.log"), encoding="utf-8", errors="replace"
            ) as f:
                print("---- server log (last 60 lines) ----", file=sys.stderr)
                print("".join(f.readlines()[-60:]), file=sys.stderr)
        return result.returncode
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
