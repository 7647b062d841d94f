"""
REST tools and OpenAPI import: the configuration's C{restTools} and
C{openapiSpecs}, the requests a tool makes (against a real HTTP server on
127.0.0.1 that records them), and REST tools end to end behind the real
headend with the fake upstream scripting the model's tool calls.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ai_agent.config import Config, OpenApiSpecConfig, RestStreaming, RestToolConfig, loadConfig
from ai_agent.errors import AgentError, ConfigurationError
from ai_agent.providers._wire import WireAgent
from ai_agent.redaction import Redactor
from ai_agent.runtime import CachingEndpointFactory
from ai_agent.speed import UpstreamHTTPClient
from ai_agent.testing import Reply
from ai_agent.tools.openapi import importOpenApi
from ai_agent.tools.rest import RestTool, encodeComponent, restRedactor
from tests._harness import inThread, startServer

SECRET = "tok-SECRET-0123456789abcdef"


@attrs.define
class Recorded:
    """
    One request the API server received.
    """

    method: str
    uri: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class FakeApi(Resource):
    """
    A small HTTP API for REST tools to call, recording every request:

      - C{/big}: a body of C{bigSize} C{x} bytes;
      - C{/hang}: never answers; L{hanging} fires when it arrives, L{lost}
        when the client goes;
      - C{/fail}: HTTP 500, echoing the C{Authorization} header;
      - C{/moved}: a redirect to another host;
      - C{/stream}: JSON lines, a C{done} line, then more lines;
      - anything else: HTTP 200 with a JSON echo of the request.
    """

    isLeaf = True
    requests: list[Recorded] = attrs.field(factory=list)
    hanging: Deferred[None] = attrs.field(factory=Deferred)
    lost: Deferred[None] = attrs.field(factory=Deferred)
    bigSize: int = 200_000

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes | int:
        body = request.content.read() if request.content is not None else b""
        headers = {
            name.decode().lower(): values[0].decode()
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        path = request.uri.decode()
        self.requests.append(Recorded(request.method.decode(), path, headers, body))
        request.setHeader(b"content-type", b"application/json")
        if path == "/big":
            return b"x" * self.bigSize
        if path == "/hang":
            request.notifyFinish().addErrback(lambda _: self.lost.callback(None))
            self.hanging.callback(None)
            return NOT_DONE_YET
        if path == "/moved":
            request.redirect(b"http://other.example/secret-sink")
            return b""
        if path == "/fail":
            request.setResponseCode(500)
            return f"denied for {headers.get('authorization')}".encode()
        if path == "/stream":
            return (
                b'data: {"type": "token", "content": "Hel"}\n'
                b"not json\n"
                b'data: {"type": "token", "content": "lo"}\n'
                b'data: {"type": "done"}\n'
                b'data: {"type": "token", "content": " ignored"}\n'
            )
        echo = {
            "method": request.method.decode(),
            "uri": path,
            "authorization": headers.get("authorization"),
            "body": body.decode(),
        }
        return json.dumps(echo).encode()


async def startApi(testCase: TestCase) -> tuple[FakeApi, str]:
    """
    Start a L{FakeApi} on 127.0.0.1 (stopped when C{testCase} ends).
    """
    api = FakeApi()
    port = reactor.listenTCP(0, Site(api), interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return api, f"http://127.0.0.1:{port.getHost().port}"


def upstreamClient(testCase: TestCase) -> HTTPClient:
    """
    The server's own upstream client (L{WireAgent} behind treq), closed
    when C{testCase} ends.
    """
    pool = WireAgent(reactor, CachingEndpointFactory(reactor, 5.0))
    testCase.addCleanup(pool.closeCachedConnections)
    return UpstreamHTTPClient(pool)


def _ignore(event: Any) -> None:
    """
    The event sink of a tool call made outside a run.
    """


def tool(base: str, http: HTTPClient, clock: Any = reactor, **values: Any) -> RestTool:
    values.setdefault("name", "t")
    values.setdefault("description", "A tool.")
    values.setdefault("method", "GET")
    values["url"] = base + values.get("url", "/")
    config = RestToolConfig(**values)
    return RestTool(
        config, http, clock, restRedactor(Config(providers={}, restTools={"t": config}))
    )


class RestToolTests(TestCase):
    """
    What a REST tool sends and what the model gets back, against a real
    HTTP server.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.api, self.base = await startApi(self)
        self.http = upstreamClient(self)

    async def test_urlTemplating(self) -> None:
        """
        An argument is percent-encoded as one URL component: C{/}, C{?},
        C{#}, C{&} and spaces never change the path or the query, and a
        bare C{..} cannot walk up; query parameters named by
        C{queryParamNames} are added with brackets.
        """
        rest = tool(
            self.base,
            self.http,
            url="/users/${parameters.id}/items?q=${parameters.q}",
            queryParams=("filter",),
            complexQuery=True,
        )
        text = await rest.call({"id": "a/b?c#d", "q": "x y&z=1", "filter": [{"k": "v@w"}]}, _ignore)
        await rest.call({"id": "..", "q": "é"}, _ignore)
        first, second = self.api.requests
        self.assertEqual(
            first.uri, "/users/a%2Fb%3Fc%23d/items?q=x%20y%26z%3D1&filter%5B0%5D%5Bk%5D=v%40w"
        )
        self.assertEqual(json.loads(text)["uri"], first.uri)
        self.assertEqual(second.uri, "/users/%2E%2E/items?q=%C3%A9")
        self.assertEqual(encodeComponent("!*'()~-_."), "!*'()~-_.")

    async def test_invalidArguments(self) -> None:
        """
        Arguments that do not fit C{parametersSchema} are an error naming
        each field, and no request is made.
        """
        rest = tool(
            self.base,
            self.http,
            url="/x/${parameters.id}",
            parametersSchema={
                "type": "object",
                "properties": {"id": {"type": "string"}, "n": {"type": "integer"}},
                "required": ["id"],
            },
        )
        with self.assertRaises(AgentError) as caught:
            await rest.call({"n": "many"}, _ignore)
        self.assertEqual(
            caught.exception.message,
            "rest__t was called with invalid arguments: 'id' is a required property;"
            " n: 'many' is not of type 'integer'",
        )
        self.assertEqual(self.api.requests, [])

    async def test_bodyAndHeaders(self) -> None:
        """
        The body template keeps an argument's JSON type where a string is
        exactly one placeholder, fills other strings as text, leaves out a
        key whose argument is absent, and is sent as JSON; header templates
        are filled; the header's secret is sent but never returned.
        """
        rest = tool(
            self.base,
            self.http,
            method="POST",
            url="/tickets",
            headers={"Authorization": f"Bearer {SECRET}", "X-Ticket": "${parameters.subject}"},
            hasBody=True,
            bodyTemplate={
                "subject": "${parameters.subject}",
                "count": "${parameters.count}",
                "label": "about ${parameters.subject}",
                "missing": "${parameters.absent}",
                "fixed": [1, True],
            },
        )
        text = await rest.call({"subject": "disk", "count": 3}, _ignore)
        [sent] = self.api.requests
        self.assertEqual(sent.method, "POST")
        self.assertEqual(
            json.loads(sent.body),
            {"subject": "disk", "count": 3, "label": "about disk", "fixed": [1, True]},
        )
        self.assertEqual(sent.headers["content-type"], "application/json")
        self.assertEqual(sent.headers["x-ticket"], "disk")
        self.assertEqual(sent.headers["authorization"], f"Bearer {SECRET}")
        self.assertNotIn(SECRET, text)
        # The whole configured value is a secret.
        self.assertEqual(json.loads(text)["authorization"], "[redacted]")

    async def test_headerLineBreakRefused(self) -> None:
        """
        An argument that would put a line break in a header is refused
        before any request.
        """
        rest = tool(self.base, self.http, headers={"X-Id": "${parameters.id}"})
        with self.assertRaises(AgentError) as caught:
            await rest.call({"id": "a\r\nX-Evil: 1"}, _ignore)
        self.assertEqual(
            caught.exception.message, "rest__t: the header 'X-Id' would hold a line break"
        )
        self.assertEqual(self.api.requests, [])

    async def test_errorStatusRedacted(self) -> None:
        """
        An HTTP error status is a tool error with the status and the body,
        the configured secret replaced, the URL never named.
        """
        rest = tool(self.base, self.http, url="/fail", headers={"Authorization": SECRET})
        with self.assertRaises(AgentError) as caught:
            await rest.call({}, _ignore)
        self.assertEqual(caught.exception.message, "rest__t got HTTP 500: denied for [redacted]")
        self.assertNotIn("127.0.0.1", caught.exception.message)

    async def test_redirectNotFollowed(self) -> None:
        """
        A redirect is not followed (the other host would get the secret
        headers): it is a tool error, and only one request was made.
        """
        rest = tool(self.base, self.http, url="/moved", headers={"X-Key": SECRET})
        with self.assertRaises(AgentError) as caught:
            await rest.call({}, _ignore)
        self.assertEqual(
            caught.exception.message,
            "rest__t got HTTP 302: a redirect, which REST tools do not follow (point the"
            " tool's URL at the final address)",
        )
        self.assertEqual(len(self.api.requests), 1)

    async def test_sizeCap(self) -> None:
        """
        An answer over C{maxResponseBytes} is read up to the cap only, and
        the result says so.
        """
        rest = tool(self.base, self.http, url="/big", maxResponseBytes=1000)
        text = await rest.call({}, _ignore)
        self.assertEqual(
            text, "x" * 1000 + "\n[the answer was cut: only its first 1000 bytes were read]"
        )

    async def test_timeout(self) -> None:
        """
        A call slower than the tool's C{timeoutMs} (on the injected clock)
        fails with an error saying so, and closes the connection: the
        server sees the client go.
        """
        clock = Clock()
        rest = tool(self.base, self.http, clock, url="/hang", timeout=5.0)
        call = rest.call({}, _ignore)
        await self.api.hanging
        clock.advance(4.9)
        self.assertFalse(call.called)
        clock.advance(0.1)
        with self.assertRaises(AgentError) as caught:
            await call
        self.assertEqual(caught.exception.message, "rest__t did not answer within 5 s")
        await self.api.lost

    async def test_jsonStream(self) -> None:
        """
        A C{json-stream} answer is read line by line: token lines make the
        answer, non-JSON lines are skipped, the C{done} line ends it.
        """
        rest = tool(
            self.base, self.http, url="/stream", streaming=RestStreaming(linePrefix="data: ")
        )
        self.assertEqual(await rest.call({}, _ignore), "Hello")

    async def test_missingVariable(self) -> None:
        """
        A tool whose configuration uses an unset variable says which when
        called, and makes no request.
        """
        rest = tool(self.base, self.http, missingVariables=("API_TOKEN",))
        with self.assertRaises(AgentError) as caught:
            await rest.call({}, _ignore)
        self.assertEqual(
            caught.exception.message,
            "rest__t is unavailable: REST tool 't' needs the environment variable API_TOKEN,"
            " which is not set",
        )
        self.assertEqual(self.api.requests, [])


