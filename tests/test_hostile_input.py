"""
Hostile and malformed request bodies: whatever a client posts to
C{/v1/chat/completions}, the answer is a 4xx in OpenAI's error envelope (or
a real completion), never a 5xx or a traceback.

Property tests run many examples through L{parseChatRequest} directly and
fewer through the real server on a loopback socket (the examples are sent
from a worker thread with a blocking client while the reactor serves).
"""

from __future__ import annotations

import http.client
import io
import json
import sys
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ai_agent.errors import ErrorKind
from ai_agent.headends import _request as parsing
from ai_agent.headends._bodies import BodyGate
from ai_agent.headends._mcpcore import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ProtocolError,
    parseMessage,
)
from ai_agent.headends._openai_errors import OPENAI_ERRORS
from ai_agent.headends._request import (
    MAX_DEPTH,
    MAX_MESSAGES,
    MAX_TOOLS,
    MAX_VALUES,
    OFF_REACTOR_THRESHOLD,
    AgentError,
    ChatRequest,
    _parseWithJSON,
    loadBody,
    parseChatRequest,
)
from ai_agent.headends.mcp import McpHeadend
from ai_agent.testing import Reply
from tests._harness import inThread, startServer

_ENVELOPE_KEYS = {"message", "type", "param", "code"}
_ROLES = ["system", "developer", "user", "assistant", "tool"]

# -- strategies -------------------------------------------------------------

#: Any character, lone surrogates included, and the awkward ones more often.
_chars = st.one_of(
    st.characters(exclude_categories=()),
    st.sampled_from(["\ud800", "\udfff", "\x00", "\ufeff", "\U0001f600", "\u2028", '"', "\\"]),
)
_text = st.text(alphabet=_chars, max_size=20)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
#: Any JSON value.
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)
_part = st.one_of(
    _text,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "input_text", "refusal", "image_url"]) | _json},
        optional={"text": _text | _json, "refusal": _text},
    ),
    _json,
)
_toolCall = st.fixed_dictionaries(
    {},
    optional={
        "id": _text | _json,
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {}, optional={"name": _text | _json, "arguments": _text | _json}
        )
        | _json,
    },
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(_ROLES) | _json},
    optional={
        "content": _text | st.lists(_part, max_size=3) | _json,
        "name": _text | _json,
        "tool_calls": st.lists(_toolCall, max_size=2) | _json,
        "tool_call_id": _text | _json,
    },
)
#: Chat requests that are nearly right: the known fields, each sometimes
#: of the wrong type.
_chatRequest = st.fixed_dictionaries(
    {
        "model": st.just("agent") | _json,
        "messages": st.lists(_message, min_size=1, max_size=4) | _json,
    },
    optional={
        "stream": st.booleans() | _json,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": _json}) | _json,
        "n": st.just(1) | _json,
        "temperature": st.floats(0, 2) | _json,
        "top_p": st.floats(0, 1) | _json,
        "max_tokens": st.integers(1, 10**6) | _json,
        "max_completion_tokens": st.integers(-2, 10**6) | _json,
        "seed": st.integers() | _json,
        "stop": _text | st.lists(_text, max_size=5) | _json,
        "user": _text | _json,
        "tools": st.lists(st.dictionaries(_text, _json, max_size=2), max_size=3) | _json,
        "metadata": _json,
    },
)
#: Well-formed requests whose one user message is any text (no lone
#: surrogates): they must succeed and come back intact.
_goodText = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)


def _encodings(value: Any) -> list[bytes]:
    """
    C{value} as JSON the usual way (non-ASCII escaped) and as raw UTF-8
    (lone surrogates then become invalid UTF-8 bytes).
    """
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return [json.dumps(value).encode("ascii"), raw]


def _checkParse(testCase: SynchronousTestCase, body: bytes) -> ChatRequest | AgentError:
    """
    Parse C{body}: either a request whose text all encodes as UTF-8, or a
    400 whose envelope does.
    """
    try:
        chat = parseChatRequest(body)
    except AgentError as error:
        testCase.assertEqual(error.status, 400)
        testCase.assertEqual(error.kind, ErrorKind.INVALID_REQUEST)
        envelope = OPENAI_ERRORS.body(error)
        testCase.assertEqual(json.loads(envelope)["error"]["type"], "invalid_request_error")
        testCase.assertEqual(set(json.loads(envelope)["error"]), _ENVELOPE_KEYS)
        return error
    for message in chat.messages:
        message.content.encode("utf-8")
    chat.model.encode("utf-8")
    return chat


def _request(body: dict[str, Any] | None = None, **fields: Any) -> bytes:
    base: dict[str, Any] = {"model": "agent", "messages": [{"role": "user", "content": "hi"}]}
    base.update(body or {})
    base.update(fields)
    return json.dumps(base).encode("utf-8")


def _nested(depth: int) -> Any:
    """
    A value C{depth} levels deep (an array of arrays … of an object).
    """
    value: Any = {"leaf": True}
    for _ in range(depth - 1):
        value = [value]
    return value


