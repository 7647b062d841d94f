"""
Tests for L{ai_agent.agentfile}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from ai_agent.agentfile import (
    AgentSpec,
    OutputSpec,
    RouteTarget,
    ToolOutputSpec,
    loadAgent,
    parseAgent,
    parseCacheTTL,
    parseDuration,
)
from ai_agent.errors import ConfigurationError

PATH = "agents/chat.ai"


def agent(frontmatter: str, body: str = "You help.", path: str = PATH) -> AgentSpec:
    """
    Parse an agent file made of C{frontmatter} lines and C{body}.
    """
    return parseAgent(f"---\n{frontmatter}\n---\n{body}", path)


class LayoutTests(SynchronousTestCase):
    """
    The file layout: shebang, frontmatter, body.
    """

    def test_shebangFrontmatterBody(self) -> None:
        """
        A shebang line is skipped, the frontmatter gives the keys, and the body
        with its surrounding blank lines removed is the prompt.
        """
        spec = parseAgent(
            "#!/usr/bin/env ai-agent\n---\nmodels: openai/gpt-4o\ndescription: Chats.\n---\n"
            "\n\n  Be brief.\n\n  Be kind.\n\n\n",
            PATH,
        )
        self.assertEqual(spec.models, ("openai/gpt-4o",))
        self.assertEqual(spec.description, "Chats.")
        self.assertEqual(spec.prompt, "  Be brief.\n\n  Be kind.")
        self.assertEqual(spec.path, os.path.abspath(PATH))

    def test_crlf(self) -> None:
        """
        Windows line endings are accepted.
        """
        spec = parseAgent("---\r\nmodels: a/b\r\n---\r\nHello\r\n", PATH)
        self.assertEqual(spec.models, ("a/b",))
        self.assertEqual(spec.prompt, "Hello")

    def test_defaults(self) -> None:
        """
        Keys not given take the documented defaults.
        """
        spec = agent("models: a/b")
        self.assertEqual(
            (spec.maxTurns, spec.maxRetries, spec.llmTimeout, spec.toolTimeout),
            (10, 3, 120.0, 60.0),
        )
        self.assertEqual(spec.toolResponseMaxBytes, 12288)
        self.assertEqual(spec.output, OutputSpec("markdown", None))
        self.assertEqual((spec.tools, spec.agents), ((), ()))
        self.assertIsNone(spec.temperature)
        self.assertIsNone(spec.reasoning)

    def test_emptyBody(self) -> None:
        """
        An agent with nothing after the frontmatter has an empty prompt.
        """
        self.assertEqual(parseAgent("---\nmodels: a/b\n---\n", PATH).prompt, "")

    def test_noFrontmatter(self) -> None:
        """
        A file without frontmatter is an error naming the file.
        """
        error = self.assertRaises(ConfigurationError, parseAgent, "Just a prompt.", PATH)
        self.assertIn(f"{PATH}: no YAML frontmatter", str(error))

    def test_frontmatterNotAtStart(self) -> None:
        """
        Frontmatter must start on the first line, or the second after a shebang.
        """
        self.assertRaises(ConfigurationError, parseAgent, "\n---\nmodels: a/b\n---\n", PATH)
        self.assertRaises(
            ConfigurationError, parseAgent, "#!/bin/x\n\n---\nmodels: a/b\n---\n", PATH
        )

    def test_unclosedFrontmatter(self) -> None:
        """
        Frontmatter without a closing C{---} line is an error.
        """
        error = self.assertRaises(ConfigurationError, parseAgent, "---\nmodels: a/b\n", PATH)
        self.assertIn("no closing '---'", str(error))

    def test_emptyFrontmatterNeedsModels(self) -> None:
        """
        Empty frontmatter parses but fails for lack of C{models}.
        """
        error = self.assertRaises(ConfigurationError, parseAgent, "---\n---\nHi", PATH)
        self.assertIn(f"{PATH}: 'models' is required", str(error))

    def test_frontmatterNotMapping(self) -> None:
        """
        Frontmatter that is a YAML list rather than a mapping is an error.
        """
        error = self.assertRaises(ConfigurationError, agent, "- a/b")
        self.assertIn("must be a mapping", str(error))

    def test_badYamlNamesLine(self) -> None:
        """
        A YAML syntax error names the file and the line of the file it is on
        (counting the shebang and the opening C{---}).
        """
        text = "#!/usr/bin/env ai-agent\n---\nmodels: a/b\ndescription: x\n  usage: y\n---\n"
        error = self.assertRaises(ConfigurationError, parseAgent, text, PATH)
        self.assertIn(f"{PATH}: invalid YAML frontmatter at line 5", str(error))

    def test_duplicateKey(self) -> None:
        """
        A key given twice is an error rather than the last one silently winning.
        """
        error = self.assertRaises(ConfigurationError, agent, "models: a/b\nmodels: c/d")
        self.assertIn("line 3", str(error))
        self.assertIn("duplicate key 'models'", str(error))


class KeyTests(SynchronousTestCase):
    """
    Each frontmatter key's accepted values and errors.
    """

    def assertKeyError(self, frontmatter: str, key: str, got: str | None = None) -> str:
        """
        Parsing C{models: a/b} plus C{frontmatter} fails with a message naming
        the file and C{key} (and C{got}, the value found, if given).
        """
        error = self.assertRaises(ConfigurationError, agent, f"models: a/b\n{frontmatter}")
        message = str(error)
        self.assertTrue(message.startswith(f"{PATH}: '{key}' "), message)
        if got is not None:
            self.assertTrue(message.endswith(f"got {got}"), message)
        return message

    def test_unknownKey(self) -> None:
        """
        An unknown key is named, and the allowed keys are listed.
        """
        error = self.assertRaises(ConfigurationError, agent, "modle: a/b")
        self.assertIn(
            f"{PATH}: unknown frontmatter key 'modle' (allowed: advisors, agents,", str(error)
        )
        self.assertIn("models", str(error))

    def test_runtimeOnlyKeys(self) -> None:
        """
        The runtime-only keys of the TypeScript original get advice to use
        command-line flags instead.
        """
        for key in ("traceLLM", "traceMCP", "verbose", "accounting", "save", "load", "stream"):
            error = self.assertRaises(ConfigurationError, agent, f"models: a/b\n{key}: true")
            self.assertIn(f"'{key}' is a runtime option, use command-line flags", str(error))
        error = self.assertRaises(ConfigurationError, agent, "models: a/b\ntargets: [x]")
        self.assertIn("runtime option", str(error))

    def test_nonStringKey(self) -> None:
        """
        A frontmatter key that YAML reads as a number is an error.
        """
        error = self.assertRaises(ConfigurationError, agent, "models: a/b\n1: x")
        self.assertIn("keys must be strings", str(error))

    def test_modelsString(self) -> None:
        """
        C{models} may be one C{provider/model} string; the model part may
        itself contain slashes.
        """
        self.assertEqual(agent("models: openrouter/meta/llama").models, ("openrouter/meta/llama",))

    def test_modelsList(self) -> None:
        """
        A list of models keeps its order: the fallback order.
        """
        spec = agent("models:\n  - ollama/qwen\n  - openai/gpt-4o")
        self.assertEqual(spec.models, ("ollama/qwen", "openai/gpt-4o"))

    def test_modelsCommaString(self) -> None:
        """
        A comma-separated string is a list; spaces and empty items are dropped.
        """
        spec = agent("models: 'ollama/qwen, openai/gpt-4o,'")
        self.assertEqual(spec.models, ("ollama/qwen", "openai/gpt-4o"))

    def test_modelsInvalid(self) -> None:
        """
        Each model needs a non-empty provider and model; at least one model is
        required; a non-string entry is a type error.
        """
        error = self.assertRaises(ConfigurationError, agent, "models: gpt-4o")
        self.assertIn("'models' entries must look like 'provider/model', got 'gpt-4o'", str(error))
        self.assertRaises(ConfigurationError, agent, "models: openai/")
        self.assertRaises(ConfigurationError, agent, "models: /gpt-4o")
        error = self.assertRaises(ConfigurationError, agent, "models: []")
        self.assertIn("at least one", str(error))
        error = self.assertRaises(ConfigurationError, agent, "models: [a/b, 3]")
        self.assertIn("'models' must be a list of strings, got 3", str(error))
        error = self.assertRaises(ConfigurationError, agent, "models: {a: b}")
        self.assertIn("'models' must be a string or a list of strings", str(error))

    def test_strings(self) -> None:
        """
        C{description} and C{usage} are strings; anything else is named.
        """
        spec = agent("models: a/b\ndescription: Finds things.\nusage: 'Ask: a question'")
        self.assertEqual((spec.description, spec.usage), ("Finds things.", "Ask: a question"))
        self.assertKeyError("description: [x]", "description", "a list")
        self.assertKeyError("usage: 12", "usage", "12")
        self.assertKeyError("usage:", "usage", "null")

    def test_toolName(self) -> None:
        """
        C{toolName} names the agent and must be a safe identifier that is not
        reserved.
        """
        self.assertEqual(agent("models: a/b\ntoolName: web-search_2").name, "web-search_2")
        self.assertKeyError("toolName: web search", "toolName", "'web search'")
        self.assertKeyError("toolName: 5", "toolName", "5")
        for reserved in ("final_report", "task_status", "batch", "tool_output"):
            message = self.assertKeyError(f"toolName: {reserved}", "toolName")
            self.assertIn("reserved", message)

    def test_tools(self) -> None:
        """
        C{tools} is a list or a comma string of MCP server names.
        """
        self.assertEqual(agent("models: a/b\ntools: [github, fs]").tools, ("github", "fs"))
        self.assertEqual(agent("models: a/b\ntools: github, fs").tools, ("github", "fs"))
        self.assertKeyError("tools: 7", "tools", "7")
        self.assertKeyError("tools: [my server]", "tools", "'my server'")

    def test_agentsResolvedRelativeToFile(self) -> None:
        """
        Sub-agent paths are made absolute relative to the agent file's
        directory; absolute paths and names without C{.ai} are kept.
        """
        base = os.path.abspath("agents")
        spec = agent("models: a/b\nagents: [helpers/search.ai, ../shared/critic, /opt/x.ai]")
        self.assertEqual(
            spec.agents,
            (
                os.path.join(base, "helpers", "search.ai"),
                os.path.join(os.path.dirname(base), "shared", "critic"),
                "/opt/x.ai",
            ),
        )
        spec = agent("models: a/b\nagents: one.ai, two.ai")
        self.assertEqual(spec.agents, (os.path.join(base, "one.ai"), os.path.join(base, "two.ai")))
        self.assertKeyError("agents: {a: 1}", "agents", "a mapping")

    def test_positiveIntegers(self) -> None:
        """
        C{maxTurns}, C{maxRetries}, C{maxOutputTokens} and
        C{toolResponseMaxBytes} take integers >= 1; booleans, strings, floats
        and zero are rejected by name.
        """
        spec = agent(
            "models: a/b\nmaxTurns: 4\nmaxRetries: 1\nmaxOutputTokens: 2048\n"
            "toolResponseMaxBytes: 100"
        )
        self.assertEqual(
            (spec.maxTurns, spec.maxRetries, spec.maxOutputTokens, spec.toolResponseMaxBytes),
            (4, 1, 2048, 100),
        )
        for key in ("maxTurns", "maxRetries", "maxOutputTokens", "toolResponseMaxBytes"):
            self.assertKeyError(f"{key}: ten", key, "'ten'")
            self.assertKeyError(f"{key}: true", key, "true")
            self.assertKeyError(f"{key}: 0", key, "0")
            self.assertKeyError(f"{key}: 2.5", key, "2.5")
        message = self.assertKeyError("maxTurns: ten", "maxTurns")
        self.assertEqual(message, f"{PATH}: 'maxTurns' must be an integer >= 1, got 'ten'")

    def test_temperatureAndTopP(self) -> None:
        """
        C{temperature} is a number from 0 to 2 and C{topP} from 0 to 1;
        integers are accepted, booleans and out-of-range values are not.
        """
        spec = agent("models: a/b\ntemperature: 0.2\ntopP: 1")
        self.assertEqual((spec.temperature, spec.topP), (0.2, 1.0))
        self.assertIsInstance(spec.topP, float)
        self.assertKeyError("temperature: 2.5", "temperature", "2.5")
        self.assertKeyError("temperature: true", "temperature", "true")
        self.assertKeyError("temperature: hot", "temperature", "'hot'")
        self.assertKeyError("topP: 1.1", "topP", "1.1")
        self.assertKeyError("topP: -0.1", "topP", "-0.1")
        self.assertKeyError("topP: .nan", "topP")

    def test_reasoning(self) -> None:
        """
        C{reasoning} takes a level; null and C{unset} mean C{none};
        C{default} and C{inherit} mean the provider's default (L{None}).
        """
        cases = {
            "high": "high",
            "Medium": "medium",
            "minimal": "minimal",
            "none": "none",
            "unset": "none",
            "null": "none",
            "default": None,
            "inherit": None,
        }
        for written, expected in cases.items():
            self.assertEqual(agent(f"models: a/b\nreasoning: {written}").reasoning, expected)
        self.assertKeyError("reasoning: extreme", "reasoning", "'extreme'")
        self.assertKeyError("reasoning: true", "reasoning", "true")

    def test_durations(self) -> None:
        """
        Timeouts are milliseconds as a number or bare digit string, or a
        string with a unit; they are stored in seconds.
        """
        cases = {
            "1500": 1.5,
            "'2500'": 2.5,
            "500ms": 0.5,
            "5s": 5.0,
            "2m": 120.0,
            "1h": 3600.0,
            "1.5s": 1.5,
        }
        for written, seconds in cases.items():
            spec = agent(f"models: a/b\nllmTimeout: {written}\ntoolTimeout: {written}")
            self.assertEqual((spec.llmTimeout, spec.toolTimeout), (seconds, seconds))
        for key in ("llmTimeout", "toolTimeout"):
            self.assertKeyError(f"{key}: 0", key, "0")
            self.assertKeyError(f"{key}: soon", key, "'soon'")
            self.assertKeyError(f"{key}: 5x", key, "'5x'")
            self.assertKeyError(f"{key}: -5s", key, "'-5s'")
            self.assertKeyError(f"{key}: true", key, "true")

    def test_parseDuration(self) -> None:
        """
        L{parseDuration} returns seconds, or L{None} for anything that is not
        a positive duration.
        """
        self.assertEqual(parseDuration(250), 0.25)
        self.assertEqual(parseDuration(" 3 s "), 3.0)
        self.assertIsNone(parseDuration(False))
        self.assertIsNone(parseDuration(None))
        self.assertIsNone(parseDuration("0s"))
        self.assertIsNone(parseDuration(float("inf")))


class OutputTests(SynchronousTestCase):
    """
    The C{output} key.
    """

    def test_format(self) -> None:
        """
        C{output.format} selects markdown, text or json (any case).
        """
        for written in ("markdown", "text", "JSON"):
            spec = agent(f"models: a/b\noutput:\n  format: {written}")
            self.assertEqual(spec.output, OutputSpec(written.lower(), None))

    def test_schemaMapping(self) -> None:
        """
        A schema written as YAML is kept as a mapping.
        """
        spec = agent(
            "models: a/b\noutput:\n  format: json\n  schema:\n    type: object\n"
            "    required: [answer]"
        )
        self.assertEqual(spec.output.schema, {"type": "object", "required": ["answer"]})

    def test_schemaJsonString(self) -> None:
        """
        A schema given as a string of JSON is parsed; with a schema, the
        format defaults to json.
        """
        spec = agent('models: a/b\noutput:\n  schema: \'{"type": "object", "properties": {}}\'')
        self.assertEqual(spec.output, OutputSpec("json", {"type": "object", "properties": {}}))

    def test_schemaYamlString(self) -> None:
        """
        A schema given as a block string of YAML is parsed.
        """
        spec = agent("models: a/b\noutput:\n  format: json\n  schema: |\n    type: object\n")
        self.assertEqual(spec.output.schema, {"type": "object"})

    def test_errors(self) -> None:
        """
        Unknown keys inside C{output}, a bad format, a schema that is not a
        mapping, and a schema with a non-json format are errors naming the key.
        """
        error = self.assertRaises(
            ConfigurationError, agent, "models: a/b\noutput:\n  format: json\n  schemaRef: x.json"
        )
        self.assertIn("unknown key 'schemaRef' in 'output'", str(error))
        error = self.assertRaises(ConfigurationError, agent, "models: a/b\noutput:\n  format: xml")
        self.assertIn("'output.format' must be one of markdown, text, json", str(error))
        error = self.assertRaises(ConfigurationError, agent, "models: a/b\noutput:\n  schema: [1]")
        self.assertIn("'output.schema' must be", str(error))
        error = self.assertRaises(ConfigurationError, agent, "models: a/b\noutput:\n  schema: '3'")
        self.assertIn("'output.schema' must be", str(error))
        error = self.assertRaises(
            ConfigurationError, agent, "models: a/b\noutput:\n  format: text\n  schema: {}"
        )
        self.assertIn("'output.schema' needs 'output.format' json", str(error))
        error = self.assertRaises(ConfigurationError, agent, "models: a/b\noutput: json")
        self.assertIn("'output' must be a mapping", str(error))


class NameTests(SynchronousTestCase):
    """
    The agent's name.
    """

    def test_toolNameWins(self) -> None:
        """
        C{toolName} is the name when set.
        """
        spec = agent("models: a/b\ntoolName: helper", path="x/chat.ai")
        self.assertEqual((spec.name, spec.toolName), ("helper", "helper"))

    def test_fileStem(self) -> None:
        """
        Without C{toolName}, the name is the file name without C{.ai}, in any
        case; other suffixes are kept.
        """
        self.assertEqual(agent("models: a/b", path="x/chat.ai").name, "chat")
        self.assertEqual(agent("models: a/b", path="x/Chat.AI").name, "Chat")
        self.assertEqual(agent("models: a/b", path="x/chat.md").name, "chat.md")
        self.assertEqual(agent("models: a/b", path="x/research").name, "research")

    def test_emptyStem(self) -> None:
        """
        A file named just C{.ai} gets the name C{agent}.
        """
        self.assertEqual(agent("models: a/b", path="x/.ai").name, "agent")


class LoadAgentTests(SynchronousTestCase):
    """
    L{loadAgent} reads files.
    """

    def test_load(self) -> None:
        """
        A file is read as UTF-8 and parsed with its path.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "writer.ai")
        with open(path, "w", encoding="utf-8") as f:
            f.write("---\nmodels: a/b\nagents: [critic.ai]\n---\nÉcris bien.\n")
        spec = loadAgent(path)
        self.assertEqual(spec.prompt, "Écris bien.")
        self.assertEqual(spec.name, "writer")
        self.assertEqual(spec.path, os.path.abspath(path))
        self.assertEqual(spec.agents, (os.path.join(os.path.abspath(directory), "critic.ai"),))

    def test_missingFile(self) -> None:
        """
        A missing file is a L{ConfigurationError} naming the path.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigurationError, loadAgent, path)
        self.assertIn(f"{path}: cannot read agent file", str(error))

    def test_notUtf8(self) -> None:
        """
        A file that is not UTF-8 is a L{ConfigurationError} naming the path.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"---\nmodels: a/b\n---\n\xff\xfe\n")
        error = self.assertRaises(ConfigurationError, loadAgent, path)
        self.assertIn(f"{path}: agent file is not valid UTF-8", str(error))