def _writeConfig(directory: str, config: dict[str, Any], env: str = "") -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ".ai-agent.json")
    with open(path, "w") as f:
        json.dump(config, f)
    if env:
        with open(os.path.join(directory, ".ai-agent.env"), "w") as f:
            f.write(env)
    return path


class ConfigTests(SynchronousTestCase):
    """
    C{restTools} and C{openapiSpecs} in C{.ai-agent.json}.
    """

    def load(self, config: dict[str, Any], env: str = "") -> Config:
        directory = os.path.abspath(self.mktemp())
        _writeConfig(directory, config, env)
        return loadConfig(configFile=None, cwd=directory, agentDirs=[], home=None, environ={})

    def test_restTool(self) -> None:
        """
        A REST tool in the TypeScript ai-agent's shape is read: method upper
        cased, C{${VAR}} expanded from the env file, C{${parameters.*}}
        kept, streaming and limits taken; the variable's value is a secret.
        """
        config = self.load(
            {
                "restTools": {
                    "weather": {
                        "description": "Weather.",
                        "method": "get",
                        "url": "https://api.example.com/w?city=${parameters.city}&key=${KEY}",
                        "headers": {"Accept": "application/json", "X-Auth": "${TOKEN}"},
                        "parametersSchema": {"type": "object"},
                        "streaming": {"mode": "json-stream", "linePrefix": "data: "},
                        "timeoutMs": 2500,
                        "queue": "slow",
                        "hasComplexQueryParams": True,
                        "queryParamNames": ["filters"],
                    }
                }
            },
            env=f"KEY=key-0123456789\nTOKEN={SECRET}\n",
        )
        weather = config.restTools["weather"]
        self.assertEqual(weather.method, "GET")
        self.assertEqual(
            weather.url, "https://api.example.com/w?city=${parameters.city}&key=key-0123456789"
        )
        self.assertEqual(weather.headers["X-Auth"], SECRET)
        self.assertEqual(weather.streaming, RestStreaming(linePrefix="data: "))
        self.assertEqual(weather.timeout, 2.5)
        self.assertEqual((weather.queryParams, weather.complexQuery), (("filters",), True))
        self.assertEqual(set(config.restSecrets), {"key-0123456789", SECRET})
        redactor = Redactor.fromConfig(config)
        self.assertEqual(
            redactor.scrub(f"key-0123456789 {SECRET} application/json"),
            "[redacted] [redacted] application/json",
        )
        self.assertNotIn(SECRET, repr(config))

    def test_refused(self) -> None:
        """
        A URL that is not http(s), holds userinfo or templates its host,
        an unknown key, a bad method, a name shared with an MCP server and
        a remote OpenAPI document are refused, naming the entry.
        """
        base = {"description": "d", "method": "GET"}
        cases = [
            ({"restTools": {"t": {**base, "url": "ftp://h/x"}}}, "restTools.t.url must be an"),
            (
                {"restTools": {"t": {**base, "url": "https://u:p@h/x"}}},
                "restTools.t.url holds a user name or password",
            ),
            (
                {"restTools": {"t": {**base, "url": "https://${parameters.host}/x"}}},
                "restTools.t.url takes ${parameters.*} in its path and query only",
            ),
            ({"restTools": {"t": {**base, "url": "https://h", "verb": 1}}}, "unknown key 'verb'"),
            (
                {"restTools": {"t": {**base, "method": "TRACE", "url": "https://h"}}},
                "restTools.t.method must be one of GET, POST, PUT, PATCH, DELETE",
            ),
            (
                {
                    "restTools": {"calc": {**base, "url": "https://h"}},
                    "mcpServers": {"calc": {"command": "x"}},
                },
                "restTools.calc has the name of an MCP server",
            ),
            (
                {"openapiSpecs": {"p": {"spec": "https://h/openapi.json"}}},
                "openapiSpecs.p.spec must be a local file",
            ),
        ]
        for config, message in cases:
            with self.assertRaises(ConfigurationError) as caught:
                self.load(config)
            self.assertIn(message, str(caught.exception))