# -- the parser -------------------------------------------------------------


class ParserPropertyTests(SynchronousTestCase):
    """
    L{parseChatRequest} on generated bodies.
    """

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_json)
    def test_anyJsonValue(self, value: Any) -> None:
        """
        Any JSON value, escaped or raw UTF-8, parses or is a 400 in the
        envelope; nothing else is raised.
        """
        for body in _encodings(value):
            _checkParse(self, body)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=300))
    def test_anyBytes(self, body: bytes) -> None:
        """
        Any byte string is a 400 in the envelope (or, rarely, a request).
        """
        _checkParse(self, body)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_chatRequest)
    def test_nearlyRightRequests(self, value: dict[str, Any]) -> None:
        """
        Requests with the right fields, any of them of the wrong type or
        holding odd text, parse or are a 400; a 400 caused by one field
        names a C{param}, except for body-level problems.
        """
        for body in _encodings(value):
            result = _checkParse(self, body)
            if isinstance(result, AgentError) and result.code not in ("invalid_json",):
                if result.code != "invalid_unicode":
                    self.assertIsNotNone(result.param, result.message)

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_mutatedBody(self, data: st.DataObject) -> None:
        """
        A valid body with bytes replaced, inserted or cut off parses or is
        a 400.
        """
        body = bytearray(
            _request(
                temperature=0.5,
                stop=["x"],
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            )
        )
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(0, len(body) - 1))
            action = data.draw(st.sampled_from(["replace", "insert", "cut"]))
            byte = data.draw(st.integers(0, 255))
            if action == "replace":
                body[position] = byte
            elif action == "insert":
                body.insert(position, byte)
            else:
                del body[position:]
                break
        _checkParse(self, bytes(body))


def _outcome(parse: Callable[[bytes], Any], body: bytes) -> Any:
    """
    What C{parse} makes of C{body}: its value spelled out (so that C{1} and
    C{1.0}, C{0.0} and C{-0.0} differ), or the 400 it raises.
    """
    try:
        return repr(parse(body))
    except AgentError as error:
        return (error.message, error.code, error.param)


#: Bytes JSON is made of, and some it must not hold.
_JSONISH = st.binary(max_size=40) | st.lists(
    st.sampled_from(
        [b"{", b"}", b"[", b"]", b'"', b",", b":", b"0", b"7", b".", b"e", b"E", b"-", b"+"]
        + [b" ", b"\t", b"\n", b"true", b"null", b"NaN", b"Infinity", b"\\u", b"d83d"]
        + [b"ude00", b"\\", b"\x01", b"\xc3\xa9", b"\xff", b"1e400", b"9" * 19, b"a"]
    ),
    max_size=16,
).map(b"".join)


class JSONParserAgreementTests(SynchronousTestCase):
    """
    The body parser's orjson path agrees with its json path.
    """

    @settings(max_examples=600, deadline=None)
    @given(_JSONISH)
    def test_sameOutcome(self, body: bytes) -> None:
        """
        Any body gives the same value, or the same 400 (message, code and
        param), with orjson tried first as with json alone (both after the
        leading byte order mark the parser drops first, so that a body of
        two marks is compared as the parser sees it).
        """
        withoutMark = body[3:] if body.startswith(b"\xef\xbb\xbf") else body
        self.assertEqual(_outcome(loadBody, body), _outcome(_parseWithJSON, withoutMark))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_json)
    def test_sameValues(self, value: Any) -> None:
        """
        Any JSON value, escaped or raw UTF-8, parses to the same value both
        ways (or is refused the same way).
        """
        for body in _encodings(value):
            self.assertEqual(_outcome(loadBody, body), _outcome(_parseWithJSON, body))


