"""
Credentials in a provider's or an MCP server's URL: refused when the
configuration loads, by a message that does not show them.

From the second security and reliability round (issue 11): each hole the
hostile campaign found, pinned against a real server on 127.0.0.1 with an
upstream of the test's own where the upstream misbehaves.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from tests._misbehaving import (
    agentText,
)


class UserinfoTests(TestCase):
    """
    Item 2: credentials in a provider's or an MCP server's URL are refused
    when the configuration loads, by a message that does not show them.
    """

    timeout = 60

    async def test_refusedWithoutEcho(self) -> None:
        """
        The real command exits with an error naming the key path for a
        C{baseUrl} or an MCP C{url} of the form C{http://user:pass@host};
        neither the password nor the user name appears in its output.
        """
        import os

        from tests._process import childEnvironment, command, run

        for section in ("providers", "mcpServers"):
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            if section == "providers":
                config: dict[str, Any] = {
                    "providers": {
                        "p": {
                            "type": "openai",
                            "baseUrl": "http://scott:tiger-pass-9F3@127.0.0.1:9/v1",
                        }
                    }
                }
                where = "providers.p.baseUrl"
            else:
                config = {
                    "providers": {"p": {"type": "openai", "baseUrl": "http://127.0.0.1:9/v1"}},
                    "mcpServers": {"m": {"url": "http://scott:tiger-pass-9F3@127.0.0.1:9/mcp"}},
                }
                where = "mcpServers.m.url"
            with open(os.path.join(directory, ".ai-agent.json"), "w") as f:
                json.dump(config, f)
            with open(os.path.join(directory, "a.ai"), "w") as f:
                f.write(agentText("p/model"))
            out, err, code = await run(
                [*command("ai-agent"), "--agent", "a.ai", "--openai-completions", "tcp:0"],
                directory,
                childEnvironment(HOME=directory),
            )
            output = out + err
            self.assertNotEqual(code, 0, output)
            self.assertIn(where.encode(), output)
            self.assertIn(b"user name or password", output)
            self.assertNotIn(b"tiger-pass-9F3", output)
            self.assertNotIn(b"scott", output)