PETS = """\
openapi: 3.0.3
servers:
  - url: https://pets.example.com/v1
paths:
  /pets/{petId}:
    parameters:
      - $ref: '#/components/parameters/PetId'
    get:
      operationId: getPet
      summary: Get one pet.
      tags: [pets]
      parameters:
        - name: fields
          in: query
          schema: {type: array, items: {type: string}}
        - name: X-Trace
          in: header
          schema: {type: string}
    delete:
      operationId: deletePet
      tags: [admin]
  /pets:
    post:
      tags: [pets]
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Pet'}
components:
  parameters:
    PetId:
      name: petId
      in: path
      required: true
      description: The pet.
      schema: {type: string}
  schemas:
    Pet:
      type: object
      properties:
        name: {type: string}
        parent: {$ref: '#/components/schemas/Pet'}
      required: [name]
"""


class OpenApiTests(SynchronousTestCase):
    """
    Each operation of an OpenAPI document becomes a REST tool.
    """

    def spec(self, **values: Any) -> OpenApiSpecConfig:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "pets.yaml")
        with open(path, "w") as f:
            f.write(PETS)
        return OpenApiSpecConfig(name="pets", spec=path, source="config.json", **values)

    def test_import(self) -> None:
        """
        Operations become tools named after their C{operationId} (or method
        and path), with path, query, header parameters and the JSON body in
        one schema, C{$ref}s resolved (a recursive one as any value), and
        the URL templated from the first server.
        """
        tools = importOpenApi(self.spec(headers={"Authorization": SECRET}))
        self.assertEqual(sorted(tools), ["pets_deletePet", "pets_getPet", "pets_post_pets"])
        get = tools["pets_getPet"]
        self.assertEqual((get.method, get.description), ("GET", "Get one pet."))
        self.assertEqual(get.url, "https://pets.example.com/v1/pets/${parameters.petId}")
        self.assertEqual(get.queryParams, ("fields",))
        self.assertEqual(
            dict(get.headers), {"Authorization": SECRET, "X-Trace": "${parameters.X-Trace}"}
        )
        self.assertEqual(
            get.parametersSchema,
            {
                "type": "object",
                "properties": {
                    "petId": {"type": "string", "description": "The pet."},
                    "fields": {"type": "array", "items": {"type": "string"}},
                    "X-Trace": {"type": "string"},
                },
                "required": ["petId"],
            },
        )
        post = tools["pets_post_pets"]
        self.assertEqual(post.description, "POST /pets")
        self.assertEqual(
            post.parametersSchema["properties"]["body"],
            {
                "type": "object",
                # The recursive reference back to Pet is any value.
                "properties": {"name": {"type": "string"}, "parent": {}},
                "required": ["name"],
            },
        )
        self.assertEqual((post.hasBody, post.bodyTemplate), (True, "${parameters.body}"))

    def test_filters(self) -> None:
        """
        C{includeMethods} and C{tagFilter} choose the operations; C{baseUrl}
        replaces the document's server.
        """
        tools = importOpenApi(self.spec(includeMethods=("get", "delete"), tagFilter=("pets",)))
        self.assertEqual(sorted(tools), ["pets_getPet"])
        tools = importOpenApi(self.spec(baseUrl="http://127.0.0.1:1"))
        self.assertEqual(tools["pets_getPet"].url, "http://127.0.0.1:1/pets/${parameters.petId}")

    def test_unreadable(self) -> None:
        """
        A document that is missing or not OpenAPI is refused, naming it.
        """
        spec = self.spec()
        os.remove(spec.spec)
        with self.assertRaises(ConfigurationError) as caught:
            importOpenApi(spec)
        self.assertIn("openapiSpecs.pets: cannot read the document", str(caught.exception))
        with open(spec.spec, "w") as f:
            f.write("just: text\n")
        with self.assertRaises(ConfigurationError) as caught:
            importOpenApi(spec)
        self.assertIn("is not an OpenAPI document", str(caught.exception))