class UnicodeTests(SynchronousTestCase):
    """
    Unicode edge cases in request text.
    """

    def _user(self, escapedText: str) -> bytes:
        head = '{"model": "agent", "messages": [{"role": "user", "content": "'
        return (head + escapedText + '"}]}').encode("utf-8")

    def test_loneSurrogateContent(self) -> None:
        """
        A lone surrogate escape in a message's content is a 400
        C{invalid_unicode} naming the content.
        """
        for escape in ("\\ud800", "\\uDFFF", "a\\udc00b", "\\ud83d", "\\ude00\\ud83d"):
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(self._user(escape))
            self.assertEqual(caught.exception.status, 400)
            self.assertEqual(caught.exception.param, "messages[0].content")
            self.assertEqual(caught.exception.code, "invalid_unicode")

    def test_loneSurrogateElsewhere(self) -> None:
        """
        A lone surrogate is refused wherever it is, in values and keys,
        fields the server ignores included, and the C{param} says where.
        """
        cases = {
            b'"model": "a\\ud800"': "model",
            b'"user": "\\udfff"': "user",
            b'"metadata": {"k": ["\\ud800"]}': "metadata.k[0]",
            b'"metadata": {"\\ud800": 1}': "metadata",
            b'"\\ud800": 1': None,
        }
        for fragment, param in cases.items():
            body = b'{"model": "agent", "messages": [{"role": "user", "content": "hi"}], '
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(body + fragment + b"}")
            self.assertEqual(
                (caught.exception.code, caught.exception.param), ("invalid_unicode", param)
            )
            self.assertIn("surrogate", caught.exception.message)

    def test_surrogatePairAccepted(self) -> None:
        """
        A surrogate pair escape is an astral character, accepted.
        """
        chat = parseChatRequest(self._user("\\ud83d\\ude00 and \\uD83D\\uDE00"))
        self.assertEqual(chat.messages[0].content, "\U0001f600 and \U0001f600")

    def test_rawUtf8Surrogate(self) -> None:
        """
        A surrogate encoded in UTF-8 bytes (not valid UTF-8) is a 400.
        """
        with self.assertRaises(AgentError) as caught:
            parseChatRequest(self._user("a").replace(b'"a"', b'"\xed\xa0\x80"'))
        self.assertIn("UTF-8", caught.exception.message)
        self.assertEqual(caught.exception.status, 400)

    def test_invalidUtf8(self) -> None:
        """
        Invalid or overlong UTF-8 and other encodings (Latin-1, UTF-16) are
        a 400 C{invalid_json}.
        """
        good = self._user("caf\u00e9")
        for body in (
            good.replace(b"caf", b"\xff\xfe"),
            good.replace(b"caf", b"\xc0\xaf"),
            self._user("x").replace(b'"x"', '"caf\u00e9"'.encode("latin-1")),
            json.dumps({"model": "agent", "messages": []}).encode("utf-16"),
        ):
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(body)
            self.assertEqual(caught.exception.code, "invalid_json")

    def test_nulAccepted(self) -> None:
        """
        NUL (C{\\u0000}) is a character like any other.
        """
        chat = parseChatRequest(self._user("a\\u0000b"))
        self.assertEqual(chat.messages[0].content, "a\x00b")

    def test_byteOrderMark(self) -> None:
        """
        A UTF-8 byte order mark before the body is dropped; one inside a
        string is kept.
        """
        chat = parseChatRequest(b"\xef\xbb\xbf" + self._user("\ufeffx"))
        self.assertEqual(chat.messages[0].content, "\ufeffx")

    def test_astral(self) -> None:
        """
        Characters beyond the Basic Multilingual Plane, raw or escaped,
        come through unchanged.
        """
        text = "\U0001f600\U00010348\U000e0001"
        chat = parseChatRequest(_request(messages=[{"role": "user", "content": text}]))
        self.assertEqual(chat.messages[0].content, text)
        raw = json.dumps(
            {"model": "agent", "messages": [{"role": "user", "content": text}]},
            ensure_ascii=False,
        ).encode("utf-8")
        self.assertEqual(parseChatRequest(raw).messages[0].content, text)


class DepthTests(SynchronousTestCase):
    """
    Nesting limits, enforced before the JSON parser recurses.
    """

    def test_limitAccepted(self) -> None:
        """
        A body nested exactly L{MAX_DEPTH} levels deep (the body itself
        counts as one) is accepted.
        """
        chat = parseChatRequest(_request(metadata=_nested(MAX_DEPTH - 1)))
        self.assertEqual(chat.model, "agent")

    def test_overLimit(self) -> None:
        """
        One level more is a 400 whose message names the depth and the limit.
        """
        with self.assertRaises(AgentError) as caught:
            parseChatRequest(_request(metadata=_nested(MAX_DEPTH)))
        self.assertEqual(caught.exception.status, 400)
        self.assertIn(f"{MAX_DEPTH + 1} levels deep", caught.exception.message)
        self.assertIn(f"at most {MAX_DEPTH}", caught.exception.message)

    def test_veryDeep(self) -> None:
        """
        A million levels of brackets (far past the interpreter's recursion
        limit) are a 400 from the scan of the raw bytes, naming the limit
        (how fast is measured by bench/, not here).
        """
        for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
            body = opener * 1_000_000 + closer * 1_000_000
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(body)
            self.assertEqual(caught.exception.status, 400)
            self.assertIn("levels deep", caught.exception.message)
            self.assertIn(f"at most {MAX_DEPTH} are allowed", caught.exception.message)
        with self.assertRaises(AgentError):
            parseChatRequest(b"[" * 1_000_000)

    def test_bracketsInStrings(self) -> None:
        """
        Brackets inside strings, escaped quotes among them, do not count.
        """
        text = '[{"\\' * 5000 + '"]}' * 100
        chat = parseChatRequest(_request(messages=[{"role": "user", "content": text}]))
        self.assertEqual(chat.messages[0].content, text)

    def test_deepInTheStack(self) -> None:
        """
        Parsing from a frame already near the recursion limit is a request
        or a 400, never a C{RecursionError}.
        """
        body = _request(metadata=_nested(MAX_DEPTH - 1))
        outcome: list[object] = []

        def descend(n: int) -> None:
            if n:
                descend(n - 1)
                return
            try:
                outcome.append(parseChatRequest(body))
            except AgentError as error:
                outcome.append(error)

        depth = sys.getrecursionlimit() - 40
        descend(depth - len(_stackDepth()))
        self.assertEqual(len(outcome), 1)
        self.assertIsInstance(outcome[0], (ChatRequest, AgentError))


