# -*- test-case-name: tests.test_headend_a2a,tests.test_clients_a2a -*-
"""
The A2A 1.0 headend: every served agent is an A2A agent under
C{/a2a/<agent>}, with its Agent Card, the JSON-RPC 2.0 binding (C{POST
/a2a/<agent>}) and the HTTP+JSON binding (C{POST /a2a/<agent>/message:send},
C{GET /a2a/<agent>/tasks/<id>}, ...).  See docs/a2a-headend.md.

A message starts a task: a run of the agent that lives apart from the HTTP
request that started it (L{_TaskRun}), so that a client may send and leave
(C{returnImmediately}), stream it, subscribe to it again, get it, list it
and cancel it.  Tasks and their contexts are kept in the run store, owned by
the key that made them (L{OwnedStore}): another server instance on the same
PostgreSQL store reads them, follows a running one by polling its stored
snapshot, and cancels one by storing a cancel request that the running
instance reads at its next tick (L{TICK_INTERVAL}).

The run's events become A2A stream events (L{TaskEncoder}): the agent's
progress as C{statusUpdate}s (state C{TASK_STATE_WORKING} with the progress
line as the status message), the answer as C{artifactUpdate} chunks
appended to one artifact, then the final status.  Errors are A2A's
(L{A2AErrors}): JSON-RPC error codes on the JSON-RPC binding, a
C{google.rpc.Status} body with an C{ErrorInfo} reason on the HTTP+JSON one.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, ClassVar, Mapping

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from ai_agent.accounting import RunLabels
from ai_agent.agentfile import InvalidInputError
from ai_agent.errors import AgentError, ErrorKind
from ai_agent.events import (
    PROGRESS_TYPES,
    ContentDelta,
    Event,
    progressText,
)
from ai_agent.headends._a2a_errors import (
    A2A_ERRORS,
    A2AErrors,
    _invalidParams,
    a2aError,
    rpcError,
    taskNotFound,
)
from ai_agent.headends._answers import unknownEndpoint
from ai_agent.headends._api import Headend, installErrorHandlers, runDetached
from ai_agent.headends._bodies import BodyGate
from ai_agent.headends._http import principalOf
from ai_agent.headends._json import dumpsAny as _dumpsAny
from ai_agent.headends._request import OFF_REACTOR_THRESHOLD, loadBody
from ai_agent.headends._sse import SSEStream
from ai_agent.limits import MAX_RUN_ANSWER
from ai_agent.observe import NULL_OBSERVER, Observer, observedRoute, requestScope
from ai_agent.pool import RunPool
from ai_agent.principals import IMPLICIT, Principal, resolveFor
from ai_agent.providers import ChatMessage
from ai_agent.reactors import IReactorTimeAndThreads
from ai_agent.redaction import Redactor, safeError, shorten
from ai_agent.registry import AgentRegistry, ServedAgent
from ai_agent.request import RunRequest
from ai_agent.session import SessionRunner
from ai_agent.store import MemoryStore, OwnedStore, RunStore

log = Logger()

#: The protocol version served.
PROTOCOL_VERSION = "1.0"
#: The header (or query parameter) a client names its A2A version with.
VERSION_HEADER = b"a2a-version"

#: Store namespaces: tasks by id, contexts (their tasks) by id, the
#: principal's task index (for C{ListTasks}), cancel requests by task id.
TASKS = "a2a.tasks"
CONTEXTS = "a2a.contexts"
INDEX = "a2a.index"
CANCELS = "a2a.cancels"
_INDEX_KEY = "tasks"

#: Seconds between a running task's ticks: its snapshot is stored (for
#: readers on other instances) and its cancel request looked for.  A
#: cancel from another instance takes effect within one tick.
TICK_INTERVAL = 1.0
#: Seconds an instance following a task it does not run waits between
#: reads of the stored snapshot.
FOLLOW_INTERVAL = 1.0
#: Seconds a started stream may stay silent before a comment line is sent.
KEEPALIVE_INTERVAL = 15.0
#: Ticks a cancel from another instance waits for the running instance
#: before it marks the task canceled itself (that instance is gone).
CANCEL_WAIT_TICKS = 5

#: Tasks the index keeps per principal (newest first), for C{ListTasks}.
MAX_INDEXED = 1000
#: The index is kept in pages of this many task ids: a new task is added
#: to the head page (a small document), a full head is kept as a page of
#: its own, so that a send rewrites at most this many ids, not
#: L{MAX_INDEXED}.
INDEX_PAGE = 100
#: Earlier tasks of a context read as the conversation's history.
MAX_CONTEXT_TASKS = 50
#: C{ListTasks} page sizes.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
#: Parts in one message.
MAX_PARTS = 64

SUBMITTED = "TASK_STATE_SUBMITTED"
WORKING = "TASK_STATE_WORKING"
COMPLETED = "TASK_STATE_COMPLETED"
FAILED = "TASK_STATE_FAILED"
CANCELED = "TASK_STATE_CANCELED"
REJECTED = "TASK_STATE_REJECTED"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED, REJECTED})
STATES = frozenset(
    {
        SUBMITTED,
        WORKING,
        COMPLETED,
        FAILED,
        CANCELED,
        REJECTED,
        "TASK_STATE_INPUT_REQUIRED",
        "TASK_STATE_AUTH_REQUIRED",
    }
)

#: The one artifact a task's answer is written to.
ANSWER_ARTIFACT = "answer"


# -- values -------------------------------------------------------------


def _now(clock: Callable[[], float]) -> str:
    seconds = clock()
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{int(seconds * 1000) % 1000:03d}Z"


def _textMessage(
    role: str, text: str, taskId: str, contextId: str, messageId: str | None = None
) -> dict[str, Any]:
    return {
        "messageId": messageId or str(uuid.uuid4()),
        "role": role,
        "parts": [{"text": text}],
        "taskId": taskId,
        "contextId": contextId,
    }


@attrs.frozen
class SendParams:
    """
    A validated C{SendMessageRequest}: the user's text for the run, the
    message as the task's history keeps it, and the configuration.
    """

    message: dict[str, Any]
    text: str
    contextId: str | None
    taskId: str | None
    returnImmediately: bool
    historyLength: int | None
    metadata: dict[str, Any]


def _historyLength(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalidParams(f"'{where}' must be an integer of 0 or more", where)
    return value


def parseSendParams(params: Any, agent: ServedAgent) -> SendParams:
    """
    A C{SendMessageRequest} for C{agent}: a user message of text and data
    parts (a data part is the agent's input per its C{inputSchema()}; a
    file part is refused by name: the agent takes no files).

    @raise AgentError: invalid params, or A2A's content type not supported.
    """
    if not isinstance(params, dict):
        raise _invalidParams("the params must be a SendMessageRequest object")
    message = params.get("message")
    if not isinstance(message, dict):
        raise _invalidParams("'message' must be a Message object", "message")
    messageId = message.get("messageId")
    if not isinstance(messageId, str) or not messageId:
        raise _invalidParams("'message.messageId' must be a string", "message.messageId")
    role = message.get("role")
    if role != "ROLE_USER":
        raise _invalidParams(
            f"'message.role' must be \"ROLE_USER\", not {shorten(json.dumps(role))}",
            "message.role",
        )
    parts = message.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _invalidParams("'message.parts' must be a list of parts", "message.parts")
    if len(parts) > MAX_PARTS:
        raise _invalidParams(f"'message.parts' holds more than {MAX_PARTS} parts", "message.parts")
    texts: list[str] = []
    for index, part in enumerate(parts):
        where = f"message.parts[{index}]"
        if not isinstance(part, dict):
            raise _invalidParams(f"'{where}' must be a Part object", where)
        if "text" in part:
            if not isinstance(part["text"], str):
                raise _invalidParams(f"'{where}.text' must be a string", f"{where}.text")
            texts.append(part["text"])
        elif "data" in part:
            data = part["data"]
            if not isinstance(data, dict):
                raise _invalidParams(
                    f"'{where}.data' must be an object matching the agent's input schema",
                    f"{where}.data",
                )
            try:
                texts.append(agent.spec.input.userMessage(data))
            except InvalidInputError as error:
                raise _invalidParams(f"'{where}.data' {error}", f"{where}.data") from None
        elif "raw" in part or "url" in part or "file" in part:
            name = part.get("filename") or part.get("mediaType") or "a file part"
            raise a2aError(
                "CONTENT_TYPE_NOT_SUPPORTED",
                f"'{where}' is a file ({shorten(str(name))}): agent {agent.id} takes text and"
                " data parts only",
            )
        else:
            raise _invalidParams(f"'{where}' has none of text, data, raw or url", where)
    text = "\n".join(texts)
    if not text.strip():
        raise _invalidParams("the message has no text", "message.parts")
    configuration = params.get("configuration") or {}
    if not isinstance(configuration, dict):
        raise _invalidParams("'configuration' must be an object", "configuration")
    if configuration.get("taskPushNotificationConfig") or configuration.get(
        "pushNotificationConfig"
    ):
        raise a2aError(
            "PUSH_NOTIFICATION_NOT_SUPPORTED", "push notifications are not supported here"
        )
    returnImmediately = configuration.get("returnImmediately", False)
    if not isinstance(returnImmediately, bool):
        raise _invalidParams(
            "'configuration.returnImmediately' must be a boolean",
            "configuration.returnImmediately",
        )
    contextId = message.get("contextId")
    taskId = message.get("taskId")
    for name, value in (("contextId", contextId), ("taskId", taskId)):
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 200):
            raise _invalidParams(f"'message.{name}' must be a string", f"message.{name}")
    metadata = params.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _invalidParams("'metadata' must be an object", "metadata")
    kept = {
        key: message[key] for key in ("messageId", "role", "parts", "metadata") if key in message
    }
    return SendParams(
        kept,
        text,
        contextId,
        taskId,
        returnImmediately,
        _historyLength(configuration.get("historyLength"), "configuration.historyLength"),
        metadata,
    )


def taskView(
    task: Mapping[str, Any], historyLength: int | None = None, artifacts: bool = True
) -> dict[str, Any]:
    """
    A task as a client sees it: its history cut to the last
    C{historyLength} messages (none for 0, all for L{None}).
    """
    view = dict(task)
    history = view.get("history") or []
    if historyLength is not None:
        history = history[len(history) - historyLength :] if historyLength else []
    if history:
        view["history"] = history
    else:
        view.pop("history", None)
    if not artifacts or not view.get("artifacts"):
        view.pop("artifacts", None)
    return view


def _answerText(task: Mapping[str, Any]) -> str:
    for artifact in task.get("artifacts") or ():
        if artifact.get("artifactId") == ANSWER_ARTIFACT:
            return "".join(part.get("text", "") for part in artifact.get("parts", ()))
    return ""


# -- a key's task index ------------------------------------------------


def indexed(head: Mapping[str, Any] | None, taskId: str) -> list[tuple[str, str, Any]]:
    """
    The index documents to store for a new task, given the index's head
    page as stored (L{None}: none yet): the head with C{taskId} first
    and, when the head was full (L{INDEX_PAGE} ids), that page kept under
    a key of its own, the oldest pages past L{MAX_INDEXED} ids left out.
    """
    ids = [] if head is None else list(head.get("tasks", ()))
    pages = [] if head is None else list(head.get("pages", ()))
    sealed = 0 if head is None else int(head.get("sealed", 0))
    entries: list[tuple[str, str, Any]] = []
    if len(ids) >= INDEX_PAGE:
        sealed += 1
        page = f"{_INDEX_KEY}.{sealed}"
        entries.append((INDEX, page, {"tasks": ids}))
        pages = [page, *pages][: MAX_INDEXED // INDEX_PAGE - 1]
        ids = []
    head = {"tasks": [taskId, *ids], "pages": pages, "sealed": sealed}
    entries.append((INDEX, _INDEX_KEY, head))
    return entries


async def _indexOf(store: OwnedStore) -> list[str]:
    """
    The key's indexed task ids, newest first (at most L{MAX_INDEXED}).
    """
    head = await store.get(INDEX, _INDEX_KEY)
    if head is None:
        return []
    ids = list(head.document.get("tasks", ()))
    pages = list(head.document.get("pages", ()))
    if pages:
        found = await store.getMany(INDEX, pages)
        for page in pages:
            kept = found.get(page)
            if kept is not None:
                ids.extend(kept.document.get("tasks", ()))
    return ids[:MAX_INDEXED]


@attrs.define(eq=False)
class _Recorder:
    """
    The new tasks of one key, stored with the key's index: the index head
    is read, each task appended to it in turn, and the tasks, their
    contexts and the index written in one transaction.  Tasks that come
    while a write is under way wait for it and go together in the next
    one (a group commit): one index read and one transaction for all of
    them, and no task lost from the index to another's read-then-write.

    @ivar done: called once nothing is left to write.
    """

    store: OwnedStore
    done: Callable[[], None]
    _queued: list[tuple[str, list[tuple[str, str, Any]], Deferred[None]]] = attrs.field(
        factory=list
    )
    _writing: bool = False

    def record(self, taskId: str, entries: list[tuple[str, str, Any]]) -> Deferred[None]:
        """
        Store a new task's C{entries} (the task, its context) and add
        C{taskId} to the key's index; fires once they are stored.
        """
        stored: Deferred[None] = Deferred()
        self._queued.append((taskId, entries, stored))
        if not self._writing:
            Deferred.fromCoroutine(self._write())
        return stored

    async def _write(self) -> None:
        self._writing = True
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    head = await self.store.get(INDEX, _INDEX_KEY)
                    index = None if head is None else head.document
                    entries: list[tuple[str, str, Any]] = []
                    for taskId, taskEntries, _ in batch:
                        entries.extend(taskEntries)
                        *pages, (_, _, index) = indexed(index, taskId)
                        entries.extend(pages)
                    entries.append((INDEX, _INDEX_KEY, index))
                    await self.store.putEntries(entries)
                except Exception:
                    failure = Failure()
                    for _, _, stored in batch:
                        stored.errback(failure)
                else:
                    for _, _, stored in batch:
                        stored.callback(None)
        finally:
            self._writing = False
            self.done()


# -- one task's run -----------------------------------------------------


@attrs.define(eq=False)
class _Listener:
    """
    A stream following a task: C{send} gets each StreamResponse,
    C{close} is called once the task ended.
    """

    send: Callable[[dict[str, Any]], None]
    close: Callable[[], None]


@attrs.define(eq=False)
class _TaskRun:
    """
    One task's run of its agent, apart from any HTTP request: events go
    to the task's listeners (L{TaskEncoder}'s stream events) and to the
    task kept in memory, whose snapshot is stored at each tick and at the
    end.
    """

    headend: A2AHeadend
    store: OwnedStore
    agent: ServedAgent
    _task: dict[str, Any]
    turns: list[dict[str, str]]
    run: RunRequest
    listeners: list[_Listener] = attrs.field(factory=list)
    _answer: list[str] = attrs.field(factory=list)
    #: How many of the answer's pieces the task's answer artifact holds.
    _joined: int = 0
    _waiters: list[Deferred[dict[str, Any]]] = attrs.field(factory=list)
    _working: Deferred[Any] | None = None
    _ticker: LoopingCall | None = None
    _dirty: bool = False
    _writes: Deferred[None] = attrs.field(factory=lambda: succeed(None))
    #: The task's first write (the task, its context, the key's index),
    #: until it is made: at the first of its ticks or its end (or at once
    #: for a non-blocking send).
    _creation: Callable[[dict[str, Any]], Deferred[None]] | None = None
    cancelRequested: bool = False
    ended: bool = False

    @property
    def task(self) -> dict[str, Any]:
        """
        The task as it stands, its answer artifact holding the text so far:
        joined when the task is read (a tick's write, a subscriber, a
        C{tasks/get}, the end), not on every delta, which would copy the
        whole answer again for each piece of it.
        """
        if self._joined != len(self._answer):
            self._joined = len(self._answer)
            self._task["artifacts"] = [
                {
                    "artifactId": ANSWER_ARTIFACT,
                    "name": ANSWER_ARTIFACT,
                    "parts": [{"text": "".join(self._answer)}],
                }
            ]
        return self._task

    @property
    def taskId(self) -> str:
        return str(self._task["id"])

    def _stamp(self) -> str:
        return _now(self.headend.reactor.seconds)

    def _emit(self, event: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener.send(event)

    def _status(self, state: str, text: str | None = None) -> None:
        status: dict[str, Any] = {"state": state, "timestamp": self._stamp()}
        if text is not None:
            status["message"] = _textMessage(
                "ROLE_AGENT", text, self.taskId, self.task["contextId"]
            )
        self.task["status"] = status
        self._dirty = True
        self._emit(
            {
                "statusUpdate": {
                    "taskId": self.taskId,
                    "contextId": self.task["contextId"],
                    "status": status,
                }
            }
        )

    def event(self, event: Event) -> None:
        """
        The run's event sink.
        """
        if self.ended:
            return
        if isinstance(event, ContentDelta):
            if not event.text:
                return
            first = not self._answer
            self._answer.append(event.text)
            self._dirty = True
            self._emit(
                {
                    "artifactUpdate": {
                        "taskId": self.taskId,
                        "contextId": self._task["contextId"],
                        "artifact": {
                            "artifactId": ANSWER_ARTIFACT,
                            "name": ANSWER_ARTIFACT,
                            "parts": [{"text": event.text}],
                        },
                        "append": not first,
                        "lastChunk": False,
                    }
                }
            )
        elif isinstance(event, PROGRESS_TYPES):
            self._status(WORKING, progressText(event).rstrip("\n"))

    def subscribe(self, listener: _Listener) -> None:
        """
        Follow the task: the task first, then its updates.
        """
        listener.send({"task": taskView(self.task)})
        if self.ended:
            listener.close()
        else:
            self.listeners.append(listener)

    def unsubscribe(self, listener: _Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def whenEnded(self) -> Deferred[dict[str, Any]]:
        """
        The task once it reached a terminal state; cancelling this stops
        only the wait (the task runs on).
        """
        if self.ended:
            d: Deferred[dict[str, Any]] = Deferred()
            d.callback(self.task)
            return d

        def forget(d: Deferred[dict[str, Any]]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: Deferred[dict[str, Any]] = Deferred(forget)
        self._waiters.append(waiter)
        return waiter

    def cancel(self) -> None:
        """
        Stop the run (and its upstream calls); the task ends canceled.
        """
        if self.ended or self.cancelRequested:
            return
        self.cancelRequested = True
        if self._working is not None:
            self._working.cancel()

    async def drive(self) -> None:
        """
        Run the task to its end; never fails.
        """
        headend = self.headend
        ticker = self._ticker = LoopingCall(self._tick)
        ticker.clock = headend.reactor
        ticker.start(headend.tickInterval, now=False).addErrback(
            lambda f: log.failure("a2a task ticker failed", f)
        )
        try:
            # The pipeline's run layer: the key's and agent's limits (a
            # refusal fails the task with its reason), a slot in the key's
            # turn, the answer's bound and redaction; the pool's stop at
            # shutdown fails the task with its reason.
            self._working = Deferred.fromCoroutine(
                runDetached(
                    headend,
                    self.agent,
                    self.run,
                    self.store.principal,
                    self.event,
                    lambda: self._status(WORKING),
                )
            )
            await self._working
            await self._end(COMPLETED)
        except CancelledError:
            await self._end(CANCELED, "the task was canceled")
        except AgentError as error:
            safe = safeError(error, headend._redactor(), inBand=True)
            await self._end(FAILED, safe.message)
        except Exception:
            log.failure("a2a task {task} failed", task=self.taskId)
            await self._end(FAILED, "the agent failed (an internal error)")

    async def _tick(self) -> None:
        if self.ended:
            return
        try:
            if self._dirty or self._creation is not None:
                self._dirty = False
                await self._put()
            if await self.store.get(CANCELS, self.taskId) is not None:
                log.info("a2a task {task}: canceled from another instance", task=self.taskId)
                self.cancel()
        except Exception:
            log.failure("a2a task {task}: storing its snapshot failed", task=self.taskId)

    def write(self, put: Callable[[], Deferred[None]]) -> Deferred[None]:
        """
        Run C{put} once the task's earlier writes are done, in order; the
        Deferred returned fails if this write does (the later ones still
        run).
        """
        done: Deferred[None] = Deferred()

        def run(_: object) -> Deferred[None]:
            return put().addCallbacks(done.callback, done.errback)

        self._writes.addCallback(run)
        return done

    def _put(self) -> Deferred[None]:
        """
        Store the task as it is now: with its context and the key's index
        the first time (one transaction), alone after that.
        """

        def put() -> Deferred[None]:
            creation, self._creation = self._creation, None
            if creation is not None:
                return creation(self._document())
            return self.store.putMany(TASKS, {self.taskId: self._document()})

        return self.write(put)

    def _document(self) -> dict[str, Any]:
        return {"agent": self.agent.id, "task": self.task, "turns": self.turns}

    async def _end(self, state: str, reason: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        answer = "".join(self._answer)
        if answer:
            self._emit(
                {
                    "artifactUpdate": {
                        "taskId": self.taskId,
                        "contextId": self.task["contextId"],
                        "artifact": {
                            "artifactId": ANSWER_ARTIFACT,
                            "name": ANSWER_ARTIFACT,
                            "parts": [{"text": ""}],
                        },
                        "append": True,
                        "lastChunk": True,
                    }
                }
            )
        if state == COMPLETED:
            reply = _textMessage("ROLE_AGENT", answer, self.taskId, self.task["contextId"])
            self.task.setdefault("history", []).append(reply)
            self.turns.append({"role": "assistant", "content": answer})
        self._status(state, reason)
        # The end is stored before the clients hear of it: whoever they ask
        # next, on any instance, has the finished task.
        try:
            await self._put()
        except Exception:
            log.failure("a2a task {task}: storing its end failed", task=self.taskId)
        self.headend._running.pop(self.store.principal.scoped(self.taskId), None)
        listeners, self.listeners = self.listeners, []
        for listener in listeners:
            listener.close()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.task)


# -- the headend ----------------------------------------------------------


@attrs.define(slots=False)
class A2AHeadend(Headend):
    """
    Klein routes for A2A 1.0 on one port (mounted at C{/a2a} and the
    well-known card path); reloadable (C{registry} and C{runner} are
    swapped on SIGHUP).  Without a run store (C{--store none}) tasks are
    kept in memory, on this instance only.
    """

    log: ClassVar[Logger] = Logger()
    app: ClassVar[Klein] = Klein()

    registry: AgentRegistry
    runner: SessionRunner
    pool: RunPool
    reactor: IReactorTimeAndThreads
    store: RunStore | None = None
    observer: Observer = NULL_OBSERVER
    redactor: Redactor | None = None
    tickInterval: float = TICK_INTERVAL
    followInterval: float = FOLLOW_INTERVAL
    keepAliveInterval: float = KEEPALIVE_INTERVAL
    bodyGate: BodyGate | None = None
    threadPool: Any = None
    maxAnswer: int = MAX_RUN_ANSWER
    _running: dict[str, _TaskRun] = attrs.field(factory=dict)
    _recorders: dict[str, _Recorder] = attrs.field(factory=dict)
    #: Streams following a task that runs on another instance, by task id.
    following: dict[str, int] = attrs.field(factory=dict)
    _memory: RunStore | None = None

    def _owned(self, principal: Principal) -> OwnedStore:
        store = self.store
        if store is None:
            if self._memory is None:
                self._memory = MemoryStore(self.reactor)
            store = self._memory
        return OwnedStore(store, principal)

    def _errorFormat(self, request: IRequest) -> A2AErrors:
        """
        The HTTP+JSON binding's envelope: what the routes' errors and the
        paths under C{/a2a} no route serves are answered in (a JSON-RPC
        request's own errors are answered by L{jsonrpc}, with HTTP 200).
        """
        return A2A_ERRORS

    # -- the card -------------------------------------------------------

    def _agent(self, request: IRequest, name: str) -> ServedAgent:
        agent = resolveFor(self.registry, principalOf(request), name)
        if agent is None or agent.id != name:
            raise AgentError(
                f"no agent {shorten(repr(name))} is served here",
                404,
                ErrorKind.NOT_FOUND,
                "agent_not_found",
            )
        requestScope(request).setAgent(agent.id)
        return agent

    def card(self, request: IRequest, agent: ServedAgent) -> dict[str, Any]:
        """
        C{agent}'s Agent Card, with the URLs this request reached us by.
        """
        host = request.getHeader(b"host") or b"127.0.0.1"
        scheme = "https" if request.isSecure() else "http"
        base = f"{scheme}://{host.decode('ascii', 'replace')}/a2a/{agent.id}"
        spec = agent.spec
        description = spec.description or f"The {agent.id} agent"
        skill: dict[str, Any] = {
            "id": agent.id,
            "name": agent.id,
            "description": description + (f"\n\nUsage: {spec.usage}" if spec.usage else ""),
            "tags": ["ai-agent"],
            "inputModes": ["text/plain", "application/json"],
            "outputModes": ["text/plain"],
        }
        card: dict[str, Any] = {
            "name": agent.id,
            "description": description,
            "version": spec.digest[:12] or str(agent.created),
            "supportedInterfaces": [
                {"url": base, "protocolBinding": "JSONRPC", "protocolVersion": PROTOCOL_VERSION},
                {
                    "url": base,
                    "protocolBinding": "HTTP+JSON",
                    "protocolVersion": PROTOCOL_VERSION,
                },
            ],
            "capabilities": {
                "streaming": True,
                "pushNotifications": False,
                "extendedAgentCard": False,
            },
            "defaultInputModes": ["text/plain", "application/json"],
            "defaultOutputModes": ["text/plain"],
            "skills": [skill],
        }
        if principalOf(request) is not IMPLICIT:
            card["securitySchemes"] = {
                "bearer": {"httpAuthSecurityScheme": {"scheme": "bearer"}},
                "apiKey": {"apiKeySecurityScheme": {"location": "header", "name": "x-api-key"}},
            }
            card["securityRequirements"] = [
                {"schemes": {"bearer": {"list": []}}},
                {"schemes": {"apiKey": {"list": []}}},
            ]
        return card

    @app.route("/.well-known/agent-card.json", methods=["GET"])
    @observedRoute("a2a", "/.well-known/agent-card.json")
    async def wellKnownCard(self, request: IRequest) -> bytes:
        """
        The card of the first agent this key may use.
        """
        principal = principalOf(request)
        for agent in self.registry.served:
            if principal.mayUse(agent):
                requestScope(request).setAgent(agent.id)
                return self._json(request, self.card(request, agent))
        raise AgentError("no agent is served here", 404, ErrorKind.NOT_FOUND, "agent_not_found")

    @app.route("/a2a/<agent>/.well-known/agent-card.json", methods=["GET"])
    @app.route("/a2a/<agent>", methods=["GET"])
    @observedRoute("a2a", "/a2a/{agent}/.well-known/agent-card.json")
    async def agentCard(self, request: IRequest, agent: str) -> bytes:
        """
        One agent's card.
        """
        return self._json(request, self.card(request, self._agent(request, agent)))

    def _json(self, request: IRequest, value: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return _dumpsAny(value)

    # -- the version ----------------------------------------------------

    def _checkVersion(self, request: IRequest) -> None:
        raw = request.getHeader(VERSION_HEADER)
        if raw is None:
            values = request.args.get(b"A2A-Version") or request.args.get(b"a2a-version")
            raw = values[0] if values else None
        version = (raw or b"").decode("ascii", "replace").strip()
        parts = version.split(".")
        if len(parts) >= 2 and parts[0] == "1" and parts[1] == "0":
            return
        if version in ("1",):
            return
        said = f"A2A-Version {shorten(repr(version))}" if version else "no A2A-Version (0.3)"
        raise a2aError(
            "VERSION_NOT_SUPPORTED",
            f"{said} is not supported: this server speaks A2A 1.0; send 'A2A-Version: 1.0'",
        )

    # -- operations (both bindings) ---------------------------------------

    async def _send(
        self, request: IRequest, agent: ServedAgent, params: Any
    ) -> tuple[_TaskRun, SendParams]:
        """
        Start a task for a C{SendMessageRequest}.
        """
        parsed = parseSendParams(params, agent)
        principal = principalOf(request)
        store = self._owned(principal)
        if parsed.taskId is not None:
            stored = await self._stored(store, parsed.taskId)
            state = stored["task"]["status"]["state"]
            raise a2aError(
                "UNSUPPORTED_OPERATION",
                f"task {shorten(repr(parsed.taskId))} is {state}: it takes no more messages"
                " (this server's tasks never wait for input); send a new message in its"
                " context instead",
            )
        contextId = parsed.contextId or str(uuid.uuid4())
        history: list[ChatMessage] = []
        # A new context has nothing to read (no store trip before the run).
        context = None if parsed.contextId is None else await store.get(CONTEXTS, contextId)
        earlier: list[str] = []
        if context is not None:
            if context.document.get("agent") != agent.id:
                raise _invalidParams(
                    f"context {shorten(repr(contextId))} belongs to another agent",
                    "message.contextId",
                )
            earlier = list(context.document.get("tasks", ()))
            found = await store.getMany(TASKS, earlier)
            for earlierId in earlier:
                kept = found.get(earlierId)
                if kept is None:
                    continue
                turns = kept.document.get("turns", ())
                if len(turns) == 2:
                    history.extend(ChatMessage(t["role"], t["content"]) for t in turns)
        taskId = str(uuid.uuid4())
        message = {**parsed.message, "taskId": taskId, "contextId": contextId}
        task: dict[str, Any] = {
            "id": taskId,
            "contextId": contextId,
            "status": {"state": SUBMITTED, "timestamp": _now(self.reactor.seconds)},
            "history": [message],
            "metadata": {"agent": agent.id},
        }
        labels = RunLabels(requestId=f"task_{taskId}", stream=True)
        run = RunRequest(
            (*history, ChatMessage("user", parsed.text)),
            labels=labels,
            owner=principal.name,
        )
        turns = [{"role": "user", "content": parsed.text}]
        taskRun = _TaskRun(self, store, agent, task, turns, run)
        self._running[principal.scoped(taskId)] = taskRun
        # At debug level: the run's own line (accounting) names the task
        # (its request id task_<id>) and the agent at info; a second info
        # line per task cost about 5 % of an A2A request's CPU.
        log.debug(
            "a2a task {task}: agent {agent} (context {context})",
            task=taskId,
            agent=agent.id,
            context=contextId,
        )
        # The task, its context and the key's index are stored with the
        # task's first snapshot, in one transaction: at its first tick (a
        # second in) or its end, whichever comes first, so a short task is
        # written once.  A non-blocking send answers once it is stored, so
        # that the id it gives out can be read anywhere.
        contextTasks = {"agent": agent.id, "tasks": [*earlier, taskId][-MAX_CONTEXT_TASKS:]}
        taskRun._creation = lambda document: self._recorder(store).record(
            taskId, [(TASKS, taskId, document), (CONTEXTS, contextId, contextTasks)]
        )
        if parsed.returnImmediately:
            try:
                await taskRun._put()
            except BaseException:
                del self._running[principal.scoped(taskId)]
                raise
        Deferred.fromCoroutine(taskRun.drive())
        return taskRun, parsed

    def _recorder(self, store: OwnedStore) -> _Recorder:
        """
        The writer of C{store}'s key's new tasks on this instance (one per
        key while it has tasks to write).
        """
        name = store.principal.name
        recorder = self._recorders.get(name)
        if recorder is None:

            def idle() -> None:
                del self._recorders[name]

            recorder = self._recorders[name] = _Recorder(store, idle)
        return recorder

    async def _stored(self, store: OwnedStore, taskId: Any) -> dict[str, Any]:
        if not isinstance(taskId, str) or not taskId:
            raise _invalidParams("'id' must be a task id string", "id")
        found = await store.get(TASKS, taskId)
        if found is None:
            raise taskNotFound(taskId)
        document: dict[str, Any] = found.document
        return document

    async def _task(
        self, request: IRequest, agent: ServedAgent, taskId: Any
    ) -> tuple[dict[str, Any], _TaskRun | None]:
        """
        A task of this key's and C{agent}'s: the running one's own
        snapshot when it runs here, else the stored one.
        """
        principal = principalOf(request)
        if isinstance(taskId, str):
            running = self._running.get(principal.scoped(taskId))
            if running is not None and running.agent.id == agent.id:
                return running.task, running
        document = await self._stored(self._owned(principal), taskId)
        if document.get("agent") != agent.id:
            raise taskNotFound(taskId)
        return document["task"], None

    async def _get(self, request: IRequest, agent: ServedAgent, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise _invalidParams("the params must be a GetTaskRequest object")
        task, _ = await self._task(request, agent, params.get("id"))
        return taskView(task, _historyLength(params.get("historyLength"), "historyLength"))

    async def _list(self, request: IRequest, agent: ServedAgent, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise _invalidParams("the params must be a ListTasksRequest object")
        store = self._owned(principalOf(request))
        pageSize = params.get("pageSize", DEFAULT_PAGE_SIZE)
        if isinstance(pageSize, str) and pageSize.isdigit():
            pageSize = int(pageSize)
        if isinstance(pageSize, bool) or not isinstance(pageSize, int) or not 0 < pageSize:
            raise _invalidParams("'pageSize' must be a positive integer", "pageSize")
        pageSize = min(pageSize, MAX_PAGE_SIZE)
        token = params.get("pageToken") or "0"
        if not isinstance(token, str) or not token.isdigit():
            raise _invalidParams("'pageToken' is not a token this server gave", "pageToken")
        status = params.get("status")
        if status in ("TASK_STATE_UNSPECIFIED", "", 0):
            status = None
        if status is not None and status not in STATES:
            raise _invalidParams(
                f"'status' must be a TASK_STATE_* name, not {shorten(repr(status))}", "status"
            )
        contextId = params.get("contextId")
        historyLength = _historyLength(params.get("historyLength"), "historyLength")
        includeArtifacts = params.get("includeArtifacts") in (True, "true")
        ids = await _indexOf(store)
        found = await store.getMany(TASKS, ids)
        tasks = []
        for taskId in ids:
            document = found.get(taskId)
            if document is None or document.document.get("agent") != agent.id:
                continue
            running = self._running.get(store.principal.scoped(taskId))
            task = running.task if running is not None else document.document["task"]
            if contextId is not None and task.get("contextId") != contextId:
                continue
            if status is not None and task["status"]["state"] != status:
                continue
            tasks.append(task)
        start = int(token)
        page = tasks[start : start + pageSize]
        following = start + pageSize
        return {
            "tasks": [taskView(task, historyLength, includeArtifacts) for task in page],
            "nextPageToken": str(following) if following < len(tasks) else "",
            "pageSize": pageSize,
            "totalSize": len(tasks),
        }

    async def _cancel(self, request: IRequest, agent: ServedAgent, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise _invalidParams("the params must be a CancelTaskRequest object")
        taskId = params.get("id")
        task, running = await self._task(request, agent, taskId)
        state = task["status"]["state"]
        if state in TERMINAL:
            raise a2aError(
                "TASK_NOT_CANCELABLE",
                f"task {shorten(repr(taskId))} is {state}: a finished task cannot be canceled",
            )
        if running is not None:
            waiting = running.whenEnded()
            running.cancel()
            return taskView(await waiting)
        # Another instance runs it: ask it through the store, and wait for
        # its next ticks; if it never answers (it is gone), end it here.
        store = self._owned(principalOf(request))
        assert isinstance(taskId, str)
        await store.putMany(CANCELS, {taskId: {"at": self.reactor.seconds()}})
        for _ in range(CANCEL_WAIT_TICKS):
            await deferLater(self.reactor, self.followInterval, lambda: None)
            document = await self._stored(store, taskId)
            if document["task"]["status"]["state"] in TERMINAL:
                return taskView(document["task"])
        document = await self._stored(store, taskId)
        task = document["task"]
        if task["status"]["state"] not in TERMINAL:
            task["status"] = {
                "state": CANCELED,
                "timestamp": _now(self.reactor.seconds),
                "message": _textMessage(
                    "ROLE_AGENT",
                    "the task was canceled (its instance did not answer)",
                    taskId,
                    task["contextId"],
                ),
            }
            await store.putMany(TASKS, {taskId: document})
        return taskView(task)

    async def _follow(
        self,
        request: IRequest,
        agent: ServedAgent,
        taskId: Any,
        send: Callable[[dict[str, Any]], None],
        starting: bool,
    ) -> None:
        """
        Stream a task's events to C{send} until it ends: live when it runs
        here, else by polling its stored snapshot.  A subscription
        (C{starting} false) to a finished task is A2A's unsupported
        operation.
        """
        task, running = await self._task(request, agent, taskId)
        if not starting and task["status"]["state"] in TERMINAL:
            raise a2aError(
                "UNSUPPORTED_OPERATION",
                f"task {shorten(repr(taskId))} is {task['status']['state']}: there is nothing"
                " left to subscribe to; get it instead",
            )
        if running is not None:
            ended: Deferred[None] = Deferred(lambda _: running.unsubscribe(listener))
            listener = _Listener(send, lambda: ended.callback(None))
            running.subscribe(listener)
            await ended
            return
        send({"task": taskView(task)})
        store = self._owned(principalOf(request))
        state = task["status"]["state"]
        sent = len(_answerText(task))
        self.following[taskId] = self.following.get(taskId, 0) + 1
        try:
            await self._poll(store, task, state, sent, send)
        finally:
            self.following[taskId] -= 1
            if not self.following[taskId]:
                del self.following[taskId]

    async def _poll(
        self,
        store: OwnedStore,
        task: dict[str, Any],
        state: str,
        sent: int,
        send: Callable[[dict[str, Any]], None],
    ) -> None:
        """
        Send a task's stored changes until it ends: the answer's new text,
        a new state.
        """
        taskId = task["id"]
        while state not in TERMINAL:
            await deferLater(self.reactor, self.followInterval, lambda: None)
            task = (await self._stored(store, taskId))["task"]
            text = _answerText(task)
            base = {"taskId": task["id"], "contextId": task["contextId"]}
            if len(text) > sent:
                send(
                    {
                        "artifactUpdate": {
                            **base,
                            "artifact": {
                                "artifactId": ANSWER_ARTIFACT,
                                "name": ANSWER_ARTIFACT,
                                "parts": [{"text": text[sent:]}],
                            },
                            "append": sent > 0,
                            "lastChunk": False,
                        }
                    }
                )
                sent = len(text)
            if task["status"]["state"] != state or task["status"]["state"] in TERMINAL:
                state = task["status"]["state"]
                send({"statusUpdate": {**base, "status": task["status"]}})

    # -- the JSON-RPC binding ---------------------------------------------

    @app.route("/a2a/<agent>", methods=["POST"])
    @observedRoute("a2a", "/a2a/{agent}")
    async def jsonrpc(self, request: IRequest, agent: str) -> bytes | None:
        """
        A JSON-RPC 2.0 request: A2A's methods, its errors as JSON-RPC
        errors (HTTP 200).
        """
        served = self._agent(request, agent)
        requestId: Any = None
        try:
            data = await self._parseJSON(request)
            if not isinstance(data, dict):
                raise _rpcInvalid("the body must be one JSON-RPC request object")
            requestId = data.get("id")
            if data.get("jsonrpc") != "2.0" or not isinstance(data.get("method"), str):
                raise _rpcInvalid("a JSON-RPC 2.0 request needs 'jsonrpc': '2.0' and a 'method'")
            if requestId is not None and not isinstance(requestId, (str, int)):
                requestId = None
                raise _rpcInvalid("'id' must be a string or an integer")
            method = data["method"]
            params = data.get("params", {})
            self._checkVersion(request)
            if method in ("SendStreamingMessage", "SubscribeToTask"):
                await self._rpcStream(request, served, requestId, method, params)
                return None
            result = await self._rpcCall(request, served, method, params)
            return self._json(request, {"jsonrpc": "2.0", "id": requestId, "result": result})
        except AgentError as error:
            safe = safeError(error, self._redactor())
            return self._json(request, rpcError(requestId, safe))

    async def _rpcCall(
        self, request: IRequest, agent: ServedAgent, method: str, params: Any
    ) -> dict[str, Any]:
        if method == "SendMessage":
            taskRun, parsed = await self._send(request, agent, params)
            task = taskRun.task if parsed.returnImmediately else await taskRun.whenEnded()
            return {"task": taskView(task, parsed.historyLength)}
        if method == "GetTask":
            return await self._get(request, agent, params)
        if method == "ListTasks":
            return await self._list(request, agent, params)
        if method == "CancelTask":
            return await self._cancel(request, agent, params)
        if method.endswith("PushNotificationConfig") or method.endswith("PushNotificationConfigs"):
            raise a2aError(
                "PUSH_NOTIFICATION_NOT_SUPPORTED", "push notifications are not supported here"
            )
        if method == "GetExtendedAgentCard":
            raise a2aError("EXTENDED_AGENT_CARD_NOT_CONFIGURED", "this agent has no extended card")
        raise AgentError(
            f"no method {shorten(repr(method))}: A2A 1.0 methods are SendMessage,"
            " SendStreamingMessage, GetTask, ListTasks, CancelTask and SubscribeToTask",
            400,
            ErrorKind.INVALID_REQUEST,
            "method_not_found",
        )

    async def _rpcStream(
        self, request: IRequest, agent: ServedAgent, requestId: Any, method: str, params: Any
    ) -> None:
        def frame(event: dict[str, Any]) -> bytes:
            return (
                b"data: "
                + _dumpsAny({"jsonrpc": "2.0", "id": requestId, "result": event})
                + b"\n\n"
            )

        await self._stream(request, agent, method == "SendStreamingMessage", params, frame)
        return None

    async def _stream(
        self,
        request: IRequest,
        agent: ServedAgent,
        sending: bool,
        params: Any,
        frame: Callable[[dict[str, Any]], bytes],
    ) -> None:
        """
        Stream a new task (C{sending}) or a running one as SSE; the errors
        found before the stream starts are answered as usual.
        """
        if sending:
            taskRun, _ = await self._send(request, agent, params)
            taskId: Any = taskRun.taskId
        else:
            if not isinstance(params, dict):
                raise _invalidParams("the params must be a SubscribeToTaskRequest object")
            taskId = params.get("id")
            # Found (or refused) before the stream starts.
            await self._task(request, agent, taskId)
        stream = SSEStream(request)  # type: ignore[arg-type]
        started = False

        def send(event: dict[str, Any]) -> None:
            nonlocal started
            if not started:
                started = True
                stream.start()
            stream.send(frame(event))

        def keepAlive() -> None:
            if started:
                stream.send(b": keep-alive\n\n")

        # A comment line while the task is silent (a slow tool, a queue), so
        # that proxies do not take the stream for dead.
        pinger = LoopingCall(keepAlive)
        pinger.clock = self.reactor
        pinger.start(self.keepAliveInterval, now=False)
        try:
            await self._follow(request, agent, taskId, send, sending)
        except AgentError as error:
            if not started:
                raise
            # The stream is under way: it can only end (the task is still
            # there to get).
            self.log.warn(
                "a2a stream of task {task} ended early: {error}", task=taskId, error=error.message
            )
        finally:
            pinger.stop()
            stream.end()

    # -- the HTTP+JSON binding ------------------------------------------

    async def _parseJSON(self, request: IRequest) -> Any:
        """
        The request's JSON body, with the other APIs' checks (depth, size,
        no NaN; L{loadBody}); a large one is read and parsed in a thread
        (the L{BodyGate}).
        """
        content = request.content
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        if size < OFF_REACTOR_THRESHOLD:
            return loadBody(content.read())
        return await self._bodyGate().parse(content, loadBody)

    @app.route("/a2a/<agent>/message:send", methods=["POST"])
    @observedRoute("a2a", "/a2a/{agent}/message:send")
    async def restSend(self, request: IRequest, agent: str) -> bytes:
        """
        C{SendMessage} over HTTP+JSON.
        """
        served = self._agent(request, agent)
        self._checkVersion(request)
        result = await self._rpcCall(request, served, "SendMessage", await self._parseJSON(request))
        return self._json(request, result)

    @app.route("/a2a/<agent>/message:stream", methods=["POST"])
    @observedRoute("a2a", "/a2a/{agent}/message:stream")
    async def restStream(self, request: IRequest, agent: str) -> None:
        """
        C{SendStreamingMessage} over HTTP+JSON: SSE of bare StreamResponses.
        """
        served = self._agent(request, agent)
        self._checkVersion(request)
        await self._stream(request, served, True, await self._parseJSON(request), _restFrame)

    @app.route("/a2a/<agent>/tasks", methods=["GET"])
    @observedRoute("a2a", "/a2a/{agent}/tasks")
    async def restList(self, request: IRequest, agent: str) -> bytes:
        """
        C{ListTasks} over HTTP+JSON (its fields as query parameters).
        """
        served = self._agent(request, agent)
        self._checkVersion(request)
        return self._json(request, await self._list(request, served, _query(request)))

    @app.route("/a2a/<agent>/tasks/<taskId>", methods=["GET"])
    @observedRoute("a2a", "/a2a/{agent}/tasks/{id}")
    async def restTask(self, request: IRequest, agent: str, taskId: str) -> bytes | None:
        """
        C{GetTask}, C{CancelTask} (C{<id>:cancel}) and C{SubscribeToTask}
        (C{<id>:subscribe}) over HTTP+JSON: werkzeug's rules cannot split
        a segment at its colon, so the verb is read here.
        """
        served = self._agent(request, agent)
        self._checkVersion(request)
        taskId, _, verb = taskId.partition(":")
        if verb == "subscribe":
            await self._stream(request, served, False, {"id": taskId}, _restFrame)
            return None
        if verb:
            raise unknownEndpoint(request)
        return self._json(
            request, await self._get(request, served, {**_query(request), "id": taskId})
        )

    @app.route("/a2a/<agent>/tasks/<taskId>", methods=["POST"])
    @observedRoute("a2a", "/a2a/{agent}/tasks/{id}:verb")
    async def restTaskVerb(self, request: IRequest, agent: str, taskId: str) -> bytes | None:
        """
        C{POST /tasks/<id>:cancel} and C{POST /tasks/<id>:subscribe}.
        """
        served = self._agent(request, agent)
        self._checkVersion(request)
        taskId, _, verb = taskId.partition(":")
        if verb == "cancel":
            return self._json(request, await self._cancel(request, served, {"id": taskId}))
        if verb == "subscribe":
            await self._stream(request, served, False, {"id": taskId}, _restFrame)
            return None
        if verb.endswith("pushNotificationConfigs") or "pushNotificationConfigs" in taskId:
            raise a2aError(
                "PUSH_NOTIFICATION_NOT_SUPPORTED", "push notifications are not supported here"
            )
        raise unknownEndpoint(request)

    @app.route("/a2a/<agent>/tasks/<taskId>/pushNotificationConfigs", methods=["GET", "POST"])
    @app.route(
        "/a2a/<agent>/tasks/<taskId>/pushNotificationConfigs/<configId>",
        methods=["GET", "DELETE"],
    )
    @observedRoute("a2a", "/a2a/{agent}/tasks/{id}/pushNotificationConfigs")
    async def restPush(self, request: IRequest, agent: str, taskId: str, **_: str) -> bytes:
        """
        Push notification configuration: not supported (A2A's error).
        """
        self._agent(request, agent)
        raise a2aError(
            "PUSH_NOTIFICATION_NOT_SUPPORTED", "push notifications are not supported here"
        )

    @app.route("/a2a/<agent>/extendedAgentCard", methods=["GET"])
    @observedRoute("a2a", "/a2a/{agent}/extendedAgentCard")
    async def restExtendedCard(self, request: IRequest, agent: str) -> bytes:
        """
        No extended card (A2A's error).
        """
        self._agent(request, agent)
        raise a2aError("EXTENDED_AGENT_CARD_NOT_CONFIGURED", "this agent has no extended card")

    async def stopRunning(self) -> None:
        """
        Cancel every task running here; fires once they all ended and
        their end was stored.
        """
        from twisted.internet.defer import gatherResults

        runs = list(self._running.values())
        ended = [run.whenEnded() for run in runs]
        for run in runs:
            run.cancel()
        await gatherResults(ended)
        await gatherResults([run.write(lambda: succeed(None)) for run in runs])


installErrorHandlers(A2AHeadend.app)


def _rpcInvalid(message: str) -> AgentError:
    return AgentError(message, 400, ErrorKind.INVALID_REQUEST, "invalid_jsonrpc")


def _restFrame(event: dict[str, Any]) -> bytes:
    return b"data: " + _dumpsAny(event) + b"\n\n"


def _query(request: IRequest) -> dict[str, Any]:
    return {
        key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
        for key, values in request.args.items()
        if values
    }


__all__ = [
    "A2AErrors",
    "A2AHeadend",
    "A2A_ERRORS",
    "INDEX_PAGE",
    "MAX_INDEXED",
    "PROTOCOL_VERSION",
    "SendParams",
    "a2aError",
    "indexed",
    "parseSendParams",
    "rpcError",
    "taskView",
]
