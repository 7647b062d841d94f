"""
Tests for L{ai_agent.agentfile}.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ai_agent.agentfile import (
    PROMPT_SCHEMA,
    AgentSpec,
    InputSpec,
    InvalidInputError,
    OutputSpec,
    RouteTarget,
    ToolOutputSpec,
    loadAgent,
    parseAgent,
    parseCacheTTL,
    parseDuration,
)
from ai_agent.config import loadConfig
from ai_agent.errors import ConfigurationError
from ai_agent.registry import loadRegistry

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

    def test_pluginsRefusedWithReason(self) -> None:
        """
        C{plugins}, the original's JavaScript final-report modules, is
        refused with why and what to use here instead (not as a misspelt
        key with a list of allowed ones), alongside the file's other
        problems.
        """
        error = self.assertRaises(
            ConfigurationError, agent, "models: a/b\nplugins: [./report.js]\nmaxTurns: 0"
        )
        self.assertTrue(
            str(error).startswith(
                f"{PATH}: frontmatter key 'plugins' is not supported: the TypeScript ai-agent"
                " loads these JavaScript modules into its own Node.js process"
            ),
            str(error),
        )
        for alternative in ("an MCP server", "a REST tool", "a 'handoff' agent"):
            self.assertIn(alternative, str(error))
        self.assertNotIn("allowed:", str(error))
        self.assertIn("'maxTurns' must be an integer >= 1", str(error))

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
            ConfigurationError, agent, "models: a/b\noutput:\n  format: json\n  shema: {}"
        )
        self.assertEqual(
            str(error),
            f"{PATH}: unknown key 'shema' in 'output' (allowed: format, schema, schemaRef);"
            " did you mean 'schema'?",
        )
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

    def test_invalidInlineSchema(self) -> None:
        """
        An inline output schema is checked against the JSON Schema
        metaschema at load, as an input schema is: a broken one would
        otherwise be sent to the provider with every call of the agent.
        """
        error = self.assertRaises(
            ConfigurationError, agent, "models: a/b\noutput:\n  schema: {type: object, required: 5}"
        )
        self.assertEqual(
            str(error),
            f"{PATH}: 'output.schema' is not a valid JSON Schema"
            " (at required: 5 is not of type 'array')",
        )

    def _schemaDirectory(self, files: Mapping[str, str]) -> str:
        """
        A directory holding C{files} (relative name to text); returns the
        path of an agent file C{a.ai} in it (not written).
        """
        directory = os.path.abspath(self.mktemp())
        for name, text in files.items():
            path = os.path.join(directory, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return os.path.join(directory, "a.ai")

    def test_schemaRef(self) -> None:
        """
        C{schemaRef} names a YAML or JSON schema file relative to the agent
        file's directory (not the working directory); the loaded schema is
        the output schema, and without C{format} the format is json.
        """
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
        path = self._schemaDirectory(
            {
                "schemas/out.yaml": "type: object\nproperties:\n  answer: {type: string}\n",
                "schemas/out.json": json.dumps(schema),
            }
        )
        for lines in (
            "output:\n  format: json\n  schemaRef: schemas/out.yaml",
            "output:\n  schemaRef: ./schemas/out.json",
        ):
            spec = agent(f"models: a/b\n{lines}", path=path)
            self.assertEqual(spec.output, OutputSpec("json", schema), lines)

    def test_schemaRefErrors(self) -> None:
        """
        A missing schema file, a file that is not JSON or YAML, one that is
        not a mapping, one that is not a valid JSON Schema, C{schemaRef}
        beside C{schema}, and C{schemaRef} with a non-json format are each
        refused at load with a message naming C{output.schemaRef} and the
        file.
        """
        path = self._schemaDirectory(
            {
                "bad.json": '{"type": "object", "required": 5}',
                "list.yaml": "- a\n- b\n",
                "broken.yaml": "type: [object\n",
                "ok.json": '{"type": "object"}',
            }
        )
        directory = os.path.dirname(path)
        cases = {
            "{schemaRef: nowhere.json}": f"'output.schemaRef' names"
            f" {os.path.join(directory, 'nowhere.json')}: No such file or directory",
            "{schemaRef: broken.yaml}": f"'output.schemaRef' names"
            f" {os.path.join(directory, 'broken.yaml')}, which is not JSON or YAML",
            "{schemaRef: list.yaml}": "'output.schemaRef' must name a JSON Schema object"
            " (a mapping), got a list",
            "{schemaRef: bad.json}": "'output.schemaRef' is not a valid JSON Schema"
            " (at required: 5 is not of type 'array')",
            "{schema: {type: object}, schemaRef: ok.json}": "'output' takes 'schema' or"
            " 'schemaRef', not both",
            "{format: markdown, schemaRef: ok.json}": "'output.schemaRef' needs"
            " 'output.format' json",
            "{schemaRef: 5}": "'output.schemaRef' must be a string, got 5",
        }
        for lines, message in cases.items():
            with self.assertRaises(ConfigurationError) as caught:
                agent(f"models: a/b\noutput: {lines}", path=path)
            self.assertEqual(str(caught.exception), f"{path}: {message}", lines)


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


class DocumentedKeysTests(SynchronousTestCase):
    """
    docs/agent-files.md agrees with the parser: every key its table lists
    is accepted, and every key it lists as not supported is rejected.
    """

    def _docs(self) -> str:
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "docs", "agent-files.md"), encoding="utf-8") as f:
            return f.read()

    def test_documentedKeysAccepted(self) -> None:
        """
        The frontmatter table's keys are exactly the keys the parser knows.
        """
        from ai_agent.agentfile import _KEYS

        keys = self._docs().split("## Keys", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        table = re.findall(r"^\| `(\w+)` \|", keys, re.MULTILINE)
        self.assertEqual(sorted(table), sorted(_KEYS))

    def test_unsupportedKeysRejected(self) -> None:
        """
        The keys listed under "Not supported, on purpose" (one C{- `key`}
        item each) are exactly those the parser refuses with a reason, each
        is refused naming itself, and none of them is also in the table
        (the page once listed C{maxToolCallsPerTurn} in both).
        """
        from ai_agent.agentfile import UNSUPPORTED_KEYS

        docs = self._docs()
        section = docs.split("\n## Not supported, on purpose\n", 1)[1].split("\n## ", 1)[0]
        names = re.findall(r"^- `(\w+)`", section, re.MULTILINE)
        self.assertEqual(sorted(names), sorted(UNSUPPORTED_KEYS))
        self.assertIn("plugins", names)
        for name in names:
            with self.assertRaises(ConfigurationError, msg=name) as caught:
                agent(f"models: openai/gpt-4o\n{name}: 1")
            self.assertIn(f"frontmatter key {name!r} is not supported", str(caught.exception))
        table = set(re.findall(r"^\| `(\w+)` \|", docs, re.MULTILINE))
        self.assertEqual(table & set(names), set())


class ShippedAgentFilesTests(SynchronousTestCase):
    """
    The agent files this repository ships as examples (C{agents/}) and
    those written in the TypeScript ai-agent's style for the tests
    (C{tests/fixtures/}) all load.
    """

    def test_allLoad(self) -> None:
        """
        Every C{.ai} file under C{agents/} and C{tests/fixtures/} parses,
        and each directory has some (a moved directory must fail here, not
        pass with nothing checked).
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for directory in ("agents", os.path.join("tests", "fixtures")):
            found = [
                os.path.join(folder, name)
                for folder, _, names in os.walk(os.path.join(root, directory))
                for name in names
                if name.endswith(".ai")
            ]
            self.assertNotEqual(found, [], directory)
            for path in found:
                self.assertEqual(loadAgent(path).path, path)


