"""
Chat UIs' background tasks: L{ai_agent.tasks} recognises them, and the
headend answers them with one direct call to the agent's first model; the
run's log line records who asked.

The prompts below keep the phrases and the structure Open WebUI and
LibreChat send (the parts the detection relies on); the rest of each
template is paraphrased.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import openai
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider

from ai_agent import tasks
from ai_agent.providers import ChatMessage
from ai_agent.tasks import FORWARDED_HEADERS, detectTask, forwardedHeaders, loggable
from ai_agent.testing import Reply
from tests._harness import inThread, startServer


def captureRunLogs(testCase: TestCase) -> list[LogEvent]:
    """
    Collect the headend's per-request log events (those with a
    C{requestId}) until C{testCase} ends.
    """
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if "requestId" in event and "forwarded" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    testCase.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


HISTORY = "<chat_history>\nUSER: What is the capital of France?\nASSISTANT: Paris.\n</chat_history>"

OPEN_WEBUI_TITLE = (
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
    "### Guidelines:\n- Keep it short and in the chat's language.\n"
    '### Output:\nJSON format: { "title": "your concise title here" }\n'
    f"### Chat History:\n{HISTORY}"
)
OPEN_WEBUI_TAGS = (
    "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history, "
    "along with 1-3 more specific subtopic tags.\n\n### Guidelines:\n- Be accurate.\n\n"
    '### Output:\nJSON format: { "tags": ["tag1", "tag2", "tag3"] }\n\n'
    f"### Chat History:\n{HISTORY}"
)
OPEN_WEBUI_FOLLOW_UPS = (
    "### Task:\nSuggest 3-5 relevant follow-up questions or prompts that the user might ask "
    "next.\n### Guidelines:\n- From the user's point of view.\n"
    '### Output:\nJSON format: { "follow_ups": ["Question 1?", "Question 2?"] }\n'
    f"### Chat History:\n{HISTORY}"
)
OPEN_WEBUI_QUERIES = (
    "### Task:\nAnalyze the chat history to determine the necessity of generating search "
    "queries, in the given language.\n\n### Guidelines:\n"
    '- Respond in the format: { "queries": ["query1", "query2"] }\n'
    "- Today's date is: 2026-11-24.\n\n"
    '### Output:\nStrictly return in JSON format: \n{\n  "queries": ["query1"]\n}\n\n'
    f"### Chat History:\n{HISTORY}\n"
)
OPEN_WEBUI_AUTOCOMPLETE = (
    "### Task:\nYou are an autocompletion system. Continue the text in `<text>`.\n\n"
    '### **Output Rules**:\n- Respond only in JSON format: `{ "text": "<your_completion>" }`.\n\n'
    f"---\n### Context:\n{HISTORY}\n<type>General</type>\n<text>The weather in</text>\n"
    "#### Output:\n"
)
OPEN_WEBUI_IMAGE_PROMPT = (
    "### Task:\nGenerate a detailed prompt for an image generation task.\n\n"
    '### Output:\nStrictly return in JSON format:\n{\n    "prompt": "Your description."\n}\n\n'
    f"### Chat History:\n{HISTORY}"
)
#: Open WebUI 0.12's wording: no emoji in titles, "messages" to send next.
OPEN_WEBUI_012_TITLE = (
    "### Task:\nGenerate a concise title summarizing the chat history.\n"
    "### Guidelines:\n- Two to four words.\n"
    '### Output:\nJSON format: { "title": "your concise title here" }\n'
    '### Examples:\n- { "title": "Remote Work" }\n'
    f"### Chat History:\n{HISTORY}"
)
OPEN_WEBUI_012_FOLLOW_UPS = (
    "### Task:\nPredict 3-5 useful messages this user might naturally send next.\n"
    '### Guidelines:\n- A JSON object with a "follow_ups" key.\n'
    '### Output:\nJSON format: { "follow_ups": ["Suggested next message 1"] }\n'
    f"### Chat History:\n{HISTORY}"
)
OPEN_WEBUI_OLD_TITLE = (
    "Create a concise, 3-5 word title with an emoji as a title for the chat history, in the "
    "given language. RESPOND ONLY WITH THE TITLE TEXT.\n\n"
    f"Chat History:\n{HISTORY}"
)
LIBRECHAT_TITLE = (
    "Provide a concise, 5-word-or-less title for the conversation, using title case "
    "conventions. Only return the title itself.\n\nConversation:\n"
    "User: What is the capital of France?\nAI: Paris."
)
LIBRECHAT_OLD_TITLE = (
    "Please generate a concise, 5-word-or-less title for the conversation, using its same "
    "language, with no punctuation.\n\n||>User:\nhi\n||>Response:\nhello\n\n||>Title:"
)
LIBRECHAT_STRUCTURED_TITLE = (
    "Analyze this conversation and provide:\n1. The detected language of the conversation\n"
    "2. A concise title in the detected language (5 words or less, no punctuation or "
    "quotation)\n\nUser: hi\nAI: hello"
)

#: Open WebUI's tool-choice template (C{DEFAULT_TOOLS_FUNCTION_CALLING_PROMPT_TEMPLATE} in
#: its C{config.py}, 0.12) as it sends it, with C{{{TOOLS}}} rendered as Open WebUI does
#: (its tools' specs as JSON).
OPEN_WEBUI_TOOL_CHOICE = (
    'Available Tools: [{"name": "get_current_time", "description": "Get the current time.", '
    '"parameters": {"type": "object", "properties": {}}}]\n\n'
    "Your task is to choose and return the correct tool(s) from the list of available tools "
    "based on the query. Follow these guidelines:\n\n"
    "- Return only the JSON object, without any additional text or explanation.\n\n"
    '- If no tools match the query, return an empty array: \n   {\n     "tool_calls": []\n   }'
    "\n\n"
    '- If one or more tools match the query, construct a JSON response containing a "tool_calls"'
    " array with objects that include:\n"
    '   - "name": The tool\'s name.\n'
    '   - "parameters": A dictionary of required parameters and their corresponding values.\n\n'
    "The format for the JSON response is strictly:\n"
    '{\n  "tool_calls": [\n'
    '    {"name": "toolName1", "parameters": {"key1": "value1"}},\n'
    '    {"name": "toolName2", "parameters": {"key2": "value2"}}\n'
    "  ]\n}"
)
#: The user message Open WebUI 0.12 sends with it: the query alone on a new chat, the
#: recent messages first (C{History:}) later in a chat.
OPEN_WEBUI_TOOL_QUERY = "Query: What time is it?"
OPEN_WEBUI_TOOL_QUERY_WITH_HISTORY = (
    'History:\nUSER: """Hello"""\nASSISTANT: """Hi! How can I help?"""\nQuery: What time is it?'
)


def _toolChoice(query: str) -> list[ChatMessage]:
    return [ChatMessage("system", OPEN_WEBUI_TOOL_CHOICE), ChatMessage("user", query)]


def _user(text: str) -> list[ChatMessage]:
    return [ChatMessage("user", text)]


class DetectTaskTests(SynchronousTestCase):
    """
    L{detectTask} names the background task a request is, from the last
    message or the C{X-OpenWebUI-Task} header, and leaves real chats alone.
    """

    def test_openWebUITemplates(self) -> None:
        """
        Open WebUI's current templates are told apart by the JSON key their
        instructions ask for.
        """
        cases = {
            "title": OPEN_WEBUI_TITLE,
            "tags": OPEN_WEBUI_TAGS,
            "follow_ups": OPEN_WEBUI_FOLLOW_UPS,
            "queries": OPEN_WEBUI_QUERIES,
            "autocomplete": OPEN_WEBUI_AUTOCOMPLETE,
            "image_prompt": OPEN_WEBUI_IMAGE_PROMPT,
        }
        self.assertEqual(
            {task: detectTask(_user(text)) for task, text in cases.items()},
            {task: task for task in cases},
        )

    def test_openWebUI012(self) -> None:
        """
        Open WebUI 0.12's reworded title and follow-up templates are still
        told apart by their JSON keys.
        """
        self.assertEqual(detectTask(_user(OPEN_WEBUI_012_TITLE)), "title")
        self.assertEqual(detectTask(_user(OPEN_WEBUI_012_FOLLOW_UPS)), "follow_ups")

    def test_openWebUIOldTitle(self) -> None:
        """
        Open WebUI's older title template, which asks for plain text, is
        recognised by its wording.
        """
        self.assertEqual(detectTask(_user(OPEN_WEBUI_OLD_TITLE)), "title")

    def test_caseAndRole(self) -> None:
        """
        Matching ignores letter case, and a task prompt sent as the last
        system message counts too.
        """
        self.assertEqual(detectTask(_user(OPEN_WEBUI_TAGS.upper())), "tags")
        self.assertEqual(detectTask([ChatMessage("system", OPEN_WEBUI_TITLE)]), "title")

    def test_libreChatTitles(self) -> None:
        """
        LibreChat's title prompts (completion, older and structured) are
        titles.
        """
        for prompt in (LIBRECHAT_TITLE, LIBRECHAT_OLD_TITLE, LIBRECHAT_STRUCTURED_TITLE):
            self.assertEqual(detectTask(_user(prompt)), "title", prompt)

    def test_lastMessageOnly(self) -> None:
        """
        A task prompt earlier in the conversation does not make the request
        a task; neither does one in the last message when that is an
        assistant's.
        """
        conversation = [
            ChatMessage("user", OPEN_WEBUI_TITLE),
            ChatMessage("assistant", '{"title": "Paris"}'),
            ChatMessage("user", "Tell me more about Paris."),
        ]
        self.assertIsNone(detectTask(conversation))
        self.assertIsNone(detectTask([ChatMessage("assistant", OPEN_WEBUI_TITLE)]))
        self.assertIsNone(detectTask([]))

    def test_ordinaryChats(self) -> None:
        """
        Requests that talk about titles, tags or chat histories are not
        tasks without the templates' structure.
        """
        for text in (
            "Suggest a 3-5 word title for my essay about whales.",
            'Return JSON like { "title": "x" } for this book.',
            "<chat_history>we talked</chat_history> what did we say?",
            "Generate 1-3 broad tags for this article.",
            "Give me a concise title for the conversation we had yesterday.",
        ):
            self.assertIsNone(detectTask(_user(text)), text)

    def test_openWebUILegacyToolChoice(self) -> None:
        """
        Open WebUI's Legacy function calling request (its tool-choice
        template as the system message, then C{Query: ...}, with or without
        the chat's history before it) is the C{function_calling} task.
        """
        self.assertEqual(detectTask(_toolChoice(OPEN_WEBUI_TOOL_QUERY)), "function_calling")
        self.assertEqual(
            detectTask(_toolChoice(OPEN_WEBUI_TOOL_QUERY_WITH_HISTORY)), "function_calling"
        )
        # Older versions put "Query: " before the history too.
        self.assertEqual(
            detectTask(_toolChoice("Query: " + OPEN_WEBUI_TOOL_QUERY_WITH_HISTORY)),
            "function_calling",
        )

    def test_toolChoiceNeedsBothMessages(self) -> None:
        """
        Neither half of the tool-choice request is a task alone: the
        template needs the C{Query:} message right after it, and a
        C{Query:} message needs the template as the system message before
        it; a chat continuing after the template is a chat.
        """
        self.assertIsNone(detectTask(_user(OPEN_WEBUI_TOOL_QUERY)))
        self.assertIsNone(detectTask([ChatMessage("system", OPEN_WEBUI_TOOL_CHOICE)]))
        self.assertIsNone(
            detectTask(_toolChoice("What time is it? Answer with a Query: line at the end."))
        )
        self.assertIsNone(
            detectTask(
                [ChatMessage("system", "You are helpful."), ChatMessage("user", "Query: hi")]
            )
        )
        self.assertIsNone(
            detectTask(
                [
                    *_toolChoice(OPEN_WEBUI_TOOL_QUERY),
                    ChatMessage("assistant", '{"tool_calls": []}'),
                    ChatMessage("user", "Query: and the date?"),
                ]
            )
        )

    def test_taskHeader(self) -> None:
        """
        An C{X-OpenWebUI-Task} header names the task whatever the
        messages: Open WebUI's task names are mapped, others kept in a
        safe form; empty and C{default} mean an ordinary chat.
        """
        hello = _user("hello")
        self.assertEqual(detectTask(hello, "title_generation"), "title")
        self.assertEqual(detectTask(hello, " Query_Generation "), "queries")
        self.assertEqual(detectTask(hello, "some new-task!"), "some_new_task")
        self.assertIsNone(detectTask(hello, ""))
        self.assertIsNone(detectTask(hello, "default"))
        self.assertIsNone(detectTask(hello, "!!!"))


class LongMessageTests(SynchronousTestCase):
    """
    Detection on long messages: no search whose time grows faster than the
    text, and the pieces a long text is searched in change no answer.
    """

    def test_historyTagsAgreeWithTheRegularExpression(self) -> None:
        """
        Where the conversation starts is what the regular expression
        C{<chat_history>.*</chat_history>} found (the first opening tag a
        closing tag follows), for texts made of tags, JSON keys and words
        in every order; that expression took time growing with the square
        of the number of tags (5 s for 224 KB of opening tags, on the
        reactor's thread).
        """
        oracle = re.compile(r"<chat_history>.*</chat_history>", re.IGNORECASE | re.DOTALL)
        parts = ["<chat_history>", "</chat_history>", "<CHAT_HISTORY>", '{"title":', " x "]
        for a in parts:
            for b in parts:
                for c in parts:
                    for d in parts:
                        text = a + b + c + d
                        match = oracle.search(text)
                        expected = None
                        if match is not None and '{"title":' in text[: match.start()]:
                            expected = "title"
                        self.assertEqual(tasks._openWebUITask(text.lower()), expected, text)

    def test_searchedInPieces(self) -> None:
        """
        With pieces of a few characters, a phrase or a JSON key straddling
        two pieces is found, and one cut short by a piece's end is not
        taken for a whole word.
        """
        self.patch(tasks, "_PIECE", 7)
        self.patch(tasks, "_OVERLAP", 40)
        title = "Summarize the chat as a 3-5 word title.\n<chat_history>\nUSER: hi\n</chat_history>"
        self.assertEqual(detectTask(_user(title)), "title")
        tags = 'Answer {  "tags": [...] }.<chat_history></chat_history>'
        self.assertEqual(detectTask(_user(tags)), "tags")
        cut = "xxx broad tagsy <chat_history></chat_history>"
        self.assertIsNone(detectTask(_user(cut)))
        self.assertEqual(detectTask(_user("A 5-word-or-less title for the conversation")), "title")

    def test_longTitlePrompt(self) -> None:
        """
        A title prompt whose history is megabytes long is still a title,
        and megabytes of opening tags are not a task.
        """
        history = "USER: " + "words " * 500_000
        prompt = OPEN_WEBUI_TITLE.replace("<chat_history>", "<chat_history>" + history)
        self.assertEqual(detectTask(_user(prompt)), "title")
        self.assertIsNone(detectTask(_user("<chat_history>" * 600_000)))


class ForwardedHeadersTests(SynchronousTestCase):
    """
    L{forwardedHeaders} keeps the user and chat headers chat UIs forward,
    safe for a log line, and nothing else.
    """

    def _lookup(self, headers: dict[str, str]) -> Any:
        lowered = {name.lower().encode(): value.encode() for name, value in headers.items()}
        return lowered.get

    def test_openWebUI(self) -> None:
        """
        Open WebUI's user, chat and message headers are kept under their
        canonical names; the user name is percent-decoded.
        """
        found = forwardedHeaders(
            self._lookup(
                {
                    "x-openwebui-user-id": "u-1",
                    "X-OPENWEBUI-USER-NAME": "Ada%20Lovelace%C3%A9",
                    "X-OpenWebUI-User-Email": "ada@example.com",
                    "X-OpenWebUI-User-Role": "admin",
                    "X-OpenWebUI-Chat-Id": "c-1",
                    "X-OpenWebUI-Message-Id": "m-1",
                }
            )
        )
        self.assertEqual(
            found,
            {
                "X-OpenWebUI-User-Id": "u-1",
                "X-OpenWebUI-User-Name": "Ada Lovelaceé",
                "X-OpenWebUI-User-Email": "ada@example.com",
                "X-OpenWebUI-User-Role": "admin",
                "X-OpenWebUI-Chat-Id": "c-1",
                "X-OpenWebUI-Message-Id": "m-1",
            },
        )

    def test_skipped(self) -> None:
        """
        Empty values, unfilled C{{{placeholders}}} and every header not in
        the list (C{Authorization} above all) are left out.
        """
        found = forwardedHeaders(
            self._lookup(
                {
                    "Authorization": "Bearer sk-secret",
                    "X-Api-Key": "sk-secret",
                    "X-User-Id": "  ",
                    "X-Chat-Id": "{{LIBRECHAT_BODY_CONVERSATIONID}}",
                    "X-Session-Id": "s-1",
                }
            )
        )
        self.assertEqual(found, {"X-Session-Id": "s-1"})
        self.assertNotIn("Authorization", FORWARDED_HEADERS)

    def test_sanitised(self) -> None:
        """
        Line breaks and other control characters become spaces and long
        values are cut, so a header cannot forge or flood log lines.
        """
        found = forwardedHeaders(self._lookup({"X-User-Id": "a\r\nFAKE LINE\x1b[31m" + "x" * 500}))
        value = found["X-User-Id"]
        self.assertTrue(value.startswith("a  FAKE LINE [31m"))
        self.assertEqual(len(value), 200)
        self.assertEqual(loggable("\tok\n"), " ok ")


TOOL_AGENTS = {
    "chat.ai": (
        "---\ndescription: Parent\nmodels: [fake/first-model, fake/second-model]\n"
        "agents: [helper.ai]\n---\nYou are the chat agent.\n"
    ),
    "helper.ai": "---\ndescription: Helps\nmodels: fake/helper-model\n---\nYou help.\n",
}

OPEN_WEBUI_HEADERS = {
    "X-OpenWebUI-User-Id": "owui-user-1",
    "X-OpenWebUI-User-Name": "Ada%20L",
    "X-OpenWebUI-User-Email": "ada@example.com",
    "X-OpenWebUI-User-Role": "user",
    "X-OpenWebUI-Chat-Id": "owui-chat-1",
}


class ShortcutTests(TestCase):
    """
    A background task is answered by one direct call to the agent's first
    model, without the agent's prompt or tools, as the client sent it.
    """

    async def test_openWebUITitle(self) -> None:
        """
        Open WebUI's title request (one user message, not streamed, with its
        forwarded headers) reaches the agent's first model as it was sent:
        no agent prompt, no tools; the answer is the model's text, and the
        log line names the task, the user and the forwarded headers.
        """
        server = await startServer(self, TOOL_AGENTS)
        logs = captureRunLogs(self)
        server.upstream.script(Reply(content='{ "title": "🇫🇷 Capital of France" }'))
        result = await inThread(
            server.client().chat.completions.create,
            model="chat",
            messages=[{"role": "user", "content": OPEN_WEBUI_TITLE}],
            stream=False,
            max_completion_tokens=1000,
            user="owui-user-1",
            extra_headers={**OPEN_WEBUI_HEADERS, "Authorization": "Bearer sk-client-secret"},
        )
        self.assertEqual(result.choices[0].message.content, '{ "title": "🇫🇷 Capital of France" }')
        self.assertEqual(result.choices[0].finish_reason, "stop")
        self.assertEqual(result.model, "chat")
        [sent] = server.upstream.requests
        self.assertEqual(sent.body["messages"], [{"role": "user", "content": OPEN_WEBUI_TITLE}])
        self.assertEqual(sent.body["model"], "first-model")
        self.assertNotIn("tools", sent.body)
        self.assertEqual(sent.body["max_tokens"], 1000)
        [event] = logs
        self.assertEqual(
            (event["task"], event["user"], event["outcome"]), ("title", "owui-user-1", "end")
        )
        self.assertEqual(
            event["forwarded"],
            {**OPEN_WEBUI_HEADERS, "X-OpenWebUI-User-Name": "Ada L"},
        )
        self.assertNotIn("sk-client-secret", json.dumps(event, default=repr))

    async def test_ordinaryChatUsesTheAgent(self) -> None:
        """
        The same server runs an ordinary chat through the agent: its prompt
        first and its tools offered; the log line has no task.
        """
        server = await startServer(self, TOOL_AGENTS)
        logs = captureRunLogs(self)
        await inThread(
            server.client().chat.completions.create,
            model="chat",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        sent = server.upstream.requests[0].body
        self.assertEqual(sent["messages"][0]["content"], "You are the chat agent.")
        self.assertEqual([t["function"]["name"] for t in sent["tools"]], ["agent__helper"])
        self.assertIsNone(logs[0]["task"])

    async def test_streamedTask(self) -> None:
        """
        A streamed task answers with the usual chunks and usage; the
        model's reasoning is left out of a task's answer.
        """
        server = await startServer(self, TOOL_AGENTS, reasoningField="think")
        server.upstream.script(
            Reply(content=['{ "follow_ups": ', '["Why?"] }'], reasoning="hmm", usage=(50, 4))
        )

        def consume() -> list[Any]:
            return list(
                server.client().chat.completions.create(
                    model="chat",
                    messages=[{"role": "user", "content": OPEN_WEBUI_FOLLOW_UPS}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )

        chunks = await inThread(consume)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, '{ "follow_ups": ["Why?"] }')
        self.assertEqual(
            (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens), (50, 4)
        )

    async def test_noFallback(self) -> None:
        """
        A failing direct call is not retried on the agent's other models:
        the client gets the error (a 502), after one upstream call.
        """
        server = await startServer(self, TOOL_AGENTS)
        logs = captureRunLogs(self)
        server.upstream.script(Reply(status=500), Reply(status=500), Reply(status=500))
        with self.assertRaises(openai.APIStatusError) as caught:
            await inThread(
                server.client().chat.completions.create,
                model="chat",
                messages=[{"role": "user", "content": LIBRECHAT_TITLE}],
            )
        self.assertEqual(caught.exception.status_code, 502)
        self.assertEqual([r.body["model"] for r in server.upstream.requests], ["first-model"])
        self.assertTrue(logs[0]["outcome"].startswith("failed: 502"))

    async def test_openWebUILegacyToolChoice(self) -> None:
        """
        Open WebUI's Legacy tool-choice request is answered by one direct
        call with its two messages as sent (no agent prompt, no agent
        tools), and its log line names the C{function_calling} task.
        """
        server = await startServer(self, TOOL_AGENTS)
        logs = captureRunLogs(self)
        answer = '{"tool_calls": [{"name": "get_current_time", "parameters": {}}]}'
        server.upstream.script(Reply(content=answer))
        messages = [
            {"role": "system", "content": OPEN_WEBUI_TOOL_CHOICE},
            {"role": "user", "content": OPEN_WEBUI_TOOL_QUERY_WITH_HISTORY},
        ]
        result = await inThread(
            server.client().chat.completions.create,
            model="chat",
            messages=messages,
            stream=False,
        )
        self.assertEqual(result.choices[0].message.content, answer)
        [sent] = server.upstream.requests
        self.assertEqual(sent.body["messages"], messages)
        self.assertEqual(sent.body["model"], "first-model")
        self.assertNotIn("tools", sent.body)
        self.assertEqual(logs[0]["task"], "function_calling")

    async def test_taskHeader(self) -> None:
        """
        With C{X-OpenWebUI-Task} set (Open WebUI's custom header
        C{{{TASK}}}), a request is a task whatever its prompt.
        """
        server = await startServer(self, TOOL_AGENTS)
        logs = captureRunLogs(self)
        await inThread(
            server.client().chat.completions.create,
            model="chat",
            messages=[{"role": "user", "content": "my own title prompt"}],
            extra_headers={"X-OpenWebUI-Task": "title_generation"},
        )
        self.assertEqual(
            server.upstream.requests[0].body["messages"],
            [{"role": "user", "content": "my own title prompt"}],
        )
        self.assertEqual(logs[0]["task"], "title")

    async def test_largeBodyTask(self) -> None:
        """
        A title request of more than 256 KiB (parsed, and its task looked
        for, in a thread, not the reactor's) is still answered by the
        direct call; the
        C{X-OpenWebUI-Task} header still decides over what its messages
        show, and one meaning "an ordinary chat" leaves it to them.
        """
        import threading

        from ai_agent.headends import openai as headend

        threads: list[str] = []

        def recording(messages: Any) -> Any:
            threads.append(threading.current_thread().name)
            return tasks.messageTask(messages)

        self.patch(headend, "messageTask", recording)
        server = await startServer(self, TOOL_AGENTS)
        logs = captureRunLogs(self)
        history = "USER: " + "words " * 60_000
        prompt = OPEN_WEBUI_TITLE.replace("<chat_history>", "<chat_history>" + history)
        await inThread(
            server.client().chat.completions.create,
            model="chat",
            messages=[{"role": "user", "content": prompt}],
        )
        await inThread(
            server.client().chat.completions.create,
            model="chat",
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"X-OpenWebUI-Task": "tags_generation"},
        )
        await inThread(
            server.client().chat.completions.create,
            model="chat",
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"X-OpenWebUI-Task": "default"},
        )
        self.assertGreater(len(prompt.encode()), 256 * 1024)
        self.assertEqual([event["task"] for event in logs], ["title", "tags", "title"])
        # Looked for in the thread that parsed the body, not the reactor's.
        self.assertEqual(len(threads), 3)
        self.assertNotIn(threading.main_thread().name, threads)
        for sent in server.upstream.requests:
            self.assertEqual(sent.body["model"], "first-model")
            self.assertNotIn("tools", sent.body)

    async def test_shortcutOff(self) -> None:
        """
        With the shortcut off (C{--no-task-shortcut}), a task prompt runs
        through the agent like any chat, and the log line has no task.
        """
        server = await startServer(self, TOOL_AGENTS, taskShortcut=False)
        logs = captureRunLogs(self)
        await inThread(
            server.client().chat.completions.create,
            model="chat",
            messages=[{"role": "user", "content": OPEN_WEBUI_TITLE}],
            extra_headers={"X-OpenWebUI-Task": "title_generation"},
        )
        sent = server.upstream.requests[0].body
        self.assertEqual(sent["messages"][0]["content"], "You are the chat agent.")
        self.assertIn("tools", sent)
        self.assertIsNone(logs[0]["task"])

    async def test_logLine(self) -> None:
        """
        The log line of a run names the completion, the agent, the outcome
        and the time, with the C{user} field and forwarded headers made
        safe; it never holds the client's key.
        """
        server = await startServer(self)
        logs = captureRunLogs(self)
        result = await inThread(
            server.client().chat.completions.create,
            model="agent",
            messages=[{"role": "user", "content": "hi"}],
            user="bob\nFORGED",
            extra_headers={
                "X-Chat-Id": "chat-9",
                "X-User-Id": "{{LIBRECHAT_USER_ID}}",
                "Authorization": "Bearer sk-client-secret",
            },
        )
        [event] = logs
        self.assertEqual(event["requestId"], result.id)
        self.assertEqual(
            (event["agent"], event["outcome"], event["stream"]), ("agent", "end", False)
        )
        self.assertEqual(event["user"], "bob FORGED")
        self.assertEqual(event["forwarded"], {"X-Chat-Id": "chat-9"})
        line = formatEvent(event)
        self.assertIn(f"{result.id} for agent agent end in ", line)
        self.assertIn("user 'bob FORGED'; X-Chat-Id 'chat-9'", line)
        self.assertNotIn("\n", line)
        self.assertNotIn("sk-client-secret", line + json.dumps(event, default=repr))


class ServerOptionsTests(SynchronousTestCase):
    """
    C{--reasoning-field} and C{--no-task-shortcut} parse, are checked, and
    reach every headend C{makeService} builds.
    """

    def _options(self, *args: str) -> Any:
        from ai_agent.tap import Options

        directory = self.mktemp()
        os.makedirs(directory)
        agent = os.path.join(directory, "chat.ai")
        with open(agent, "w", encoding="utf-8") as f:
            f.write("---\nmodels: openai/gpt-x\n---\nHi.\n")
        options = Options()
        options.parseOptions(["--agent", agent, "--openai-completions", "0", *args])
        return options

    def test_defaults(self) -> None:
        """
        By default reasoning goes to C{reasoning_content} and the task
        shortcut is on.
        """
        options = self._options()
        self.assertEqual(
            (options["reasoning-field"], options["task-shortcut"]), ("reasoning_content", True)
        )

    def test_badReasoningField(self) -> None:
        """
        A reasoning field outside the four choices is a usage error naming
        them.
        """
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError) as caught:
            self._options("--reasoning-field", "thoughts")
        self.assertIn("reasoning_content, reasoning, think, none", str(caught.exception))

    def test_plumbed(self) -> None:
        """
        The headends get the options: C{none} as L{None}, and the
        shortcut off.
        """
        from twisted.internet.testing import MemoryReactorClock

        from ai_agent import tap

        built: list[dict[str, Any]] = []
        real = tap.OpenAIHeadend

        def recording(*args: Any, **kwargs: Any) -> Any:
            built.append(kwargs)
            return real(*args, **kwargs)

        self.patch(tap, "OpenAIHeadend", recording)
        for field, expected in (("none", None), ("think", "think"), ("reasoning", "reasoning")):
            options = self._options("--reasoning-field", field, "--no-task-shortcut")
            tap.makeService(options, MemoryReactorClock())
            self.assertEqual(
                (built[-1]["reasoningField"], built[-1]["taskShortcut"]), (expected, False)
            )