class ValueCountTests(SynchronousTestCase):
    """
    The bound on JSON values in a body (L{MAX_VALUES}), found before the
    parser runs: the parser is one call of C code that keeps every other
    thread waiting, however it is run.
    """

    def test_zerosRefused(self) -> None:
        """
        The 8 MiB body of 4 million small numbers is a 400
        C{request_too_complex} naming the count and the limit, and the JSON
        parser is never called for it.
        """
        calls: list[bytes] = []
        self.patch(parsing, "_parseWithJSON", lambda body: calls.append(body))
        body = b"[" + b"0," * (4 * 1024 * 1024 - 2) + b"0]"
        with self.assertRaises(AgentError) as caught:
            loadBody(body)
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(caught.exception.code, "request_too_complex")
        self.assertIn(f"{4 * 1024 * 1024 - 1} JSON values", caught.exception.message)
        self.assertIn(f"at most {MAX_VALUES}", caught.exception.message)
        self.assertEqual(calls, [])

    def test_atTheLimit(self) -> None:
        """
        Elements, object keys and their values count: a body at the limit
        parses, one value more is refused.
        """
        members = (MAX_VALUES - 3) // 2
        body = b"{" + b",".join(b'"k%d":0' % i for i in range(members)) + b"}"
        # Counted: the object, and a comma and a colon per member (less one
        # comma): 1 + members + members - 1.
        self.assertEqual(parsing._shape(body)[2], 2 * members)
        self.assertEqual(len(loadBody(body)), members)
        over = b"[" + b"0," * MAX_VALUES + b"0]"
        with self.assertRaises(AgentError):
            loadBody(over)
        under = b"[" + b"0," * (MAX_VALUES - 2) + b"0]"
        self.assertEqual(len(loadBody(under)), MAX_VALUES - 1)

    def test_textDoesNotCount(self) -> None:
        """
        Commas, colons and brackets inside strings (escaped quotes among
        them) are text, not values: a long message full of them is parsed.
        """
        text = 'a, b: [c], {"d": e}, \\"f", ' * 40_000
        body = json.dumps({"model": "agent", "messages": [{"role": "user", "content": text}]})
        chat = parseChatRequest(body.encode())
        self.assertEqual(chat.messages[0].content, text)

    @given(
        st.lists(
            st.sampled_from([b'"', b"\\", b"a", b",", b":", b"[", b"]", b"{", b"}", b"0"]),
            max_size=60,
        ),
        st.integers(min_value=1, max_value=9),
    )
    def test_piecesAgreeWithTheWhole(self, parts: list[bytes], pieceSize: int) -> None:
        """
        The bytes outside strings, found piece by piece (pieces as small as
        one byte, so an escape or a string spans several), are those a scan
        of the whole body finds; a string still open at the end is dropped.
        """
        body = b"".join(parts)
        whole = parsing._STRING.sub(b"", parsing._ESCAPE.sub(b"", body))
        if b'"' in whole:
            whole = whole[: whole.index(b'"')]
        pieces = b"".join(parsing._outsideStrings(body, pieceSize))
        self.assertEqual(pieces, whole)

    def test_longNumbersFound(self) -> None:
        """
        A run of digits long enough for the slow conversion is found where
        it straddles two pieces; the integers of such a body are parsed
        exactly (through a Python function between which other threads get
        the interpreter).
        """
        piece = parsing._PIECE
        padding = b" " * (piece - 10)
        self.assertTrue(parsing._hasLongNumbers(padding + b"1" * 20))
        self.assertFalse(parsing._hasLongNumbers(padding + b"1" * 18 + b" " + b"1" * 18))
        number = int("7" * 4000)
        converted: list[str] = []
        original = parsing._parseInt
        self.patch(parsing, "_parseInt", lambda text: converted.append(text) or original(text))
        body = b"[" + b",".join([b"7" * 4000] * 100) + b"]" + b" " * piece
        self.assertEqual(loadBody(body), [number] * 100)
        self.assertEqual(len(converted), 100)

    def test_surrogateEscapeAcrossPieces(self) -> None:
        """
        An escaped lone surrogate straddling two pieces of the search is
        still found and refused.
        """
        piece = parsing._PIECE
        prefix = '{"model": "agent", "messages": [{"role": "user", "content": "'
        body = prefix + "x" * (piece - 3 - len(prefix)) + '\\ud800"}]}'
        self.assertEqual(body.index("\\ud800"), piece - 3)
        with self.assertRaises(AgentError) as caught:
            parseChatRequest(body.encode())
        self.assertEqual(caught.exception.code, "invalid_unicode")