AGENT = """\
---
description: Uses an API
models: fake/test-model
tools: [lookup, hang, openapi:pets]
{extra}
---
You look things up.
"""


class EndToEndTests(TestCase):
    """
    REST tools behind the real headend: the fake upstream scripts the
    model's calls, the tools call a real HTTP server.
    """

    async def start(self, extra: str = "") -> Any:
        self.api, base = await startApi(self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        spec = os.path.join(directory, "pets.yaml")
        with open(spec, "w") as f:
            f.write(PETS)
        restTools = {
            "lookup": {
                "description": "Look a user up.",
                "method": "GET",
                "url": base + "/users/${parameters.id}",
                "headers": {"Authorization": f"Bearer {SECRET}"},
                "parametersSchema": {
                    "type": "object",
                    "properties": {"id": {"type": "string"}},
                    "required": ["id"],
                },
            },
            "hang": {"description": "Never answers.", "method": "GET", "url": base + "/hang"},
        }
        openapi = {"pets": {"spec": spec, "baseUrl": base, "headers": {"X-Key": SECRET}}}
        return await startServer(
            self,
            agents={"agent.ai": AGENT.format(extra=extra)},
            extraConfig={"restTools": restTools, "openapiSpecs": openapi},
            streamHeadGrace=0.0,
        )

    async def test_toolsReachModelAndApi(self) -> None:
        """
        The model is offered C{rest__lookup} and the document's operations;
        its calls reach the API (the secret header sent), bad arguments come
        back as a tool error without a request, and neither the model's
        tool results nor the client's stream show the secret.
        """
        server = await self.start()
        server.upstream.script(
            Reply(toolCalls=[("rest__lookup", {"id": "a/b"})]),
            Reply(toolCalls=[("rest__lookup", {"name": "x"})]),
            Reply(toolCalls=[("rest__pets_getPet", {"petId": "7", "fields": ["a", "b"]})]),
            Reply(content="Done."),
        )

        def consume() -> list[Any]:
            stream = server.client().chat.completions.create(
                model="agent", messages=[{"role": "user", "content": "go"}], stream=True
            )
            return list(stream)

        chunks = await inThread(consume)
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        everything = json.dumps([c.model_dump() for c in chunks])
        self.assertEqual(content, "Done.")
        self.assertNotIn(SECRET, everything)
        offered = {t["function"]["name"] for t in server.upstream.requests[0].body["tools"]}
        self.assertEqual(
            offered,
            {
                "rest__lookup",
                "rest__hang",
                "rest__pets_getPet",
                "rest__pets_deletePet",
                "rest__pets_post_pets",
            },
        )
        lookup, pet = self.api.requests
        self.assertEqual(
            (lookup.uri, lookup.headers["authorization"]), ("/users/a%2Fb", f"Bearer {SECRET}")
        )
        self.assertEqual((pet.uri, pet.headers["x-key"]), ("/pets/7?fields=a&fields=b", SECRET))
        results = [
            m["content"]
            for m in server.upstream.requests[3].body["messages"]
            if m["role"] == "tool"
        ]
        self.assertEqual(json.loads(results[0])["authorization"], "[redacted]")
        self.assertEqual(
            results[1],
            "error: rest__lookup was called with invalid arguments: 'id' is a required property",
        )
        self.assertEqual(json.loads(results[2])["uri"], "/pets/7?fields=a&fields=b")
        self.assertNotIn(SECRET, json.dumps(server.upstream.requests[3].body))

    async def test_toolTimeoutAndCap(self) -> None:
        """
        A REST call slower than the agent's C{toolTimeout} becomes an error
        text and its connection is closed (the API sees the client go); a
        long answer is cut at C{toolResponseMaxBytes} for the model (with
        C{toolOutput: false}; otherwise it is kept behind a handle, see
        tests/test_tool_output.py).
        """
        server = await self.start(
            "toolTimeout: 300ms\ntoolResponseMaxBytes: 100\ntoolOutput: false"
        )
        server.upstream.script(
            Reply(toolCalls=[("rest__hang", {})]),
            Reply(toolCalls=[("rest__lookup", {"id": "y" * 300})]),
            Reply(content="slow"),
        )
        result = await inThread(
            server.client().chat.completions.create,
            model="agent",
            messages=[{"role": "user", "content": "go"}],
        )
        self.assertEqual(result.choices[0].message.content, "slow")
        await self.api.lost
        tools = [
            m["content"]
            for m in server.upstream.requests[2].body["messages"]
            if m["role"] == "tool"
        ]
        self.assertEqual(tools[0], "error: rest__hang did not answer within 0.3 s")
        self.assertTrue(tools[1].endswith("only the first 100 are shown]"), tools[1])
        self.assertEqual(len(tools[1].split("\n")[0].encode()), 100)


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "parity")