class SamplingKeyTests(SynchronousTestCase):
    """
    C{topK}, C{repeatPenalty} and C{reasoningTokens}: parsed as the
    TypeScript ai-agent reads them.
    """

    def test_values(self) -> None:
        """
        Numbers are kept; a budget may be a string of digits.
        """
        spec = agent("models: a/b\ntopK: 40\nrepeatPenalty: 1.1\nreasoningTokens: '16000'")
        self.assertEqual((spec.topK, spec.repeatPenalty, spec.reasoningTokens), (40, 1.1, 16000))
        self.assertEqual(spec.reasoning, None)
        plain = agent("models: a/b")
        self.assertEqual((plain.topK, plain.repeatPenalty, plain.reasoningTokens), (None,) * 3)

    def test_unsetWords(self) -> None:
        """
        C{null}, C{none}, C{off}, C{unset} and C{default} leave C{topK} and
        C{repeatPenalty} unsent.
        """
        for word in ("null", "none", "off", "unset", "default", "~"):
            spec = agent(f"models: a/b\ntopK: {word}\nrepeatPenalty: {word}")
            self.assertEqual((spec.topK, spec.repeatPenalty), (None, None), word)

    def test_budgetOffTurnsReasoningOff(self) -> None:
        """
        A budget of C{0} (or C{disabled}, C{off}, C{none}) turns reasoning
        off, whatever C{reasoning} says.
        """
        for word in ("0", "disabled", "off", "none"):
            spec = agent(f"models: a/b\nreasoning: high\nreasoningTokens: {word}")
            self.assertEqual((spec.reasoningTokens, spec.reasoning), (0, "none"), word)

    def test_errors(self) -> None:
        """
        Values of the wrong kind are refused, each naming the key; a budget
        with C{reasoning: none} contradicts itself.
        """
        cases = {
            "topK: 0": "'topK' must be an integer >= 1, got 0",
            "topK: 2.5": "'topK' must be an integer >= 1, got 2.5",
            "repeatPenalty: 3": "'repeatPenalty' must be a number from 0 to 2, got 3",
            "repeatPenalty: lots": "'repeatPenalty' must be a number from 0 to 2, got 'lots'",
            "reasoningTokens: -5": "'reasoningTokens' must be a whole number of tokens,"
            " or 0, disabled, off or none, got -5",
            "reasoningTokens: many": "'reasoningTokens' must be a whole number of tokens,"
            " or 0, disabled, off or none, got 'many'",
            "reasoning: none\nreasoningTokens: 2048": "'reasoningTokens' 2048 contradicts"
            " 'reasoning' none (remove one of them)",
        }
        for lines, message in cases.items():
            with self.assertRaises(ConfigurationError) as caught:
                agent(f"models: a/b\n{lines}")
            self.assertEqual(str(caught.exception), f"{PATH}: {message}", lines)