class McpBodyTests(SynchronousTestCase):
    """
    MCP's JSON-RPC messages (C{/mcp} and C{--mcp stdio}) get the other
    APIs' checks of a body, each refusal a JSON-RPC error.
    """

    def test_tooManyValues(self) -> None:
        """
        A message of more than L{MAX_VALUES} values is -32600 (Invalid
        Request) naming the count and the bound, refused before the JSON
        parser runs (C{json.loads} took 200 ms for 4 million numbers, on
        the reactor).
        """
        calls: list[bytes] = []
        self.patch(parsing, "_parseWithJSON", lambda body: calls.append(body))
        body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":[' + b"0," * MAX_VALUES
        with self.assertRaises(ProtocolError) as caught:
            parseMessage(body + b"0]}}")
        self.assertEqual((caught.exception.code, caught.exception.status), (INVALID_REQUEST, 400))
        self.assertIn(f"at most {MAX_VALUES}", caught.exception.message)
        self.assertEqual(calls, [])

    def test_notJSON(self) -> None:
        """
        Nesting past L{MAX_DEPTH}, C{NaN} and a lone surrogate are -32700
        (Parse error) saying what is wrong; a message within the bounds
        parses.
        """
        for body, words in (
            (b'{"jsonrpc":"2.0","id":1,"x":' + b"[" * 100 + b"]" * 100 + b"}", "levels deep"),
            (b'{"jsonrpc":"2.0","id":1,"method":"ping","x":NaN}', "NaN"),
            (b'{"jsonrpc":"2.0","id":1,"method":"ping","x":"\\ud800"}', "surrogate"),
        ):
            with self.assertRaises(ProtocolError) as caught:
                parseMessage(body)
            self.assertEqual(caught.exception.code, PARSE_ERROR)
            self.assertIn(words, caught.exception.message)
        self.assertTrue(parseMessage(b'{"jsonrpc":"2.0","id":1,"method":"ping"}').isRequest)


def _stackDepth() -> list[None]:
    frame = sys._getframe()
    frames = []
    while frame is not None:
        frames.append(None)
        frame = frame.f_back  # type: ignore[assignment]
    return frames


class FieldTests(SynchronousTestCase):
    """
    Each field of the wrong type or out of bounds is a 400 naming it.
    """

    def test_wrongTypes(self) -> None:
        """
        Every field the parser reads, given a wrong type, is refused with
        C{param} naming it exactly.
        """
        user = {"role": "user", "content": "hi"}
        cases: list[tuple[dict[str, Any], str]] = [
            ({"model": 1}, "model"),
            ({"model": ""}, "model"),
            ({"messages": {}}, "messages"),
            ({"messages": []}, "messages"),
            ({"messages": [1]}, "messages[0]"),
            ({"messages": [user, {"role": 1, "content": "x"}]}, "messages[1].role"),
            ({"messages": [{"role": "user", "content": 1}]}, "messages[0].content"),
            ({"messages": [{"role": "user"}]}, "messages[0].content"),
            ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
            (
                {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
                "messages[0].content[0].text",
            ),
            ({"messages": [{"role": "user", "content": "x", "name": 1}]}, "messages[0].name"),
            (
                {"messages": [{"role": "assistant", "content": "x", "tool_calls": {}}]},
                "messages[0].tool_calls",
            ),
            (
                {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{}]}]},
                "messages[0].tool_calls[0].function",
            ),
            ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
            ({"stream": "yes"}, "stream"),
            ({"stream_options": 1}, "stream_options"),
            ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
            ({"n": "1"}, "n"),
            ({"n": 2}, "n"),
            ({"temperature": "hot"}, "temperature"),
            ({"temperature": 2.5}, "temperature"),
            ({"top_p": True}, "top_p"),
            ({"max_tokens": 1.5}, "max_tokens"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"max_completion_tokens": "x"}, "max_completion_tokens"),
            ({"seed": 1.5}, "seed"),
            ({"stop": 1}, "stop"),
            ({"stop": ["a"] * 5}, "stop"),
            ({"user": 1}, "user"),
            ({"tools": {}}, "tools"),
            ({"tools": [{"type": "function", "function": {"name": "f"}}, "x"]}, "tools[1]"),
            ({"tools": [{"type": "function"}]}, "tools[0].function"),
            ({"tools": [{"function": {"name": 3}}]}, "tools[0].function.name"),
            (
                {"tools": [{"function": {"name": "f", "parameters": []}}]},
                "tools[0].function.parameters",
            ),
            (
                {"tools": [{"function": {"name": "f"}}, {"function": {"name": "f"}}]},
                "tools[1].function.name",
            ),
            ({"tool_choice": 3}, "tool_choice"),
            (
                {"tool_choice": {"type": "function", "function": {"name": "g"}}},
                "tool_choice.function.name",
            ),
            ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
            ({"tools": [{}] * (MAX_TOOLS + 1)}, "tools"),
        ]
        for fields, param in cases:
            with self.assertRaises(AgentError, msg=repr(fields)) as caught:
                parseChatRequest(_request(fields))
            self.assertEqual(caught.exception.status, 400)
            self.assertEqual(caught.exception.param, param, repr(fields))

    def test_limitsAccepted(self) -> None:
        """
        L{MAX_TOOLS} tools and L{MAX_MESSAGES} messages are accepted; one
        more of either is a 400 C{array_above_max_length}.
        """
        tools = [{"type": "function", "function": {"name": f"t{n}"}} for n in range(MAX_TOOLS)]
        self.assertEqual(len(parseChatRequest(_request(tools=tools)).tools), MAX_TOOLS)
        messages = [{"role": "user", "content": "x"}] * MAX_MESSAGES
        self.assertEqual(len(parseChatRequest(_request(messages=messages)).messages), MAX_MESSAGES)
        for fields in ({"tools": [{}] * (MAX_TOOLS + 1)}, {"messages": messages + messages[:1]}):
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(_request(fields))
            self.assertEqual(caught.exception.code, "array_above_max_length")

    def test_echoedValuesShortened(self) -> None:
        """
        A client's value quoted in an error message is cut short, so a
        large body is not sent back.
        """
        for fields in (
            {"messages": [{"role": "x" * 100_000, "content": "x"}]},
            {"messages": [{"role": "user", "content": [{"type": "y" * 100_000}]}]},
        ):
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(_request(fields))
            self.assertLess(len(caught.exception.message), 300)

    def test_hugeNumbers(self) -> None:
        """
        Numbers too long to convert, or too large for a float, are a 400.
        """
        head = _request()[:-1]
        for body in (
            head + b', "seed": ' + b"9" * 10_000 + b"}",
            head + b', "temperature": 1e999}',
            head + b', "temperature": NaN}',
            head + b', "top_p": -Infinity}',
        ):
            with self.assertRaises(AgentError) as caught:
                parseChatRequest(body)
            self.assertEqual(caught.exception.status, 400)


