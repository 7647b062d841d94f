"""
Tests for L{ai_agent.config}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from twisted.trial.unittest import SynchronousTestCase

from ai_agent.config import (
    Config,
    McpServerConfig,
    Pricing,
    ProviderConfig,
    describeMissing,
    loadConfig,
    parseEnvFile,
)
from ai_agent.errors import ConfigurationError

SECRET = "sk-SENTINEL-7f3a9c"


class ParseEnvFileTests(SynchronousTestCase):
    """
    L{parseEnvFile}.
    """

    def test_plainAndExport(self) -> None:
        """
        C{KEY=value} and C{export KEY=value} lines set variables; blank lines
        and comments are skipped; spaces around the value are dropped.
        """
        text = "# keys\n\nA=1\nexport B=two words \n   # indented comment\nC =  3\nEMPTY=\n"
        self.assertEqual(
            parseEnvFile(text, ".ai-agent.env"),
            {"A": "1", "B": "two words", "C": "3", "EMPTY": ""},
        )

    def test_inlineComment(self) -> None:
        """
        An unquoted value ends at whitespace followed by C{#}; a C{#} inside a
        word is kept.
        """
        self.assertEqual(
            parseEnvFile("A=value # note\nB=a#b\n", "f"),
            {"A": "value", "B": "a#b"},
        )

    def test_singleQuotes(self) -> None:
        """
        Single-quoted values are literal: no escapes, C{#} kept.
        """
        self.assertEqual(
            parseEnvFile("A='x # y \\n'  # comment\n", "f"),
            {"A": "x # y \\n"},
        )

    def test_doubleQuotesEscapes(self) -> None:
        """
        Double-quoted values understand C{\\n}, C{\\"} and C{\\\\}.
        """
        self.assertEqual(
            parseEnvFile('A="line1\\nline2"\nB="say \\"hi\\""\nC="back\\\\slash" # c\n', "f"),
            {"A": "line1\nline2", "B": 'say "hi"', "C": "back\\slash"},
        )

    def test_laterWins(self) -> None:
        """
        A variable set twice keeps the later value.
        """
        self.assertEqual(parseEnvFile("A=1\nA=2\n", "f"), {"A": "2"})

    def test_badLines(self) -> None:
        """
        A malformed line is an error naming the file and the line number,
        without quoting the line (it may hold a secret).
        """
        for text in (
            f"A=1\n{SECRET}\n",
            f"A=1\n2BAD={SECRET}\n",
            f'A=1\nB="{SECRET}\n',
            f"A=1\nB='{SECRET}\n",
            f'A=1\nB="{SECRET}" trailing\n',
        ):
            error = self.assertRaises(ConfigurationError, parseEnvFile, text, "dir/.ai-agent.env")
            self.assertIn("dir/.ai-agent.env: line 2:", str(error))
            self.assertNotIn(SECRET, str(error))


class Files:
    """
    Write configuration files under a temporary root.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.cwd = self.path("project")
        self.home = self.path("home")
        os.makedirs(self.cwd)
        os.makedirs(self.home)

    def path(self, *segments: str) -> str:
        return os.path.join(self.root, *segments)

    def write(self, relative: str, content: str | Mapping[str, object]) -> str:
        """
        Write C{content} (JSON if not a string) at C{relative} under the root.
        """
        path = self.path(relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def load(
        self,
        environ: Mapping[str, str] | None = None,
        configFile: str | None = None,
        agentDirs: Sequence[str] = (),
        home: bool = True,
    ) -> Config:
        return loadConfig(
            configFile=configFile,
            cwd=self.cwd,
            agentDirs=agentDirs,
            home=self.home if home else None,
            environ=environ or {},
        )


class LoadConfigTestCase(SynchronousTestCase):
    """
    Base for tests that write configuration files.
    """

    def setUp(self) -> None:
        self.files = Files(self.mktemp())


class BuiltinProviderTests(LoadConfigTestCase):
    """
    The built-in providers.
    """

    def test_withoutConfig(self) -> None:
        """
        With no files at all, openai, anthropic and ollama exist with their
        default URLs; keys come from the environment.
        """
        config = self.files.load({"OPENAI_API_KEY": "k1", "ANTHROPIC_API_KEY": "k2"})
        self.assertEqual(list(config.providers), ["openai", "anthropic", "ollama", "local"])
        openai = config.providers["openai"]
        self.assertEqual(
            (openai.type, openai.baseUrl, openai.apiKey, openai.missingVariables),
            ("openai", "https://api.openai.com/v1", "k1", ()),
        )
        anthropic = config.providers["anthropic"]
        self.assertEqual(
            (anthropic.type, anthropic.baseUrl, anthropic.apiKey),
            ("anthropic", "https://api.anthropic.com", "k2"),
        )
        ollama = config.providers["ollama"]
        self.assertEqual(
            (ollama.type, ollama.baseUrl, ollama.apiKey, ollama.missingVariables),
            ("ollama", "http://localhost:11434/v1", None, ()),
        )
        self.assertEqual(config.sources, ())
        self.assertEqual((config.mcpServers, config.pricing, config.extra), ({}, {}, {}))

    def test_missingKeyRecorded(self) -> None:
        """
        An unset key variable of a built-in does not fail loading; it is
        recorded and described.
        """
        config = self.files.load({})
        openai = config.providers["openai"]
        self.assertIsNone(openai.apiKey)
        self.assertEqual(openai.missingVariables, ("OPENAI_API_KEY",))
        self.assertEqual(
            describeMissing(openai),
            "provider 'openai' needs the environment variable OPENAI_API_KEY, which is not set",
        )
        self.assertIsNone(describeMissing(config.providers["ollama"]))

    def test_keyFromAnyEnvFile(self) -> None:
        """
        A built-in's key variable may be set in any layer's env file, such as
        the one in the home directory, even with no JSON file beside it.
        """
        self.files.write("home/.ai-agent/ai-agent.env", "OPENAI_API_KEY=from-home\n")
        config = self.files.load({"OPENAI_API_KEY": "from-environ"})
        self.assertEqual(config.providers["openai"].apiKey, "from-home")

    def test_overrideBaseUrl(self) -> None:
        """
        A config entry named like a built-in merges over it: a new baseUrl
        (trailing slash removed) keeps the built-in type and key.
        """
        self.files.write(
            "project/.ai-agent.json", {"providers": {"openai": {"baseUrl": "http://gpu:8000/v1/"}}}
        )
        openai = self.files.load({"OPENAI_API_KEY": "k"}).providers["openai"]
        self.assertEqual(
            (openai.type, openai.baseUrl, openai.apiKey), ("openai", "http://gpu:8000/v1", "k")
        )

    def test_nullApiKeyClearsBuiltinKey(self) -> None:
        """
        C{"apiKey": null} removes the built-in key, so an unset
        C{OPENAI_API_KEY} is no longer reported missing.
        """
        self.files.write(
            "project/.ai-agent.json",
            {"providers": {"openai": {"baseUrl": "http://localhost:8080/v1", "apiKey": None}}},
        )
        openai = self.files.load({}).providers["openai"]
        self.assertEqual((openai.apiKey, openai.missingVariables), (None, ()))


class LayerTests(LoadConfigTestCase):
    """
    Which files are read, in which order, and how they merge.
    """

    def test_order(self) -> None:
        """
        C{--config}, then the working directory, then each agent directory,
        then the home file: the nearest layer wins and C{sources} lists the
        files read, nearest first.
        """
        files = self.files
        explicit = files.write("elsewhere/custom.json", {"extra": {"a": "explicit"}})
        cwd = files.write("project/.ai-agent.json", {"extra": {"a": "cwd", "b": "cwd"}})
        agents = files.write(
            "agents/.ai-agent.json", {"extra": {"a": "agents", "b": "agents", "c": "agents"}}
        )
        home = files.write(
            "home/.ai-agent/ai-agent.json",
            {"extra": {"a": "home", "b": "home", "c": "home", "d": "home"}},
        )
        config = files.load(configFile=explicit, agentDirs=[files.path("agents")])
        self.assertEqual(
            config.extra, {"extra": {"a": "explicit", "b": "cwd", "c": "agents", "d": "home"}}
        )
        self.assertEqual(config.sources, (explicit, cwd, agents, home))

    def test_agentDirsRelativeAndDeduplicated(self) -> None:
        """
        Agent directories are relative to the working directory; a directory
        already read (the working directory, or a repeat) is read once.
        """
        cwd = self.files.write("project/.ai-agent.json", {})
        agents = self.files.write("agents/.ai-agent.json", {})
        config = self.files.load(agentDirs=[".", "../agents", self.files.path("agents")])
        self.assertEqual(config.sources, (cwd, agents))

    def test_configFileRelative(self) -> None:
        """
        A relative C{--config} path is relative to the working directory, and
        the same file is not read again as the working directory's layer.
        """
        cwd = self.files.write("project/.ai-agent.json", {})
        config = self.files.load(configFile=".ai-agent.json")
        self.assertEqual(config.sources, (cwd,))

    def test_missingConfigFile(self) -> None:
        """
        An explicit C{--config} file that does not exist is an error naming
        it; the other layers are optional.
        """
        missing = self.files.path("nope.json")
        error = self.assertRaises(ConfigurationError, self.files.load, configFile=missing)
        self.assertEqual(str(error), f"{missing}: configuration file not found")
        self.assertEqual(self.files.load().sources, ())

    def test_deepMerge(self) -> None:
        """
        Objects merge key by key: a nearer layer setting only a provider's
        baseUrl keeps the farther layer's apiKey and headers.  Lists and
        scalars replace.
        """
        self.files.write(
            "home/.ai-agent/ai-agent.json",
            {
                "providers": {
                    "local": {
                        "type": "openai",
                        "baseUrl": "http://far/v1",
                        "apiKey": "far-key",
                        "headers": {"X-A": "1"},
                    }
                },
                "mcpServers": {"fs": {"command": "mcp-fs", "args": ["/far", "--ro"]}},
            },
        )
        self.files.write(
            "project/.ai-agent.json",
            {
                "providers": {"local": {"baseUrl": "http://near/v1", "headers": {"X-B": "2"}}},
                "mcpServers": {"fs": {"args": ["/near"]}},
            },
        )
        config = self.files.load()
        local = config.providers["local"]
        self.assertEqual(
            (local.type, local.baseUrl, local.apiKey, dict(local.headers)),
            ("openai", "http://near/v1", "far-key", {"X-A": "1", "X-B": "2"}),
        )
        self.assertEqual(config.mcpServers["fs"].args, ("/near",))

    def test_invalidJson(self) -> None:
        """
        Invalid JSON is an error naming the file, line and column.
        """
        path = self.files.write("project/.ai-agent.json", '{\n  "providers": {,\n}')
        error = self.assertRaises(ConfigurationError, self.files.load)
        self.assertTrue(str(error).startswith(f"{path}: invalid JSON at line 2, column 17"))

    def test_notAnObject(self) -> None:
        """
        A file holding a JSON array is an error naming the file.
        """
        path = self.files.write("project/.ai-agent.json", "[]")
        error = self.assertRaises(ConfigurationError, self.files.load)
        self.assertEqual(
            str(error), f"{path}: the configuration must be a JSON object, got an array"
        )

    def test_unreadableEnvFile(self) -> None:
        """
        A malformed env file is an error naming it, even without a JSON file
        beside it.
        """
        path = self.files.write("project/.ai-agent.env", "not a line\n")
        error = self.assertRaises(ConfigurationError, self.files.load)
        self.assertEqual(str(error), f"{path}: line 1: expected KEY=value")


class ExpansionTests(LoadConfigTestCase):
    """
    C{${VAR}} placeholders.
    """

    def test_layerEnvBeforeEnviron(self) -> None:
        """
        A layer's own env file is consulted before the process environment.
        """
        self.files.write(
            "project/.ai-agent.json",
            {"providers": {"local": {"type": "openai", "baseUrl": "${URL}", "apiKey": "${KEY}"}}},
        )
        self.files.write("project/.ai-agent.env", "KEY=from-file\n")
        local = self.files.load({"KEY": "from-environ", "URL": "http://e/v1"}).providers["local"]
        self.assertEqual((local.apiKey, local.baseUrl), ("from-file", "http://e/v1"))

    def test_envFileScopedToLayer(self) -> None:
        """
        A variable in one layer's env file is not seen by another layer's
        JSON file.
        """
        self.files.write("project/.ai-agent.env", "KEY=project-only\n")
        self.files.write(
            "home/.ai-agent/ai-agent.json",
            {"providers": {"local": {"type": "openai", "baseUrl": "http://h", "apiKey": "${KEY}"}}},
        )
        local = self.files.load({}).providers["local"]
        self.assertEqual((local.apiKey, local.missingVariables), (None, ("KEY",)))

    def test_explicitConfigSiblingEnv(self) -> None:
        """
        An explicit C{--config} file reads the C{.ai-agent.env} in its own
        directory.
        """
        path = self.files.write(
            "elsewhere/custom.json",
            {"providers": {"local": {"type": "openai", "baseUrl": "http://h", "apiKey": "${K}"}}},
        )
        self.files.write("elsewhere/.ai-agent.env", "K=sibling\n")
        self.assertEqual(self.files.load(configFile=path).providers["local"].apiKey, "sibling")

    def test_default(self) -> None:
        """
        C{${VAR:-default}} uses the default when VAR is unset or empty, and
        VAR when it is set.
        """
        self.files.write(
            "project/.ai-agent.json",
            {
                "providers": {
                    "local": {"type": "openai", "baseUrl": "http://${HOST:-localhost}:8000/v1"}
                },
                "mcpServers": {"s": {"url": "http://${MCP_HOST:-mcp}/mcp"}},
            },
        )
        config = self.files.load({"HOST": "", "MCP_HOST": "tools"})
        self.assertEqual(config.providers["local"].baseUrl, "http://localhost:8000/v1")
        self.assertEqual(config.providers["local"].missingVariables, ())
        self.assertEqual(config.mcpServers["s"].url, "http://tools/mcp")

    def test_missingNotFatal(self) -> None:
        """
        Unset variables never stop loading: the entry records each name once,
        in order, and the key is dropped rather than half-filled.
        """
        self.files.write(
            "project/.ai-agent.json",
            {
                "providers": {
                    "local": {
                        "type": "openai",
                        "baseUrl": "http://h/v1",
                        "apiKey": "${A}${B}",
                        "headers": {"X-Org": "${B}", "X-Set": "${SET}"},
                    }
                }
            },
        )
        local = self.files.load({"A": SECRET, "SET": "yes"}).providers["local"]
        self.assertEqual(local.missingVariables, ("B",))
        self.assertIsNone(local.apiKey)
        self.assertEqual(local.headers["X-Set"], "yes")
        self.assertEqual(
            describeMissing(local),
            "provider 'local' needs the environment variable B, which is not set",
        )

    def test_missingMcpVariables(self) -> None:
        """
        MCP servers record their unset variables too, described as MCP
        servers.
        """
        self.files.write(
            "project/.ai-agent.json",
            {"mcpServers": {"gh": {"command": "gh-mcp", "env": {"T": "${GH_TOKEN}", "U": "${U}"}}}},
        )
        server = self.files.load({}).mcpServers["gh"]
        self.assertEqual(server.missingVariables, ("GH_TOKEN", "U"))
        self.assertEqual(
            describeMissing(server),
            "MCP server 'gh' needs the environment variables GH_TOKEN and U, which are not set",
        )

    def test_nearerLayerHidesMissing(self) -> None:
        """
        A variable missing in a farther layer's value does not count when a
        nearer layer replaces that value.
        """
        self.files.write(
            "home/.ai-agent/ai-agent.json",
            {"providers": {"local": {"type": "openai", "baseUrl": "http://h", "apiKey": "${NO}"}}},
        )
        self.files.write("project/.ai-agent.json", {"providers": {"local": {"apiKey": "literal"}}})
        local = self.files.load({}).providers["local"]
        self.assertEqual((local.apiKey, local.missingVariables), ("literal", ()))

    def test_extraSections(self) -> None:
        """
        Unknown top-level sections are kept, merged and expanded; a
        placeholder with an unset variable stays as written there.
        """
        self.files.write(
            "project/.ai-agent.json", {"defaults": {"who": "${WHO}", "unset": "${NOPE}"}}
        )
        self.files.write("home/.ai-agent/ai-agent.json", {"defaults": {"far": 1}, "queues": [1]})
        config = self.files.load({"WHO": "me"})
        self.assertEqual(
            config.extra,
            {"defaults": {"who": "me", "unset": "${NOPE}", "far": 1}, "queues": [1]},
        )


class SectionTests(LoadConfigTestCase):
    """
    The C{providers}, C{mcpServers} and C{pricing} sections.
    """

    def write(self, config: Mapping[str, object]) -> str:
        return self.files.write("project/.ai-agent.json", config)

    def assertConfigError(self, config: Mapping[str, object], message: str) -> None:
        """
        Loading C{config} fails with C{"<file>: " + message}.
        """
        path = self.write(config)
        error = self.assertRaises(ConfigurationError, self.files.load)
        self.assertEqual(str(error), f"{path}: {message}")

    def test_providerTypes(self) -> None:
        """
        A provider's type is given, or taken from its name when that is a
        built-in type; C{openai-compatible} means C{openai}; the baseUrl
        defaults to the type's.
        """
        self.write(
            {
                "providers": {
                    "vllm": {"type": "openai-compatible", "baseUrl": "http://gpu:8000/v1"},
                    "claude": {"type": "anthropic", "apiKey": "k"},
                    "ollama": {"baseUrl": "http://box:11434/v1"},
                }
            }
        )
        providers = self.files.load().providers
        self.assertEqual(
            providers["vllm"],
            ProviderConfig(name="vllm", type="openai", baseUrl="http://gpu:8000/v1"),
        )
        self.assertEqual(
            (providers["claude"].type, providers["claude"].baseUrl),
            ("anthropic", "https://api.anthropic.com"),
        )
        self.assertEqual(providers["ollama"].baseUrl, "http://box:11434/v1")

    def test_providerErrors(self) -> None:
        """
        Provider errors name the file and the key path.
        """
        self.assertConfigError(
            {"providers": {"mine": {"baseUrl": "http://h"}}},
            "providers.mine.type is required (one of anthropic, local, ollama, openai)",
        )
        self.assertConfigError(
            {"providers": {"local": {"type": "opneai"}}},
            "providers.local.type must be one of anthropic, local, ollama, openai, got 'opneai'",
        )
        self.assertConfigError(
            {"providers": {"local": {"type": "openai", "baseUrl": 8000}}},
            "providers.local.baseUrl must be a string, got a number",
        )
        self.assertConfigError(
            {"providers": {"local": {"type": "openai", "baseURL": "http://h"}}},
            "providers.local: unknown key 'baseURL' (allowed: apiKey, baseUrl, contextSize,"
            " headers, models, parallel, threads, type); did you mean 'baseUrl'?",
        )
        self.assertConfigError(
            {"providers": {"local": {"type": "openai", "headers": {"X": 1}}}},
            "providers.local.headers.X must be a string, got a number",
        )
        self.assertConfigError(
            {"providers": {"local": {"type": "openai", "baseUrl": "gpu:8000"}}},
            "providers.local.baseUrl must be an http:// or https:// URL",
        )
        self.assertConfigError(
            {"providers": {"local": "http://h"}}, "providers.local must be an object, got a string"
        )
        self.assertConfigError({"providers": []}, "providers must be an object, got an array")
        self.assertConfigError(
            {"providers": {"a/b": {}}},
            "provider name 'a/b' must be letters, digits, '.', '_' or '-'",
        )

    def test_mcpServers(self) -> None:
        """
        MCP servers are stdio (inferred from C{command}) or http (inferred
        from C{url}).
        """
        self.write(
            {
                "mcpServers": {
                    "fs": {"command": "mcp-fs", "args": ["/data"], "env": {"DEBUG": "1"}},
                    "web": {"url": "https://tools.example/mcp", "headers": {"X": "y"}},
                    "explicit": {"type": "stdio", "command": "x"},
                }
            }
        )
        servers = self.files.load().mcpServers
        self.assertEqual(
            servers["fs"],
            McpServerConfig(
                name="fs", type="stdio", command="mcp-fs", args=("/data",), env={"DEBUG": "1"}
            ),
        )
        self.assertEqual(
            servers["web"],
            McpServerConfig(
                name="web", type="http", url="https://tools.example/mcp", headers={"X": "y"}
            ),
        )
        self.assertEqual(servers["explicit"].type, "stdio")

    def test_mcpErrors(self) -> None:
        """
        MCP server errors name the file and the key path.
        """
        self.assertConfigError(
            {"mcpServers": {"my server": {"command": "x"}}},
            "MCP server name 'my server' must be letters, digits, '_' or '-'",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {"command": "x", "args": "/data"}}},
            "mcpServers.fs.args must be an array of strings, got a string",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {"command": "x", "args": [1]}}},
            "mcpServers.fs.args must be an array of strings, got a number",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {"command": "x", "env": {"A": True}}}},
            "mcpServers.fs.env.A must be a string, got a boolean",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {"type": "sse", "url": "http://h"}}},
            "mcpServers.fs.type must be one of http, stdio, got 'sse'",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {}}},
            "mcpServers.fs needs 'command' (a stdio server) or 'url' (an http server)",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {"command": "x", "url": "http://h"}}},
            "mcpServers.fs has both 'command' and 'url'; set 'type' to stdio or http",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {"type": "http", "command": "x"}}},
            "mcpServers.fs.url is required for a http server",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {"type": "http", "url": "http://h", "command": "x"}}},
            "mcpServers.fs.command does not apply to a http server",
        )
        self.assertConfigError(
            {"mcpServers": {"fs": {"command": "x", "cwd": "/"}}},
            "mcpServers.fs: unknown key 'cwd'"
            " (allowed: args, cache, command, env, headers, toolsCache, type, url)",
        )

    def test_pricing(self) -> None:
        """
        Pricing is keyed by C{provider/model}, with non-negative prompt and
        completion prices.
        """
        self.write({"pricing": {"openai/gpt-4.1": {"prompt": 2, "completion": 8.5}}})
        self.assertEqual(
            self.files.load().pricing, {"openai/gpt-4.1": Pricing(prompt=2.0, completion=8.5)}
        )

    def test_pricingErrors(self) -> None:
        """
        Pricing errors name the file and the key path.
        """
        self.assertConfigError(
            {"pricing": {"gpt-4o": {"prompt": 1, "completion": 1}}},
            "pricing key 'gpt-4o' must be 'provider/model'",
        )
        self.assertConfigError(
            {"pricing": {"openai/gpt-4o": {"prompt": -1, "completion": 1}}},
            'pricing["openai/gpt-4o"].prompt must be a non-negative number '
            "(USD per million tokens)",
        )
        self.assertConfigError(
            {"pricing": {"openai/gpt-4o": {"prompt": "1", "completion": 1}}},
            'pricing["openai/gpt-4o"].prompt must be a non-negative number '
            "(USD per million tokens)",
        )
        self.assertConfigError(
            {"pricing": {"openai/gpt-4o": {"prompt": 1}}},
            'pricing["openai/gpt-4o"].completion is required',
        )