class SamplingSupportTests(SynchronousTestCase):
    """
    An agent whose models include a provider that cannot send one of its
    sampling keys is refused at load, naming the key, the file and the
    provider.
    """

    def load(self, frontmatter: str, providers: dict[str, Any]) -> Any:
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"providers": providers}, f)
        path = os.path.join(directory, "a.ai")
        with open(path, "w") as f:
            f.write(f"---\n{frontmatter}\n---\nHi.\n")
        config = loadConfig(
            configFile="config.json", cwd=directory, agentDirs=[], home=None, environ={}
        )
        return loadRegistry([path], config), path

    PROVIDERS = {
        "vllm": {"type": "openai", "baseUrl": "http://127.0.0.1:9/v1"},
        "claude": {"type": "anthropic", "baseUrl": "http://127.0.0.1:9"},
        "oai": {"type": "openai", "baseUrl": "https://api.openai.com/v1"},
        "llama": {"type": "local"},
    }

    def test_accepted(self) -> None:
        """
        Keys every model's provider can send load: C{topK} on Anthropic,
        OpenAI-compatible servers and the local engine; C{repeatPenalty}
        on OpenAI-compatible servers and the local engine; a budget on
        Anthropic; a budget of 0 anywhere.
        """
        for frontmatter in (
            "models: [claude/c, vllm/m, llama/smollm2]\ntopK: 20",
            "models: [vllm/m, llama/smollm2]\nrepeatPenalty: 1.2",
            "models: claude/c\nreasoningTokens: 4096",
            "models: [oai/gpt, ollama/x]\nreasoningTokens: 0",
        ):
            registry, path = self.load(frontmatter, self.PROVIDERS)
            self.assertIn(os.path.abspath(path), registry.byPath, frontmatter)

    def test_refused(self) -> None:
        """
        One model whose provider lacks the key refuses the file, fallbacks
        included.
        """
        cases = {
            "models: [vllm/m, oai/gpt-4o]\ntopK: 20": "'topK' cannot be sent to model"
            " 'oai/gpt-4o': provider 'oai' (OpenAI's own API) has no top_k;"
            " remove the key or that model",
            "models: [claude/c]\nrepeatPenalty: 1.1": "'repeatPenalty' cannot be sent to model"
            " 'claude/c': provider 'claude' (the anthropic provider type) has no"
            " repeat_penalty; remove the key or that model",
            "models: ollama/llama3\ntopK: 20": "'topK' cannot be sent to model 'ollama/llama3':"
            " provider 'ollama' (the ollama provider type) has no top_k;"
            " remove the key or that model",
            "models: [claude/c, vllm/m]\nreasoningTokens: 2048": "'reasoningTokens' cannot be"
            " sent to model 'vllm/m': provider 'vllm' (an OpenAI-compatible server) has no"
            " thinking budget; remove the key or that model",
            "models: claude/c\nreasoningTokens: 500": "'reasoningTokens' must be at least 1024"
            " for model 'claude/c' of provider 'claude' (Anthropic's smallest thinking"
            " budget), got 500",
        }
        for frontmatter, message in cases.items():
            with self.assertRaises(ConfigurationError) as caught:
                self.load(frontmatter, self.PROVIDERS)
            text = str(caught.exception)
            self.assertTrue(text.endswith(f"a.ai: {message}"), text)


