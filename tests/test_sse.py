"""
Tests for L{ai_agent.sse}: the incremental event-stream parser.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ai_agent.sse import (
    SSEDecodeError,
    SSEError,
    SSEEvent,
    SSEOverflowError,
    SSEParser,
)


def parseAll(data: bytes, pieces: list[int] | None = None) -> list[SSEEvent]:
    """
    Feed C{data} to a new parser, split at the given sizes (then the rest).
    """
    parser = SSEParser()
    events: list[SSEEvent] = []
    position = 0
    for size in pieces or []:
        events.extend(parser.feed(data[position : position + size]))
        position += size
    events.extend(parser.feed(data[position:]))
    parser.close()
    return events


class FieldTests(SynchronousTestCase):
    """
    The fields of the event-stream format.
    """

    def test_dataEvent(self) -> None:
        """
        A C{data:} line and a blank line make one C{message} event without
        an id.
        """
        self.assertEqual(parseAll(b"data: hello\n\n"), [SSEEvent("hello")])

    def test_multipleDataLines(self) -> None:
        """
        The C{data:} lines of one event are joined with C{"\\n"}.
        """
        self.assertEqual(
            parseAll(b"data: one\ndata: two\ndata:\ndata:  three\n\n"),
            [SSEEvent("one\ntwo\n\n three")],
        )

    def test_optionalSpace(self) -> None:
        """
        Only one space after the colon is removed, and it is optional.
        """
        self.assertEqual(parseAll(b"data:x\n\ndata:  y\n\n"), [SSEEvent("x"), SSEEvent(" y")])

    def test_eventAndId(self) -> None:
        """
        C{event:} names one event; the last C{id:} persists on later events.
        """
        self.assertEqual(
            parseAll(b"event: ping\nid: 7\ndata: a\n\ndata: b\n\n"),
            [SSEEvent("a", "ping", "7"), SSEEvent("b", "message", "7")],
        )

    def test_idWithNullIgnored(self) -> None:
        """
        An C{id:} containing NUL is ignored.
        """
        self.assertEqual(parseAll(b"id: a\0b\ndata: x\n\n"), [SSEEvent("x")])

    def test_retry(self) -> None:
        """
        A numeric C{retry:} sets the reconnection time; others are ignored.
        """
        parser = SSEParser()
        parser.feed(b"retry: 1500\n\nretry: soon\n\n")
        self.assertEqual(parser.reconnectionTime, 1500)

    def test_comments(self) -> None:
        """
        Lines starting with a colon are ignored, even inside an event.
        """
        self.assertEqual(
            parseAll(b": keep-alive\n\ndata: a\n: note\ndata: b\n\n"), [SSEEvent("a\nb")]
        )

    def test_fieldWithoutColon(self) -> None:
        """
        A line without a colon is a field with an empty value: C{data}
        alone adds an empty line; unknown fields are ignored.
        """
        self.assertEqual(parseAll(b"data\ndata\nbogus\n\n"), [SSEEvent("\n")])

    def test_emptyDataEventDispatched(self) -> None:
        """
        C{data:} with nothing after it still makes an event with empty data,
        but a block without any data line makes none.
        """
        self.assertEqual(parseAll(b"data:\n\nevent: x\n\n"), [SSEEvent("")])

    def test_lineEndings(self) -> None:
        """
        C{\\r\\n}, C{\\r} and C{\\n} all end lines.
        """
        self.assertEqual(
            parseAll(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"),
            [SSEEvent("a"), SSEEvent("b"), SSEEvent("c")],
        )

    def test_bom(self) -> None:
        """
        One leading UTF-8 byte order mark is skipped.
        """
        self.assertEqual(parseAll(b"\xef\xbb\xbfdata: a\n\n"), [SSEEvent("a")])

    def test_bomSplit(self) -> None:
        """
        The byte order mark is recognised even when split across reads.
        """
        self.assertEqual(parseAll(b"\xef\xbb\xbfdata: a\n\n", [1, 1]), [SSEEvent("a")])

    def test_incompleteEventDiscarded(self) -> None:
        """
        An event without its blank line is not dispatched.
        """
        self.assertEqual(parseAll(b"data: a\n\ndata: b\n"), [SSEEvent("a")])

    def test_feedReturnsCompletedEvents(self) -> None:
        """
        L{SSEParser.feed} returns only the events its bytes completed.
        """
        parser = SSEParser()
        self.assertEqual(parser.feed(b"data: a"), [])
        self.assertEqual(parser.feed(b"bc\n"), [])
        self.assertEqual(parser.feed(b"\ndata: d\n\nda"), [SSEEvent("abc"), SSEEvent("d")])


class SplitTests(SynchronousTestCase):
    """
    Bytes may be split anywhere.
    """

    def test_splitUTF8(self) -> None:
        """
        Multi-byte characters split across reads are decoded whole.
        """
        data = "data: héllo wörld 你好 🎉\n\n".encode()
        self.assertEqual(parseAll(data, [1] * len(data)), [SSEEvent("héllo wörld 你好 🎉")])

    def test_splitCRLF(self) -> None:
        """
        A C{\\r\\n} split between reads is one line end, not two.
        """
        data = b"data: a\r\ndata: b\r\n\r\n"
        self.assertEqual(parseAll(data, [8, 1, 8, 1, 1]), [SSEEvent("a\nb")])

    @settings(max_examples=200, deadline=None, database=None)
    @given(
        events=st.lists(
            st.tuples(
                st.lists(
                    st.text(
                        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")
                    ),
                    min_size=1,
                ),
                st.sampled_from(["", "update"]),
            ),
            max_size=5,
        ),
        newline=st.sampled_from(["\n", "\r\n", "\r"]),
        bom=st.booleans(),
        cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    )
    def test_anySplitSameEvents(
        self,
        events: list[tuple[list[str], str]],
        newline: str,
        bom: bool,
        cuts: list[int],
    ) -> None:
        """
        Feeding a stream in any pieces yields the same events as feeding it
        whole, and those are the events that were encoded.
        """
        text = "\ufeff" if bom else ""
        expected = []
        for lines, eventType in events:
            if eventType:
                text += f"event: {eventType}{newline}"
            for line in lines:
                text += f"data: {line}{newline}"
            text += newline
            expected.append(SSEEvent("\n".join(lines), eventType or "message"))
        data = text.encode("utf-8")
        positions = sorted({min(cut, len(data)) for cut in cuts})
        sizes = [b - a for a, b in zip([0, *positions], positions, strict=False)]
        self.assertEqual(parseAll(data), expected)
        self.assertEqual(parseAll(data, sizes), expected)


class ErrorTests(SynchronousTestCase):
    """
    Invalid streams raise L{SSEError}s.
    """

    def test_invalidUTF8(self) -> None:
        """
        Bytes that are not UTF-8 raise L{SSEDecodeError}.
        """
        parser = SSEParser()
        error = self.assertRaises(SSEDecodeError, parser.feed, b"data: \xff\xfe\n\n")
        self.assertIn("UTF-8", str(error))
        self.assertIsInstance(error, SSEError)

    def test_cutCharacterAtClose(self) -> None:
        """
        A stream ending inside a UTF-8 character raises at L{SSEParser.close}.
        """
        parser = SSEParser()
        parser.feed("data: é".encode()[:-1])
        self.assertRaises(SSEDecodeError, parser.close)

    def test_lineOverflow(self) -> None:
        """
        A line longer than C{maxBuffer} raises L{SSEOverflowError}, even
        arriving in small pieces.
        """
        parser = SSEParser(maxBuffer=32)
        parser.feed(b"data: " + b"x" * 20)
        self.assertRaises(SSEOverflowError, parser.feed, b"x" * 20)

    def test_eventOverflow(self) -> None:
        """
        An event whose data lines add up beyond C{maxBuffer} raises.
        """
        parser = SSEParser(maxBuffer=32)
        parser.feed(b"data: 0123456789\ndata: 0123456789\n")
        self.assertRaises(SSEOverflowError, parser.feed, b"data: 0123456789\n")

    def test_bufferFreedByEvents(self) -> None:
        """
        The limit is per event: many small events pass.
        """
        parser = SSEParser(maxBuffer=32)
        events = parser.feed(b"data: 0123456789\n\n" * 100)
        self.assertEqual(len(events), 100)

    def test_invalidMaxBuffer(self) -> None:
        """
        C{maxBuffer} must be positive.
        """
        self.assertRaises(ValueError, SSEParser, maxBuffer=0)
