# -*- test-case-name: tests.test_tasks -*-
"""
Recognising chat UIs' background tasks.

Open WebUI and LibreChat ask the chat's model for small chores — a title
for the conversation, tags, follow-up questions, web search queries, input
autocompletion — as ordinary chat completions whose last message is a
prompt template.  Sent through an agent, each would run the whole agent
loop, tools included.  L{detectTask} tells such a request apart so the
headend can answer it with one direct call to the agent's first model.

What is matched, all case-insensitively and on the last message only
(except for the tool-choice prompt, which is a system message before it):

  - Open WebUI's templates render the conversation between
    C{<chat_history>} and C{</chat_history>}; the instructions before it
    name the answer's JSON key (C{"title"}, C{"tags"}, C{"follow_ups"},
    C{"queries"}, C{"text"}, C{"prompt"}) or, in older templates, the task
    in words ("3-5 word title", "broad tags", ...).  Both the tags and one
    of those are required.
  - LibreChat's title prompts: "5-word-or-less title for the conversation"
    (its completion and older prompts) and "concise title in the detected
    language" (its structured prompt).
  - Open WebUI's tool-choice prompt, sent in its I{Legacy} function
    calling mode: a system message with its template (the tools after
    C{Available Tools:}, an answer asked for as a C{"tool_calls"} JSON
    array), followed by the user message it renders (C{Query: ...}, or
    C{History: ...} then C{Query: ...}) as the last message.  This is
    C{function_calling}.
  - An C{X-OpenWebUI-Task} header, which recent Open WebUI versions can
    send from a connection's custom headers (value C{{{TASK}}}).

L{forwardedHeaders} picks out who asked — the user and chat headers these
UIs forward — for the run's log line.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence
from urllib.parse import unquote

from ai_agent.providers import ChatMessage

#: Open WebUI's task names (its C{TASKS} values) → ours.
_OPEN_WEBUI_TASKS = {
    "title_generation": "title",
    "tags_generation": "tags",
    "follow_up_generation": "follow_ups",
    "query_generation": "queries",
    "autocomplete_generation": "autocomplete",
    "emoji_generation": "emoji",
    "image_prompt_generation": "image_prompt",
    "function_calling": "function_calling",
    "moa_response_generation": "moa",
}

#: Header values that mean "an ordinary chat".
_NOT_A_TASK = frozenset({"", "default", "none"})

#: Open WebUI's tags around the conversation (matched in lower case).
_HISTORY_OPEN = "<chat_history>"
_HISTORY_CLOSE = "</chat_history>"

#: The JSON key an Open WebUI template asks for → the task.
_JSON_KEY = re.compile(r'\{\s*"(title|tags|follow_ups|queries|text|prompt)"\s*:')
_BY_KEY = {
    "title": "title",
    "tags": "tags",
    "follow_ups": "follow_ups",
    "queries": "queries",
    "text": "autocomplete",
    "prompt": "image_prompt",
}

#: Older Open WebUI templates, without a JSON key: phrase → task.
_OPEN_WEBUI_PHRASES = (
    (re.compile(r"\b3-5 word title\b"), "title"),
    (re.compile(r"\bbroad tags\b"), "tags"),
    (re.compile(r"\bfollow[- ]up questions\b"), "follow_ups"),
    (re.compile(r"\bsearch quer(y|ies)\b"), "queries"),
    (re.compile(r"\bautocompletion system\b"), "autocomplete"),
)

_LIBRECHAT_TITLES = (
    "5-word-or-less title for the conversation",
    "concise title in the detected language",
)

#: Open WebUI's tool-choice template (C{DEFAULT_TOOLS_FUNCTION_CALLING_PROMPT_TEMPLATE}):
#: the tools after "Available Tools:", the answer a C{"tool_calls"} array.
_TOOL_CHOICE_TOOLS = re.compile(r"^\s*Available Tools:", re.IGNORECASE)
_TOOL_CHOICE_ANSWER = re.compile(r'\{\s*"tool_calls"\s*:\s*\[', re.IGNORECASE)
#: The user message it goes with: C{Query: ...}, or the recent history
#: first (C{History: ...}) and a C{Query:} line.
_QUERY = re.compile(r"Query:|History:.*^Query:", re.IGNORECASE | re.DOTALL | re.MULTILINE)
#: A long message is lowered and searched in pieces of this many
#: characters: each a short call of C code, so that in a thread the work
#: leaves the reactor's thread the interpreter between two of them.
_PIECE = 128 * 1024
#: Pieces searched overlap by this much, the longest match looked for.
_OVERLAP = 256

_TASK_NAME = re.compile(r"[^a-z0-9_]+")

#: Headers that say who asked, as chat UIs forward them: Open WebUI's with
#: C{ENABLE_FORWARD_USER_INFO_HEADERS=true}, and the names suggested for
#: LibreChat's configurable C{headers} (and used by other gateways).
FORWARDED_HEADERS = (
    "X-OpenWebUI-User-Id",
    "X-OpenWebUI-User-Name",
    "X-OpenWebUI-User-Email",
    "X-OpenWebUI-User-Role",
    "X-OpenWebUI-Chat-Id",
    "X-OpenWebUI-Message-Id",
    "X-User-Id",
    "X-User-Name",
    "X-User-Email",
    "X-User-Role",
    "X-Chat-Id",
    "X-Conversation-Id",
    "X-Session-Id",
    "X-Message-Id",
)

#: Open WebUI percent-encodes the user's name.
_PERCENT_ENCODED = frozenset({"X-OpenWebUI-User-Name"})

#: The longest value kept from a forwarded header.
MAX_FORWARDED_LENGTH = 200


def detectTask(messages: Sequence[ChatMessage], taskHeader: str | None = None) -> str | None:
    """
    The background task a chat request is, or L{None} for a real chat.

    @param messages: the request's conversation.
    @param taskHeader: the request's C{X-OpenWebUI-Task} header, if any.
    @return: C{title}, C{tags}, C{follow_ups}, C{queries},
        C{autocomplete}, C{image_prompt}, C{function_calling}, or (from the
        header) another task name.
    """
    decided, task = headerTask(taskHeader)
    return task if decided else messageTask(messages)


def headerTask(taskHeader: str | None) -> tuple[bool, str | None]:
    """
    What an C{X-OpenWebUI-Task} header says: whether it decides (it names
    a task), and the task.  An absent header, or one meaning "an ordinary
    chat", leaves it to the messages (L{messageTask}).
    """
    if taskHeader is not None:
        value = taskHeader.strip().lower()
        if value not in _NOT_A_TASK:
            known = _OPEN_WEBUI_TASKS.get(value)
            return True, known or (_TASK_NAME.sub("_", value).strip("_")[:64] or None)
    return False, None


def messageTask(messages: Sequence[ChatMessage]) -> str | None:
    """
    The background task a chat request's conversation shows it is (what
    L{detectTask} finds without a header).  For a large body it is run in
    the thread that parses it: its work on a message of a few MB is done in
    pieces, between which the reactor's thread gets the interpreter.
    """
    if not messages:
        return None
    last = messages[-1]
    if last.role not in ("user", "system"):
        return None
    text = _lowered(last.content)
    return _openWebUITask(text) or _libreChatTask(text) or _openWebUIToolChoice(messages)


def _lowered(text: str) -> str:
    """
    C{text} in lower case (what is matched is ASCII), made piece by piece.
    """
    if len(text) <= _PIECE:
        return text.lower()
    return "".join(text[i : i + _PIECE].lower() for i in range(0, len(text), _PIECE))


def _search(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """
    The first match of C{pattern} (at most L{_OVERLAP} characters long) in
    C{text}, searched piece by piece.
    """
    for start in range(0, max(len(text), 1), _PIECE):
        end = start + _PIECE + _OVERLAP
        found = pattern.search(text, start, end)
        # (A match at the end of a piece might be cut short by it; the next
        # piece holds it whole.)
        if found is not None and (found.end() < end or end >= len(text)):
            return found
    return None


def _openWebUITask(text: str) -> str | None:
    # The instructions come before the first opening tag that a closing tag
    # follows (found by plain searches: a regular expression spanning the
    # two took time growing with the square of the tags in the text).
    opening = text.find(_HISTORY_OPEN)
    if opening < 0 or text.rfind(_HISTORY_CLOSE) < opening + len(_HISTORY_OPEN):
        return None
    instructions = text[:opening]
    key = _search(_JSON_KEY, instructions)
    if key is not None:
        return _BY_KEY[key.group(1)]
    for phrase, task in _OPEN_WEBUI_PHRASES:
        if _search(phrase, instructions):
            return task
    return None


def _openWebUIToolChoice(messages: Sequence[ChatMessage]) -> str | None:
    """
    C{function_calling} when C{messages} are Open WebUI's Legacy
    tool-choice request: its template as the system message right before
    the last message, a user message rendered as C{Query: ...} (or
    C{History: ...} with a C{Query:} line).
    """
    if len(messages) < 2:
        return None
    system, query = messages[-2], messages[-1]
    if system.role != "system" or query.role != "user":
        return None
    if not _QUERY.match(query.content):
        return None
    if _TOOL_CHOICE_TOOLS.search(system.content) and _TOOL_CHOICE_ANSWER.search(system.content):
        return "function_calling"
    return None


def _libreChatTask(text: str) -> str | None:
    return "title" if any(title in text for title in _LIBRECHAT_TITLES) else None


def forwardedHeaders(getHeader: Callable[[bytes], bytes | None]) -> dict[str, str]:
    """
    The L{FORWARDED_HEADERS} a request carries, by their canonical names,
    made safe for a log line (see L{loggable}).  Empty values and
    placeholders the client left unfilled (C{{{...}}}) are left out.

    @param getHeader: the request's C{getHeader}.
    """
    found: dict[str, str] = {}
    for name in FORWARDED_HEADERS:
        raw = getHeader(name.lower().encode("ascii"))
        if raw is None:
            continue
        value = raw.decode("utf-8", "replace").strip()
        if name in _PERCENT_ENCODED:
            value = unquote(value)
        if not value or "{{" in value:
            continue
        found[name] = loggable(value)
    return found


def loggable(value: str, limit: int = MAX_FORWARDED_LENGTH) -> str:
    """
    C{value} with control characters (line breaks included) replaced by
    spaces and cut to C{limit} characters, so a client cannot forge or
    flood log lines.
    """
    cleaned = "".join(ch if ch.isprintable() else " " for ch in value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


__all__ = [
    "FORWARDED_HEADERS",
    "detectTask",
    "forwardedHeaders",
    "headerTask",
    "loggable",
    "messageTask",
]