class SecretTests(LoadConfigTestCase):
    """
    Secrets stay out of messages and reprs.
    """

    def test_reprHidesSecrets(self) -> None:
        """
        No repr of the loaded configuration contains a key or header value.
        """
        self.files.write(
            "project/.ai-agent.json",
            {
                "providers": {
                    "local": {
                        "type": "openai",
                        "baseUrl": "http://h/v1",
                        "apiKey": "${KEY}",
                        "headers": {"Authorization": f"Bearer {SECRET}"},
                    }
                },
                "mcpServers": {
                    "gh": {"command": "gh", "env": {"TOKEN": "${KEY}", "MISSING": "${NO}"}},
                    "web": {"url": "http://h", "headers": {"Authorization": "${KEY}"}},
                },
            },
        )
        config = self.files.load({"KEY": SECRET, "OPENAI_API_KEY": SECRET})
        self.assertEqual(config.providers["local"].apiKey, SECRET)
        self.assertNotIn(SECRET, repr(config))
        self.assertNotIn(SECRET, str(config))
        entries: list[ProviderConfig | McpServerConfig] = [
            *config.providers.values(),
            *config.mcpServers.values(),
        ]
        for entry in entries:
            self.assertNotIn(SECRET, repr(entry))
            self.assertNotIn(SECRET, describeMissing(entry) or "")

    def test_errorsHideSecrets(self) -> None:
        """
        No configuration error quotes a configured value.
        """
        broken: list[Mapping[str, object]] = [
            {"providers": {"local": {"type": "openai", "baseUrl": SECRET}}},
            {"providers": {"local": {"apiKey": SECRET}}},
            {"providers": {"local": {"type": "openai", "apiKey": [SECRET]}}},
            {"mcpServers": {"fs": {"type": "http", "url": "http://h", "env": {"K": SECRET}}}},
            {"mcpServers": {"fs": {"command": SECRET, "url": SECRET}}},
            {"pricing": {"a/b": {"prompt": SECRET, "completion": 1}}},
        ]
        for config in broken:
            self.files.write("project/.ai-agent.json", config)
            error = self.assertRaises(ConfigurationError, self.files.load)
            self.assertNotIn(SECRET, str(error))
        self.files.write("project/.ai-agent.json", '{"providers": {"x": "' + SECRET + '" 1}}')
        error = self.assertRaises(ConfigurationError, self.files.load)
        self.assertNotIn(SECRET, str(error))