# -- parsing off the reactor ------------------------------------------------


class _FakeThreadPool:
    """
    A thread pool that runs nothing until told to.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[bool, object], None], Callable[..., Any], Any]] = []

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, object], None], f: Callable[..., Any], *args: Any
    ) -> None:
        self.pending.append((onResult, f, args))

    def runOne(self) -> None:
        onResult, f, args = self.pending.pop(0)
        try:
            result = f(*args)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class _ImmediateReactor:
    """
    C{callFromThread} that calls at once.
    """

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class BodyGateParseTests(SynchronousTestCase):
    """
    L{BodyGate}, which every headend parses a large body through: the
    parse runs in the thread pool, and cancelling stops the wait at once.
    """

    def _parse(self, body: bytes) -> tuple[Deferred[Any], _FakeThreadPool, BodyGate]:
        pool = _FakeThreadPool()
        gate = BodyGate(_ImmediateReactor(), pool)
        return gate.parse(io.BytesIO(body)), pool, gate

    def test_largeBodyInPool(self) -> None:
        """
        A body is parsed in the pool; its request or its 400 arrives when
        the thread finishes, not before.
        """
        body = _request(messages=[{"role": "user", "content": "x" * 200}])
        d, pool, _ = self._parse(body)
        self.assertNoResult(d)
        pool.runOne()
        self.assertEqual(self.successResultOf(d).messages[0].content, "x" * 200)
        d, pool, _ = self._parse(b"[" * 300)
        self.assertNoResult(d)
        pool.runOne()
        self.assertIn("levels deep", self.failureResultOf(d, AgentError).value.message)

    def test_cancel(self) -> None:
        """
        Cancelling stops the wait at once; the thread's late result is
        dropped, and its slot is freed when it finishes, so the next body
        is parsed.
        """
        d, pool, gate = self._parse(_request(user="x" * 200))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        after = gate.parse(io.BytesIO(_request(user="y")))
        self.assertEqual(len(pool.pending), 1)
        pool.runOne()
        self.assertEqual(len(pool.pending), 1)
        pool.runOne()
        self.assertEqual(self.successResultOf(after).user, "y")


class _CountingThreadPool:
    """
    The reactor's thread pool, counting the work handed to it.
    """

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        reactor.getThreadPool().callInThreadWithCallback(*args, **kwargs)


class OffReactorServerTests(TestCase):
    """
    The real server parses a body under L{OFF_REACTOR_THRESHOLD} bytes at
    once, and one at or over it in the reactor's real thread pool.
    """

    async def test_threshold(self) -> None:
        """
        A body one byte under the threshold never reaches the thread pool;
        one at the threshold is parsed there, and its request is run.
        """
        server = await startServer(self)
        pool = _CountingThreadPool()
        server.headend.threadPool = pool
        server.headend.bodyGate = None
        server.upstream.script(Reply(content="small"), Reply(content="large"))
        port = server.port.getHost().port
        for expected, calls in (("small", 0), ("large", 1)):
            size = OFF_REACTOR_THRESHOLD - 1 + calls
            head = _request(messages=[{"role": "user", "content": ""}])
            padding = size - len(head)
            body = _request(messages=[{"role": "user", "content": "z" * padding}])
            self.assertEqual(len(body), size)
            status, _, data = await inThread(_post, port, body)
            self.assertEqual(status, 200, data[:300])
            self.assertEqual(json.loads(data)["choices"][0]["message"]["content"], expected)
            self.assertEqual(pool.calls, calls)


# -- the real server --------------------------------------------------------


def _post(port: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """
    POST C{body} to the chat completions route with a blocking client.
    """
    return _postTo(port, b"/v1/chat/completions", body)


def _postTo(port: int, path: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """
    POST C{body} to C{path} with a blocking client.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            path.decode("ascii"),
            body=body,
            headers={"Content-Type": "application/json", "Connection": "close"},
        )
        response = connection.getresponse()
        data = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, data
    finally:
        connection.close()