class ParityExamplesTests(TestCase):
    """
    The agent files of C{tests/fixtures/parity}, written as for the
    TypeScript ai-agent (a sub-agent with C{input} and C{output} schema
    files, REST and OpenAPI tools, sampling keys), load and run here.
    """

    async def test_planner(self) -> None:
        """
        The planner calls its REST tool, an imported OpenAPI operation and
        its structured sub-agent in one turn; each reaches its target with
        the configured secrets, the sub-agent's model gets the arguments as
        JSON, its own C{topK} and C{repeatPenalty} and its C{output.schemaRef}
        file as C{response_format}, and no secret is in the run's events.
        """
        from ai_agent.events import ContentDelta
        from ai_agent.providers import ChatMessage
        from ai_agent.request import RunRequest
        from ai_agent.runtime import buildRuntime
        from ai_agent.testing import startFakeUpstream

        api, base = await startApi(self)
        upstream = await startFakeUpstream(reactor)
        self.addCleanup(upstream.stop)
        home = os.path.abspath(self.mktemp())
        environ = {
            "HOME": home,
            "FAKE_URL": upstream.baseUrl,
            "FAKE_KEY": "sk-fake-0123456789",
            "API_URL": base,
            "GEO_TOKEN": SECRET,
            "PETS_KEY": "pets-key-0123456789",
        }
        planner = os.path.join(FIXTURES, "planner.ai")
        runtime = buildRuntime(reactor, [planner], cwd=FIXTURES, environ=environ)
        self.addCleanup(runtime.close)
        upstream.upstream.script(
            Reply(
                toolCalls=[
                    ("rest__geocode", {"place": "Oslo"}),
                    ("rest__pets_getPet", {"petId": "7"}),
                    ("agent__weather", {"city": "Oslo", "days": 2}),
                ]
            ),
            Reply(content='{"city":"Oslo","forecast":"Sunny"}'),
            Reply(content="Go."),
        )
        events: list[Any] = []
        spec = runtime.registry.byPath[planner]
        await runtime.runner.run(spec, RunRequest((ChatMessage("user", "Oslo?"),)), events.append)
        self.assertEqual("".join(e.text for e in events if isinstance(e, ContentDelta)), "Go.")
        first, child, last = (r.body for r in upstream.upstream.requests)
        offered = {t["function"]["name"]: t["function"] for t in first["tools"]}
        self.assertEqual(sorted(offered), ["agent__weather", "rest__geocode", "rest__pets_getPet"])
        self.assertEqual(offered["agent__weather"]["parameters"]["required"], ["city"])
        self.assertEqual((first["top_k"], first.get("repeat_penalty")), (20, None))
        self.assertEqual(
            child["messages"][-1], {"role": "user", "content": '{"city":"Oslo","days":2}'}
        )
        self.assertEqual((child["top_k"], child["repeat_penalty"]), (40, 1.1))
        with open(os.path.join(FIXTURES, "specs", "weather-output.json"), encoding="utf-8") as f:
            self.assertEqual(child["response_format"]["json_schema"]["schema"], json.load(f))
        self.assertNotIn("response_format", first)
        requests = {r.uri: r for r in api.requests}
        self.assertEqual(requests["/geocode?q=Oslo"].headers["authorization"], f"Bearer {SECRET}")
        self.assertEqual(requests["/pets/7"].headers["x-api-key"], "pets-key-0123456789")
        tools = [m["content"] for m in last["messages"] if m["role"] == "tool"]
        self.assertEqual(json.loads(tools[0])["authorization"], "[redacted]")
        self.assertEqual(tools[2], '{"city":"Oslo","forecast":"Sunny"}')
        self.assertNotIn(SECRET, repr(events))
        self.assertNotIn("pets-key-0123456789", repr(events))