class InputTests(SynchronousTestCase):
    """
    C{input}: what callers send when they run the agent as a tool.
    """

    SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    def test_default(self) -> None:
        """
        Without C{input}, or with C{format: text}, or C{json} without a
        schema, callers send C{{"prompt": string}}.
        """
        for lines in ("", "input: {format: text}", "input: {format: json}"):
            spec = agent(f"models: a/b\n{lines}")
            self.assertEqual(spec.inputSchema(), PROMPT_SCHEMA, lines)
            self.assertEqual(spec.input.userMessage({"prompt": "hi"}), "hi")

    def test_inlineSchema(self) -> None:
        """
        An inline schema (a mapping, or JSON or YAML text) is what callers
        send; C{format} defaults to json when a schema is given.
        """
        for lines in (
            "input:\n  format: json\n  schema:\n    type: object\n    properties:\n"
            "      q: {type: string}\n    required: [q]",
            "input:\n  schema: '" + json.dumps(self.SCHEMA) + "'",
            "input:\n  format: JSON\n  schema: |\n    type: object\n    properties:\n"
            "      q: {type: string}\n    required: [q]",
        ):
            spec = agent(f"models: a/b\n{lines}")
            self.assertEqual(spec.input, InputSpec("json", self.SCHEMA), lines)
            self.assertEqual(spec.inputSchema(), self.SCHEMA)

    def test_schemaRef(self) -> None:
        """
        C{schemaRef} names a JSON or YAML file relative to the agent file.
        """
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "schemas"))
        with open(os.path.join(directory, "schemas", "in.yaml"), "w") as f:
            f.write("type: object\nproperties:\n  q: {type: string}\nrequired: [q]\n")
        path = os.path.join(directory, "a.ai")
        spec = agent("models: a/b\ninput:\n  format: json\n  schemaRef: schemas/in.yaml", path=path)
        self.assertEqual(spec.inputSchema(), self.SCHEMA)

    def test_userMessage(self) -> None:
        """
        Valid structured arguments become compact JSON, non-ASCII kept;
        invalid ones raise L{InvalidInputError} naming each field.
        """
        spec = InputSpec(
            "json",
            {
                "type": "object",
                "properties": {"q": {"type": "string"}, "n": {"type": "integer", "minimum": 1}},
                "required": ["q"],
            },
        )
        self.assertEqual(spec.userMessage({"q": "naïve", "n": 2}), '{"q":"naïve","n":2}')
        with self.assertRaises(InvalidInputError) as caught:
            spec.userMessage({"n": 0})
        self.assertEqual(
            str(caught.exception),
            "was called with invalid arguments: 'q' is a required property;"
            " n: 0 is less than the minimum of 1",
        )

    def test_errors(self) -> None:
        """
        A schema that is not valid JSON Schema, that does not describe an
        object, a schema with a text format, an unknown inner key, and a
        missing schema file are refused at load, naming the file.
        """
        cases = {
            "input: {schema: {type: object, required: 5}}": "'input.schema' is not a valid JSON"
            " Schema (at required: 5 is not of type 'array')",
            "input: {schema: {type: string}}": "'input.schema' must describe an object (type:"
            " object): callers send a tool call's arguments, which are a JSON object",
            "input: {format: text, schema: {type: object}}": "'input.schema' needs 'input.format'"
            " json (a text input is one 'prompt' string)",
            "input: {format: xml}": "'input.format' must be one of text, json, got 'xml'",
            "input: {shema: {}}": "unknown key 'shema' in 'input' (allowed: format, schema,"
            " schemaRef); did you mean 'schema'?",
            "input: [a]": "'input' must be a mapping with 'format' and 'schema' or 'schemaRef',"
            " got a list",
            "input: {schema: {type: object}, schemaRef: in.json}": "'input' takes 'schema' or"
            " 'schemaRef', not both",
        }
        for lines, message in cases.items():
            with self.assertRaises(ConfigurationError) as caught:
                agent(f"models: a/b\n{lines}")
            self.assertEqual(str(caught.exception), f"{PATH}: {message}", lines)
        with self.assertRaises(ConfigurationError) as caught:
            agent("models: a/b\ninput: {schemaRef: nowhere.json}")
        self.assertIn("'input.schemaRef' names", str(caught.exception))
        self.assertIn("nowhere.json: No such file or directory", str(caught.exception))