def _checkAnswer(testCase: TestCase, status: int, headers: dict[str, str], data: bytes) -> Any:
    """
    Never a 5xx; a 4xx is OpenAI's envelope as JSON; a 200 is a completion
    or a complete stream.  Returns the parsed JSON body, or the stream text.
    """
    testCase.assertLess(status, 500, data[:300])
    if status >= 400:
        testCase.assertTrue(headers["content-type"].startswith("application/json"))
        envelope = json.loads(data)
        testCase.assertEqual(set(envelope["error"]), _ENVELOPE_KEYS)
        return envelope
    testCase.assertEqual(status, 200)
    if headers["content-type"].startswith("text/event-stream"):
        text = data.decode("utf-8")
        testCase.assertTrue(text.endswith("data: [DONE]\n\n"), text[-200:])
        testCase.assertNotIn('data: {"error"', text)
        return text
    completion = json.loads(data)
    testCase.assertEqual(completion["object"], "chat.completion")
    return completion


_serverSettings = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class ServerPropertyTests(TestCase):
    """
    Generated bodies through the real server on a loopback socket.
    """

    async def test_anyJsonValue(self) -> None:
        """
        Any JSON value posted gets a 4xx envelope (or a completion), never
        a 5xx.
        """
        server = await startServer(self)
        port = server.port.getHost().port

        @_serverSettings
        @given(_json)
        def check(value: Any) -> None:
            for body in _encodings(value):
                _checkAnswer(self, *_post(port, body))

        await inThread(check)

    async def test_anyBytes(self) -> None:
        """
        Any byte string posted gets a 4xx envelope, never a 5xx.
        """
        server = await startServer(self)
        port = server.port.getHost().port

        @_serverSettings
        @given(st.binary(max_size=500))
        def check(body: bytes) -> None:
            _checkAnswer(self, *_post(port, body))

        await inThread(check)

    async def test_nearlyRightRequests(self) -> None:
        """
        Nearly-right chat requests get a 4xx envelope or a full answer
        (streamed or not), never a 5xx or an in-band error.
        """
        server = await startServer(self)
        port = server.port.getHost().port

        @_serverSettings
        @given(_chatRequest)
        def check(value: dict[str, Any]) -> None:
            for body in _encodings(value):
                _checkAnswer(self, *_post(port, body))

        await inThread(check)

    async def test_anyTextRoundTrips(self) -> None:
        """
        Any text without lone surrogates (NUL, BOM, astral and separators
        included) reaches the model and its echo comes back unchanged,
        streamed or not.
        """
        server = await startServer(self)
        port = server.port.getHost().port

        @_serverSettings
        @given(_goodText, st.booleans())
        def check(text: str, stream: bool) -> None:
            body = json.dumps(
                {
                    "model": "agent",
                    "messages": [{"role": "user", "content": text}],
                    "stream": stream,
                },
                ensure_ascii=False,
            ).encode("utf-8")
            answer = _checkAnswer(self, *_post(port, body))
            if stream:
                content = "".join(
                    json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                    for line in answer.split("\n\n")
                    if line.startswith("data: {")
                )
            else:
                content = answer["choices"][0]["message"]["content"]
            self.assertEqual(content, "echo: " + text)

        await inThread(check)