class CachingTests(SynchronousTestCase):
    """
    C{caching} turns prompt caching on (C{full}, the default) or off.
    """

    def test_values(self) -> None:
        """
        C{full} and C{none} (any case) are taken; anything else is refused
        by name.
        """
        self.assertTrue(agent("models: a/b").caching)
        self.assertTrue(agent("models: a/b\ncaching: Full").caching)
        self.assertFalse(agent("models: a/b\ncaching: none").caching)
        with self.assertRaises(ConfigurationError) as caught:
            agent("models: a/b\ncaching: sometimes")
        self.assertIn("'caching'", str(caught.exception))


class ParityKeyTests(SynchronousTestCase):
    """
    C{toolOutput}, C{advisors}, C{router}, C{handoff} and C{cache}, in the
    TypeScript ai-agent's shapes.
    """

    def test_toolOutput(self) -> None:
        """
        C{toolOutput} takes the original's keys (or a bare boolean); it is
        on by default; unknown inner keys and out-of-range values are
        refused by name.
        """
        self.assertEqual(agent("models: a/b").toolOutput, ToolOutputSpec())
        self.assertTrue(agent("models: a/b").toolOutput.enabled)
        self.assertFalse(agent("models: a/b\ntoolOutput: false").toolOutput.enabled)
        spec = agent(
            "models: a/b\ntoolOutput:\n  enabled: true\n  maxChunks: 3\n  overlapPercent: 20\n"
            "  avgLineBytesThreshold: 500\n  models: [a/c]"
        ).toolOutput
        self.assertEqual(spec, ToolOutputSpec(True, 3, 20, 500, ("a/c",)))
        for bad, where in (
            ("toolOutput: {storeDirx: 1}", "unknown key 'storeDirx' in 'toolOutput'"),
            ("toolOutput: {overlapPercent: 60}", "'toolOutput.overlapPercent' must be"),
            ("toolOutput: {maxChunks: 0}", "'toolOutput.maxChunks' must be"),
            ("toolOutput: 3", "'toolOutput' must be true, false or a mapping"),
        ):
            error = self.assertRaises(ConfigurationError, agent, f"models: a/b\n{bad}")
            self.assertIn(where, str(error))

    def test_routingKeys(self) -> None:
        """
        C{advisors} (a list or a comma string), C{router.destinations} and
        C{handoff} keep each target as written and its absolute path,
        relative to the file (the C{.ai} suffix optional).
        """
        spec = agent(
            "models: a/b\nadvisors: ./x.ai, y\nrouter:\n  destinations: [./d1.ai]\n"
            "handoff: ../fmt.ai",
            path="/srv/agents/main.ai",
        )
        self.assertEqual(
            spec.advisors,
            (RouteTarget("./x.ai", "/srv/agents/x.ai"), RouteTarget("y", "/srv/agents/y")),
        )
        self.assertEqual(spec.router, (RouteTarget("./d1.ai", "/srv/agents/d1.ai"),))
        self.assertEqual(spec.handoff, RouteTarget("../fmt.ai", "/srv/fmt.ai"))

    def test_routingErrors(self) -> None:
        """
        A router without destinations or with other keys, a list as
        C{handoff}, and a destination named twice are refused by name.
        """
        for bad, where in (
            ("router: ./a.ai", "'router' must be a mapping with 'destinations'"),
            ("router: {destinations: []}", "'router.destinations' must name at least one"),
            ("router: {destinations: [a], strategy: x}", "unknown key 'strategy' in 'router'"),
            ("router: {destinations: [a, a]}", "must not name an agent twice"),
            ("handoff: [a, b]", "'handoff' must be one agent file"),
        ):
            error = self.assertRaises(ConfigurationError, agent, f"models: a/b\n{bad}")
            self.assertIn(where, str(error))

    def test_cache(self) -> None:
        """
        C{cache} is off by default and for C{off}/C{none}/C{0}; a number is
        milliseconds; a string has a unit up to years; anything else is
        refused by name.
        """
        self.assertIsNone(agent("models: a/b").cache)
        values = {
            "off": None,
            "none": None,
            "0": None,
            "5000": 5.0,
            "'30s'": 30.0,
            "1h": 3600.0,
            "2d": 172800.0,
            "1w": 604800.0,
            "1mo": 2592000.0,
            "1y": 31536000.0,
            "250ms": 0.25,
        }
        for written, seconds in values.items():
            self.assertEqual(agent(f"models: a/b\ncache: {written}").cache, seconds, written)
        for bad in ("soon", "-5", "1 fortnight"):
            error = self.assertRaises(ConfigurationError, agent, f"models: a/b\ncache: {bad}")
            self.assertIn("'cache' must be off, a number of milliseconds", str(error))
        self.assertEqual(parseCacheTTL("1h"), 3600.0)

    def test_digest(self) -> None:
        """
        The digest changes with any change of the file's text.
        """
        self.assertNotEqual(agent("models: a/b").digest, agent("models: a/b", body="Hi.").digest)
        self.assertEqual(agent("models: a/b").digest, agent("models: a/b").digest)