class ServerEdgeCaseTests(TestCase):
    """
    Specific hostile bodies through the real server.
    """

    async def test_loneSurrogate(self) -> None:
        """
        A lone surrogate in a message is a 400 naming the message's content,
        streamed or not, and the upstream is never called (it used to be a
        500, or a broken stream, when the echo could not be encoded).
        """
        server = await startServer(self)
        port = server.port.getHost().port
        for stream in (b"false", b"true"):
            body = (
                b'{"model": "agent", "messages": [{"role": "user", "content": "a \\ud800"}],'
                b' "stream": ' + stream + b"}"
            )
            status, headers, data = await inThread(_post, port, body)
            envelope = _checkAnswer(self, status, headers, data)
            self.assertEqual(status, 400)
            self.assertEqual(envelope["error"]["param"], "messages[0].content")
        self.assertEqual(server.upstream.requests, [])

    async def test_deepNesting(self) -> None:
        """
        A hundred thousand levels of nesting are a 400 naming the depth.
        """
        server = await startServer(self)
        body = b'{"model": "agent", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, headers, data = await inThread(_post, server.port.getHost().port, body)
        envelope = _checkAnswer(self, status, headers, data)
        self.assertEqual(status, 400)
        self.assertIn("levels deep", envelope["error"]["message"])

    async def test_manySmallNumbers(self) -> None:
        """
        The 8 MiB body of 4 million small numbers is a 400
        C{request_too_complex} in each API's envelope (Chat Completions,
        Responses, Messages), and the upstream is never called.
        """
        server = await startServer(self)
        port = server.port.getHost().port
        numbers = b"[" + b"0," * (4 * 1024 * 1024 - 200) + b"0]"
        for path, body, envelope in (
            (
                b"/v1/chat/completions",
                b'{"model": "agent", "messages": ' + numbers + b"}",
                "openai",
            ),
            (b"/v1/responses", b'{"model": "agent", "input": ' + numbers + b"}", "oa"),
            (
                b"/v1/messages",
                b'{"model": "agent", "max_tokens": 10, "messages": ' + numbers + b"}",
                "anthropic",
            ),
        ):
            status, headers, data = await inThread(_postTo, port, path, body)
            self.assertEqual(status, 400, data[:300])
            answer = json.loads(data)
            if envelope == "anthropic":
                self.assertEqual(answer["type"], "error")
                self.assertIn("JSON values", answer["error"]["message"])
            else:
                self.assertEqual(answer["error"]["code"], "request_too_complex")
        self.assertEqual(server.upstream.requests, [])

    async def test_mcpManyValues(self) -> None:
        """
        On C{/mcp}, the 8 MiB message of 4 million small numbers is a 400
        with JSON-RPC error -32600 naming the bound, parsed in the thread
        pool (a body of L{OFF_REACTOR_THRESHOLD} bytes or more), and the
        upstream is never called (it was parsed on the reactor, 0.5 s, and
        the call run).
        """
        server = await startServer(self)
        [headend] = [m.headend for m in server.mounts if isinstance(m.headend, McpHeadend)]
        pool = _CountingThreadPool()
        headend.bodyGate = BodyGate(reactor, pool)
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "agent", "arguments": {"prompt": "hi"}},
            "x": "@",
        }
        numbers = b"[" + b"0," * (4 * 1024 * 1024 - 200) + b"0]"
        body = json.dumps(call).encode().replace(b'"@"', numbers)
        status, _, data = await inThread(_postTo, server.port.getHost().port, b"/mcp", body)
        answer = json.loads(data)
        self.assertEqual((status, answer["error"]["code"]), (400, INVALID_REQUEST), data[:300])
        self.assertIn(f"at most {MAX_VALUES}", answer["error"]["message"])
        self.assertEqual(pool.calls, 1)
        self.assertEqual(server.upstream.requests, [])

    async def test_unicodeEdges(self) -> None:
        """
        NUL, a leading BOM, a BOM inside text and astral characters are
        answered with a completion echoing the text exactly.
        """
        server = await startServer(self)
        port = server.port.getHost().port
        text = "nul\x00 bom\ufeff astral\U0001f600 sep\u2028"
        body = json.dumps(
            {"model": "agent", "messages": [{"role": "user", "content": text}]},
            ensure_ascii=False,
        ).encode("utf-8")
        for payload in (body, b"\xef\xbb\xbf" + body):
            status, headers, data = await inThread(_post, port, payload)
            completion = _checkAnswer(self, status, headers, data)
            self.assertEqual(completion["choices"][0]["message"]["content"], "echo: " + text)


class UpstreamUnicodeTests(TestCase):
    """
    Hostile text from the other side: the model's answer.
    """

    async def test_loneSurrogateFromUpstream(self) -> None:
        """
        An upstream whose answer holds a lone surrogate escape never causes
        a 500 or a stream left unfinished: the answer arrives with the
        surrogate replaced by U+FFFD, streamed or not.
        """
        server = await startServer(self)
        port = server.port.getHost().port
        chunk = (
            b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{"content":"a \\ud800 b"},"finish_reason":null}]}\n\n'
        )
        end = (
            b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
        )
        user = [{"role": "user", "content": "hi"}]
        for stream in (False, True):
            server.upstream.script(Reply(rawChunks=[chunk, end]))
            body = json.dumps({"model": "agent", "messages": user, "stream": stream}).encode()
            status, headers, data = await inThread(_post, port, body)
            self.assertEqual(status, 200, data[:300])
            self.assertIn("a \ufffd b", data.decode("utf-8"))
            if headers["content-type"].startswith("text/event-stream"):
                self.assertTrue(data.endswith(b"data: [DONE]\n\n"), data[-200:])
