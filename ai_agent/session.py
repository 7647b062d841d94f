# -*- test-case-name: tests.test_session -*-
"""
The agent loop: the agent's prompt and the client's conversation go to the
agent's models turn by turn; tool calls run and their results go back; the
run ends when a model answers without calling a tool.

Content and reasoning stream out through an L{EventSink} as they arrive.
Cancelling the Deferred returned by L{SessionRunner.run} cancels the LLM call
(closing its upstream connection) or the tool calls in flight.

Token usage: each LLM call's usage goes out as a L{Usage} event as soon as
the call returns, and a tool may send L{Usage} events into the sink it is
given for tokens it spent (a sub-agent forwards its child run's); the session
adds those to the run's total and passes them on.  So the L{Usage} events of
a run add up to the usage of its L{Finished}, sub-agents included.
"""

from __future__ import annotations

import json
import random
import secrets
from contextvars import copy_context
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Mapping, Protocol, Sequence, cast

import attrs
from twisted.internet import defer
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
    maybeDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ai_agent.accounting import CANCELLED, RunAccount, StreamMeter, estimateUsage
from ai_agent.advice import clientReason, noModelAnswered
from ai_agent.agentfile import AgentSpec, OutputSpec, ToolOutputSpec
from ai_agent.clienttools import HiddenTurn, TurnStore, restoreConversation
from ai_agent.config import Pricing
from ai_agent.errors import AgentError, ProviderError, invalidRequest
from ai_agent.events import (
    ClientToolCall,
    ContentDelta,
    Event,
    EventSink,
    Finished,
    FinishReason,
    ModelAnswering,
    ReasoningDelta,
    Retrying,
    ToolFinished,
    ToolStarted,
    Usage,
)
from ai_agent.limits import SubAgentLimiter, boundedCalls, noToolsExchange
from ai_agent.observe import NULL_OBSERVER, Observer, RunScope, ToolScope
from ai_agent.providers import (
    CallbackSink,
    ChatMessage,
    LLMRequest,
    LLMResponse,
    Provider,
    ToolCall,
    ToolSpec,
)
from ai_agent.request import ClientTool, OutputFormat, RunRequest, Sampling, ToolChoice
from ai_agent.retry import NOT_CONFIGURED, RetryLoop, RetryPolicy, totalTimeout
from ai_agent.routing import (
    ROUTER_TOOL,
    Orchestration,
    RouteChoice,
    orchestrated,
    routerInstructions,
    routerToolSpec,
)
from ai_agent.templating import HostFacts, PromptVariables, substituteVariables
from ai_agent.tools._toolbox import AgentToolBox
from ai_agent.tools.output import (
    EXTRACTION_MAX_TOKENS,
    TOOL_OUTPUT,
    TOOL_OUTPUT_SPEC,
    RunOutputs,
    ToolOutputError,
)

if TYPE_CHECKING:
    from ai_agent.cache import ResponseCache

log = Logger()

#: No client tools' names.
_NO_NAMES: frozenset[str] = frozenset()

#: Tool names of sub-agent calls start with this.
SUBAGENT_PREFIX = "agent__"


def agentOutputFormat(agent: AgentSpec) -> OutputFormat | None:
    """
    The answer format an agent file's C{output} declares: JSON conforming
    to a schema, any JSON object, or L{None} for text.
    """
    if agent.output.format != "json":
        return None
    return OutputFormat.forAgent(agent.name, agent.output.schema)


class ProviderLookup(Protocol):
    """
    Finds the provider named by the first part of C{provider/model}.
    """

    def __call__(self, name: str) -> Provider:
        """
        The provider called C{name}.

        @raise AgentError: if there is none.
        """
        ...


class ToolBox(Protocol):
    """
    The tools one agent may call.
    """

    def specs(self) -> Sequence[ToolSpec] | Deferred[Sequence[ToolSpec]]:
        """
        The tools, as the model sees them (or a Deferred firing with them).
        """
        ...

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        """
        Run one tool; fire with its textual result or fail.

        @param sink: progress for the client goes here (a sub-agent's as
            L{ai_agent.events.SubAgentProgress}); tokens the tool spent (a
            sub-agent's) as L{Usage} events, which the session adds to the
            run's usage.
        """
        ...


@attrs.define
class _NoTools:
    def specs(self) -> Sequence[ToolSpec]:
        return ()

    def call(self, name: str, arguments: Mapping[str, Any], sink: EventSink) -> Deferred[str]:
        raise AgentError(f"unknown tool {name!r}", 500)


def splitModel(model: str) -> tuple[str, str]:
    """
    Split C{provider/model} at its first C{/}.
    """
    provider, _, upstream = model.partition("/")
    return provider, upstream


def buildMessages(
    agent: AgentSpec,
    conversation: Sequence[ChatMessage],
    instructions: Sequence[str] = (),
    clientInstructions: Sequence[str] = (),
    variables: Mapping[str, str] | None = None,
) -> list[ChatMessage]:
    """
    The messages of a run's first LLM call: the agent's prompt, its
    C{variables} substituted (L{ai_agent.templating}; followed by
    the C{instructions} its tools' servers give) as the first system
    message, then the client's own instructions (C{clientInstructions}, then
    the conversation's system and developer messages), each as a system
    message (which every OpenAI-compatible server accepts), then the rest of
    the conversation in order.
    """
    messages: list[ChatMessage] = []
    own = agent.prompt if variables is None else substituteVariables(agent.prompt, variables)
    prompt = "\n\n".join(part for part in (own, *instructions) if part)
    if prompt:
        messages.append(ChatMessage("system", prompt))
    messages.extend(ChatMessage("system", text) for text in clientInstructions if text)
    inline = [m for m in conversation if m.role in ("system", "developer")]
    messages.extend(attrs.evolve(m, role="system") for m in inline)
    messages.extend(m for m in conversation if m.role not in ("system", "developer"))
    return messages


@attrs.define
class _TrackingSink:
    """
    Passes deltas on and remembers whether any answer text, or anything at
    all, went out.

    Retry notes wait in L{note} until the next attempt produces something
    (or the turn succeeds): a turn that fails without producing anything
    sends nothing, so the client can still get a real HTTP status.
    """

    events: EventSink
    contentSent: bool = False
    sentAnything: bool = False
    _notes: tuple[Retrying, ...] = ()
    _model: str | None = None

    def calling(self, model: str) -> None:
        """
        The next deltas come from C{model}: announce it before the first.
        """
        self._model = model

    def answered(self) -> None:
        """
        The current call answered: announce its model if no delta did.
        """
        if self._model is not None:
            model, self._model = self._model, None
            self.events(ModelAnswering(model))

    def content(self, text: str) -> None:
        if text:
            self.answered()
            self.flushNotes()
            self.contentSent = self.sentAnything = True
            self.events(ContentDelta(text))

    def reasoning(self, text: str) -> None:
        if text:
            self.answered()
            self.flushNotes()
            self.sentAnything = True
            self.events(ReasoningDelta(text))

    def note(self, event: Retrying) -> None:
        """
        A retry to report before whatever comes next.
        """
        self._notes += (event,)

    def flushNotes(self) -> None:
        """
        Send the waiting notes.
        """
        notes, self._notes = self._notes, ()
        for event in notes:
            self.events(event)


@attrs.define
class SessionRunner:
    """
    Runs agents.

    @ivar providers: finds a provider by name.
    @ivar tools: builds the L{ToolBox} of an agent, or L{None} for none.
    @ivar retryPolicy: the waits between a turn's attempts.
    @ivar random: the backoff jitter's source (a float in M{[0, 1)}).
    @ivar pricing: prices by C{provider/model}, for the cost in each run's
        log line.
    @ivar turns: where hybrid runs keep the agent's own work until the
        client comes back with its tools' results (L{None}: not kept; a
        continuation goes on from what the client sent).
    @ivar observer: told of each run, LLM call and tool call (metrics and
        traces).
    """

    providers: ProviderLookup
    reactor: IReactorTime
    tools: Any = None
    retryPolicy: RetryPolicy = RetryPolicy()
    random: Callable[[], float] = attrs.field(default=random.random, repr=False)
    pricing: Mapping[str, Pricing] = attrs.field(factory=dict, repr=False)
    turns: TurnStore | None = None
    observer: Observer = attrs.field(default=NULL_OBSERVER, repr=False)
    agents: Mapping[str, AgentSpec] = attrs.field(factory=dict, repr=False)
    limiter: SubAgentLimiter | None = None
    cache: ResponseCache | None = None
    host: HostFacts = attrs.field(factory=HostFacts.current, repr=False)

    def promptVariables(self, agent: AgentSpec, subAgent: bool = False) -> Mapping[str, str]:
        """
        The values of the prompt variables for a run of C{agent} starting
        now (the reactor's time), made when first looked up.
        """
        return PromptVariables(
            self.reactor.seconds(),
            self.host,
            agent.maxTurns,
            agent.maxToolCallsPerTurn,
            agent.output.format,
            subAgent,
        )

    def run(self, agent: AgentSpec, request: RunRequest, events: EventSink) -> Deferred[Finished]:
        """
        Run C{agent} on C{request}: with its advisors, router and handoff
        when it has them (see L{ai_agent.routing}).

        @return: a Deferred firing with L{Finished} when the agent answered,
            or failing with L{AgentError}.  Content, reasoning and progress
            go to C{events} as they arrive.
        """
        if agent.cache is not None and self.cache is not None:
            return self.cache.run(
                agent, request, events, lambda sink: self._uncached(agent, request, sink)
            )
        return self._uncached(agent, request, events)

    def _uncached(
        self, agent: AgentSpec, request: RunRequest, events: EventSink
    ) -> Deferred[Finished]:
        if orchestrated(agent):
            return Orchestration(self, agent, request, events).run()
        return self.runStage(agent, request, events)

    def runStage(
        self,
        agent: AgentSpec,
        request: RunRequest,
        events: EventSink,
        route: RouteChoice | None = None,
    ) -> Deferred[Finished]:
        """
        Run C{agent}'s own loop on C{request} (no advisors or handoff).

        @param route: for a router agent, where its model's choice goes:
            the run ends once the model called C{router__handoff-to}.
        """
        account = RunAccount(
            agent.name, self.reactor.seconds(), self.pricing, labels=request.labels
        )
        # Its parent span is the one current now: the request's, or the tool
        # call running this agent as a sub-agent.
        scope = self.observer.run(agent.name, agent.description or "")
        account.traceId = scope.traceId
        toolsRan: list[bool] = []
        # The run's end is told by callbacks rather than by a coroutine
        # around the turns: one coroutine frame less kept for the whole run.
        return ensureDeferred(
            self._turns(agent, request, events, toolsRan, account, scope, route)
        ).addCallbacks(
            self._ended,
            self._failed,
            callbackArgs=(account, scope),
            errbackArgs=(account, scope, toolsRan),
        )

    def _ended(self, finished: Finished, account: RunAccount, scope: RunScope) -> Finished:
        account.finish(finished.reason, self.reactor.seconds(), finished.usage)
        scope.end(finished.reason, finished.usage)
        return finished

    def _failed(
        self, failure: Failure, account: RunAccount, scope: RunScope, toolsRan: list[bool]
    ) -> Failure:
        error = failure.value
        if isinstance(error, CancelledError):
            account.finish("cancelled", self.reactor.seconds())
            scope.end("cancelled", errorType="cancelled")
        elif isinstance(error, AgentError):
            account.finish(
                f"failed: {error.status} {error.code or error.kind}", self.reactor.seconds()
            )
            scope.end("failed", errorType=error.code or error.kind)
            # Repeating a run whose tools already acted could repeat their
            # effects; the headend tells clients not to retry it.
            error.sideEffects = error.sideEffects or bool(toolsRan)
        else:
            account.finish(f"crashed: {type(error).__name__}", self.reactor.seconds())
            scope.end("failed", errorType=type(error).__name__)
        return failure

    def runDirect(
        self, agent: AgentSpec, request: RunRequest, events: EventSink
    ) -> Deferred[Finished]:
        """
        One call to the agent's first model with the client's messages as
        they are (C{developer} sent as C{system}): no agent prompt, no
        tools, no retry or fallback.  For chat UIs' background tasks
        (titles, tags, ...; see L{ai_agent.tasks}), whose answers the
        client parses: only answer text and the call's L{Usage} go to
        C{events}, the model's reasoning is dropped.

        @return: a Deferred firing with L{Finished}, or failing with
            L{AgentError}; cancelling it closes the upstream call.
        """
        return ensureDeferred(self._direct(agent, request, events))

    async def _direct(self, agent: AgentSpec, run: RunRequest, events: EventSink) -> Finished:
        model = agent.models[0]
        account = RunAccount(agent.name, self.reactor.seconds(), self.pricing, labels=run.labels)
        providerName, upstreamModel = splitModel(model)
        messages = [ChatMessage("system", text) for text in run.instructions if text]
        messages += [
            attrs.evolve(m, role="system") if m.role == "developer" else m for m in run.conversation
        ]
        sampling = run.sampling
        # No reasoning effort: the client waits for a short, parsed answer,
        # in the format it asked for (not the agent's).
        request = _llmRequest(
            agent, upstreamModel, messages, (), sampling, run.stream, None, sampling.outputFormat
        )
        request = attrs.evolve(request, reasoningTokens=None)

        def content(text: str) -> None:
            if text:
                events(ContentDelta(text))

        started = self.reactor.seconds()
        # One model, no fallback: whatever comes is its answer.
        events(ModelAnswering(model))
        scope = self.observer.run(agent.name, agent.description or "")
        account.traceId = scope.traceId
        call = None
        meter = StreamMeter(CallbackSink(onContent=content))
        try:
            provider = self.providers(providerName)
            call = scope.llmCall(providerName, upstreamModel, request, provider)
            with call.activate():
                calling = provider.complete(request, call.sink(meter))
            response = await calling
        except CancelledError:
            _recordCancelled(account, model, request, meter, self.reactor.seconds() - started)
            if call is not None:
                call.failed("cancelled")
            account.finish("cancelled", self.reactor.seconds())
            scope.end("cancelled", errorType="cancelled")
            raise
        except AgentError as error:
            if isinstance(error, ProviderError):
                record = account.record(
                    model, Usage(), self.reactor.seconds() - started, error.code
                )
                if call is not None:
                    call.failed(error.code or error.kind, record.cost)
            account.finish(
                f"failed: {error.status} {error.code or error.kind}", self.reactor.seconds()
            )
            scope.end("failed", errorType=error.code or error.kind)
            raise
        record = account.record(model, response.usage, self.reactor.seconds() - started)
        assert call is not None
        call.answered(response, record.cost)
        if response.usage.totalTokens:
            events(response.usage)
        reason = _runReason(response.finishReason)
        account.finish(reason, self.reactor.seconds(), response.usage)
        scope.end(reason, response.usage)
        return Finished(reason, response.usage)

    async def _turns(
        self,
        agent: AgentSpec,
        request: RunRequest,
        events: EventSink,
        toolsRan: list[bool],
        account: RunAccount,
        scope: RunScope = RunScope(),
        route: RouteChoice | None = None,
    ) -> Finished:
        toolbox = self.tools(agent) if self.tools is not None else _NoTools()
        if isinstance(toolbox, AgentToolBox):
            # Its sub-agents run for the same principal.
            toolbox.owner = request.owner
        ownSpecs = tuple(await maybeDeferred(toolbox.specs))
        instructions = list(getattr(toolbox, "instructions", ()))
        if route is not None:
            ownSpecs += (routerToolSpec(agent, self.agents),)
            instructions.append(routerInstructions(agent))
        clientTools = request.clientTools if agent.clientTools else ()
        choice = request.toolChoice if agent.clientTools else ToolChoice()
        _refuseClashes(clientTools, ownSpecs)
        # (An empty one is shared: each costs 216 bytes for the whole run.)
        clientNames = (
            frozenset(tool.spec.name for tool in clientTools) if clientTools else _NO_NAMES
        )
        specs = ownSpecs
        if choice.mode != ToolChoice.NONE:
            specs += tuple(tool.spec for tool in clientTools)
        conversation: Sequence[ChatMessage] = request.conversation
        turns = self.turns if request.turns is None else request.turns
        if turns is not None and any(m.toolCalls for m in conversation):
            conversation, missing = await restoreConversation(conversation, turns, request.owner)
            if missing:
                log.warn(
                    "agent {agent}: no hidden turn found for tool calls {missing}"
                    " (expired, or made on another instance); going on from what"
                    " the client sent",
                    agent=agent.name,
                    missing=", ".join(missing[:8]),
                )
        messages = buildMessages(
            agent,
            conversation,
            instructions,
            request.instructions,
            self.promptVariables(agent, request.subAgent),
        )
        start = len(messages)
        meter = _UsageMeter(events)
        kept = _RunTools(
            self,
            agent,
            RunOutputs(agent.toolOutput, agent.toolResponseMaxBytes),
            meter,
            account,
            scope,
            request.owner,
        )
        calledTools = False
        for turn in range(1, agent.maxTurns + 1):
            lastTurn = turn == agent.maxTurns
            # tool_output is offered once a result was kept behind a handle.
            turnSpecs = specs + (TOOL_OUTPUT_SPEC,) if kept.outputs else specs
            response, callUsage = await self._callWithFallback(
                agent,
                messages,
                () if lastTurn else turnSpecs,
                events,
                request.sampling,
                request.stream,
                account,
                _turnChoice(choice, turn, calledTools, lastTurn),
                request.parallelToolCalls,
                scope=scope,
            )
            meter(callUsage)
            if response.toolCalls and not turnSpecs and not lastTurn:
                # Calls to tools the model was not offered: it is told so.
                messages.extend(noToolsExchange(response, toolbox, events))
                continue
            if not response.toolCalls or lastTurn:
                return Finished(_runReason(response.finishReason), meter.total)
            calledTools = True
            calls = _uniqueIds(response.toolCalls, messages, clientNames)
            assistant = ChatMessage("assistant", response.content, toolCalls=calls)
            own = tuple(call for call in calls if call.name not in clientNames)
            handedBack = [call for call in calls if call.name in clientNames]
            results: list[ChatMessage] = []
            if route is not None and any(call.name == ROUTER_TOOL for call in own):
                results.extend(_routeCalls(route, own, meter.toolSink))
                own = tuple(call for call in own if call.name != ROUTER_TOOL)
            if own:
                toolsRan.append(True)
                results += await self._runTools(agent, toolbox, own, meter.toolSink, scope, kept)
            if route is not None and route.target is not None:
                # The destination takes the conversation from here.
                return Finished(FinishReason.END, meter.total)
            if handedBack:
                await self._saveHidden(
                    agent,
                    turns,
                    request.owner,
                    HiddenTurn(
                        tuple(messages[start:]),
                        assistant,
                        tuple(results),
                        tuple(call.id for call in handedBack),
                    ),
                )
                for index, call in enumerate(handedBack):
                    # The client runs it: counted as tool="client".
                    scope.tool(call.name, call.id, call.arguments, kind="function").end(
                        "handed_back"
                    )
                    events(ClientToolCall(index, call.id, call.name, call.arguments))
                return Finished(FinishReason.TOOL_CALLS, meter.total)
            messages.append(assistant)
            messages.extend(results)
        raise AssertionError("unreachable: the last turn always returns")

    async def _saveHidden(
        self, agent: AgentSpec, turns: TurnStore | None, owner: str, turn: HiddenTurn
    ) -> None:
        """
        Keep the agent's own work of this run for the client's next
        request.  A store that fails fails the run (with its error, a 503
        when the database is down) rather than hand back calls whose
        continuation would go on without that work.
        """
        if turns is None:
            return
        await turns.saveTurn(turn, owner)

    def _callWithFallback(
        self,
        agent: AgentSpec,
        messages: list[ChatMessage],
        specs: tuple[ToolSpec, ...],
        events: EventSink,
        sampling: Sampling,
        stream: bool,
        account: RunAccount | None = None,
        toolChoice: ToolChoice | None = None,
        parallelToolCalls: bool | None = None,
        scope: RunScope = RunScope(),
    ) -> Coroutine[Any, Any, tuple[LLMResponse, Usage]]:
        """
        One turn's LLM call: the agent's models in order, up to
        C{maxRetries} attempts, with the waits of L{retryPolicy}, retrying
        only while nothing of this turn reached the client.  See
        L{ai_agent.retry}.
        """
        sink = _TrackingSink(events)
        if account is None:
            account = RunAccount(agent.name, self.reactor.seconds(), self.pricing)
        outputFormat = sampling.outputFormat or agentOutputFormat(agent)
        # Made for the first model, the one most turns call (see
        # _Turn.attempt).
        firstModel = splitModel(agent.models[0])[1] if agent.models else ""
        request = _llmRequest(
            agent, firstModel, messages, specs, sampling, stream, agent.reasoning, outputFormat
        )
        if specs:
            request = attrs.evolve(
                request, toolChoice=toolChoice, parallelToolCalls=parallelToolCalls
            )
        # The turn's coroutine is the turn object's own: no frame of this
        # method's arguments is kept while the call runs.
        return _Turn(self, agent, request, sink, account, scope, max(agent.maxRetries, 1)).run()

    async def _runTools(
        self,
        agent: AgentSpec,
        toolbox: ToolBox,
        calls: tuple[ToolCall, ...],
        events: EventSink,
        scope: RunScope = RunScope(),
        kept: _RunTools | None = None,
    ) -> list[ChatMessage]:
        """
        Run a turn's tool calls concurrently; every outcome, failures and
        timeouts included, becomes a C{tool} message the model can read.
        """
        running, refused = boundedCalls(agent, calls, events)
        limit = DeferredSemaphore(agent.maxConcurrentTools)
        # A call that waits for a place starts from whatever freed it: each
        # runs in a copy of this run's context (see ai_agent.flow).
        pending = [
            limit.run(copy_context().run, self._runTool, agent, toolbox, call, events, scope, kept)
            for call in running
        ]
        # Cancelling a DeferredList cancels every call in it.
        outcomes = await DeferredList(pending, consumeErrors=True)
        results: list[ChatMessage] = []
        for call, (ok, value) in zip(running, outcomes, strict=True):
            if not ok:
                cast(Failure, value).raiseException()
            results.append(ChatMessage("tool", value, toolCallId=call.id))
        return results + refused

    def _runTool(
        self,
        agent: AgentSpec,
        toolbox: ToolBox,
        call: ToolCall,
        events: EventSink,
        scope: RunScope = RunScope(),
        kept: _RunTools | None = None,
    ) -> Deferred[str]:
        tool = scope.tool(call.name, call.id, call.arguments)
        outcome = ensureDeferred(self._toolText(agent, toolbox, call, events, tool, kept))

        def cancelled(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                tool.end("cancelled")
            return failure

        return outcome.addErrback(cancelled)

    async def _toolText(
        self,
        agent: AgentSpec,
        toolbox: ToolBox,
        call: ToolCall,
        events: EventSink,
        tool: ToolScope = ToolScope(),
        kept: _RunTools | None = None,
    ) -> str:
        events(ToolStarted(call.name, call.arguments, call.id))
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as error:
            text = f"error: the arguments of {call.name} are not a JSON object: {error}"
            events(ToolFinished(call.name, text, call.id))
            tool.end("error", text)
            return text
        # The tool call's span is current while the call starts: a
        # sub-agent's run and an MCP server's HTTP request find it there.
        with tool.activate():
            ttl = _cacheTTL(toolbox, call.name)
            if call.name == TOOL_OUTPUT and kept is not None and kept.outputs:
                attempt = kept.call(arguments, events)
            elif ttl is not None and self.cache is not None:
                attempt = self.cache.tool(
                    kept.owner if kept is not None else "",
                    call.name,
                    arguments,
                    ttl,
                    partial(maybeDeferred, toolbox.call, call.name, arguments, events),
                )
            else:
                attempt = maybeDeferred(toolbox.call, call.name, arguments, events)
        if not call.name.startswith(SUBAGENT_PREFIX) and call.name != TOOL_OUTPUT:
            # A sub-agent is bounded by its own limits (its turns, its LLM
            # and tool timeouts), not by the parent's toolTimeout.
            attempt.addTimeout(agent.toolTimeout, self.reactor)
        outcome = "error"
        try:
            text = await attempt
            outcome = "ok"
        except CancelledError:
            raise
        except defer.TimeoutError:
            text = f"error: {call.name} did not answer within {agent.toolTimeout:g} s"
            outcome = "timeout"
        except AgentError as error:
            text = f"error: {error.message}"
        except ToolOutputError as error:
            text = f"error: {error}"
        except Exception as error:  # noqa: BLE001 - the model reads any tool failure
            text = f"error: {type(error).__name__}: {error}"
        tool.end(outcome, text)
        if kept is not None and call.name != TOOL_OUTPUT:
            # Over toolResponseMaxBytes: kept behind a handle, or cut.
            text = kept.outputs.result(call.name, text)
        else:
            text = RunOutputs(_NO_HANDLES, agent.toolResponseMaxBytes).result(call.name, text)
        events(ToolFinished(call.name, text, call.id))
        return text


_NO_HANDLES = ToolOutputSpec(enabled=False)


def _cacheTTL(toolbox: ToolBox, name: str) -> float | None:
    """
    How long the result of the tool C{name} is cached (its MCP server's
    C{cache} or C{toolsCache}), or L{None}: not cached.
    """
    cacheTTL = getattr(toolbox, "cacheTTL", None)
    return None if cacheTTL is None else cacheTTL(name)


def _routeCalls(
    route: RouteChoice, calls: Sequence[ToolCall], events: EventSink
) -> list[ChatMessage]:
    """
    The router's C{router__handoff-to} calls: the first valid one chooses.
    """
    results = []
    for call in calls:
        if call.name != ROUTER_TOOL:
            continue
        events(ToolStarted(call.name, call.arguments, call.id))
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            text = f"error: the arguments of {call.name} are not a JSON object"
        elif route.target is not None:
            text = f"error: already routed to {route.target.label}"
        else:
            text = route.choose(call, arguments)
        events(ToolFinished(call.name, text, call.id))
        results.append(ChatMessage("tool", text, toolCallId=call.id))
    return results


@attrs.define(eq=False)
class _RunTools:
    """
    What a run's tool calls share: the tool results kept behind handles,
    and the C{tool_output} calls reading them (whose extraction pass calls
    the agent's models, or its C{toolOutput.models}, through the run's own
    turn machinery: fallback, retries, accounting, usage; without tools,
    streaming nothing but progress and usage); the principal (C{owner})
    cached tool results belong to.
    """

    runner: SessionRunner
    agent: AgentSpec
    outputs: RunOutputs
    meter: _UsageMeter
    account: RunAccount
    scope: RunScope
    owner: str = ""

    def call(self, arguments: Mapping[str, Any], events: EventSink) -> Deferred[str]:
        return ensureDeferred(self.outputs.call(arguments, self._extract, events))

    async def _extract(self, messages: list[ChatMessage]) -> str:
        agent = self.agent
        reader = attrs.evolve(agent, output=OutputSpec())
        if agent.toolOutput.models:
            # Other models: the agent's own sampling keys may not apply.
            reader = attrs.evolve(
                reader,
                models=agent.toolOutput.models,
                reasoning=None,
                reasoningTokens=None,
                topK=None,
                repeatPenalty=None,
            )
        response, usage = await self.runner._callWithFallback(
            reader,
            messages,
            (),
            _progressOnly(self.meter.events),
            Sampling(maxTokens=EXTRACTION_MAX_TOKENS),
            False,
            self.account,
            scope=self.scope,
        )
        self.meter(usage)
        return response.content


def _progressOnly(events: EventSink) -> EventSink:
    """
    A sink passing on only progress (retries): an extraction call's text
    is the tool's result, not part of the answer.
    """

    def sink(event: Event) -> None:
        if not isinstance(event, (ContentDelta, ReasoningDelta, ModelAnswering)):
            events(event)

    return sink


@attrs.define(eq=False)
class _Turn:
    """
    The attempts of one turn's LLM call (see L{SessionRunner._callWithFallback}):
    what L{RetryLoop} calls back, on one object rather than in closures kept
    alive for as long as the call runs.

    @ivar reasons: each failed model's last error.
    """

    runner: SessionRunner
    agent: AgentSpec
    request: LLMRequest
    sink: _TrackingSink
    account: RunAccount
    scope: RunScope
    attempts: int
    reasons: dict[str, ProviderError] = attrs.field(factory=dict)

    async def run(self) -> tuple[LLMResponse, Usage]:
        runner, agent, sink = self.runner, self.agent, self.sink
        loop = RetryLoop(
            runner.reactor, runner.retryPolicy, runner.random, self.failed, self.waiting
        )
        try:
            response = await loop.run(agent.models, self.attempts, self.attempt, self.mayRetry)
        except ProviderError as error:
            reasons = self.reasons
            if len(reasons) > 1 and not sink.sentAnything:
                raise noModelAnswered(agent.name, agent.models, reasons, error) from None
            raise
        sink.flushNotes()
        return response, response.usage

    def mayRetry(self) -> bool:
        # Only while nothing of this turn reached the client.
        return not self.sink.sentAnything

    async def attempt(self, model: str) -> LLMResponse:
        runner, sink, account = self.runner, self.sink, self.account
        providerName, upstreamModel = splitModel(model)
        provider = runner.providers(providerName)
        started = runner.reactor.seconds()
        sink.calling(model)
        call = self.scope.llmCall(providerName, upstreamModel, self.request, provider)
        meter = StreamMeter(sink)
        request = self.request
        if request.model != upstreamModel:
            # A fallback model: the turn's request names the first.
            request = attrs.evolve(request, model=upstreamModel)
        try:
            # The call's span is current while the request goes out, so
            # its traceparent goes with it.
            with call.activate():
                calling = provider.complete(request, call.sink(meter))
            response = await calling
        except ProviderError as error:
            self.reasons[model] = error
            if error.code == NOT_CONFIGURED:
                # A model that cannot be used at all was never called.
                call.failed(error.code)
                raise
            record = account.record(model, Usage(), runner.reactor.seconds() - started, error.code)
            call.failed(error.code or error.kind, record.cost)
            raise
        except CancelledError:
            # The call ran and may have spent tokens nobody reported.
            _recordCancelled(
                account, model, self.request, meter, runner.reactor.seconds() - started
            )
            call.failed("cancelled")
            raise
        record = account.record(model, response.usage, runner.reactor.seconds() - started)
        call.answered(response, record.cost)
        sink.answered()
        return response

    def failed(self, model: str, number: int, error: ProviderError, retrying: bool) -> None:
        agent = self.agent
        if error.code == NOT_CONFIGURED:
            log.info(
                "agent {agent}: skipping {model}: {error}",
                agent=agent.name,
                model=model,
                error=error.message,
            )
            self.sink.note(Retrying(model, clientReason(error), skipped=True, detail=error.message))
            return
        if retrying:
            self.scope.retrying(*splitModel(model))
        log.warn(
            "agent {agent}: {model} failed (attempt {attempt} of {attempts}): {error}",
            agent=agent.name,
            model=model,
            attempt=number,
            attempts=self.attempts,
            error=error.message,
        )
        if retrying:
            self.sink.note(Retrying(model, clientReason(error), detail=error.message))

    def waiting(self, model: str, seconds: float) -> None:
        log.info(
            "agent {agent}: waiting {seconds:.1f}s before calling {model}",
            agent=self.agent.name,
            seconds=seconds,
            model=model,
        )


def _recordCancelled(
    account: RunAccount, model: str, request: LLMRequest, meter: StreamMeter, seconds: float
) -> None:
    """
    Record a call cancelled before it answered: when its model had
    streamed something, with an estimate of its tokens (the upstream's
    counts come only at the end); else as a call of unknown cost.
    """
    if meter.characters:
        usage = estimateUsage(request.messages, request.tools, meter.characters)
        account.record(model, usage, seconds, CANCELLED, estimated=True)
    else:
        account.record(model, Usage(), seconds, CANCELLED)


@attrs.define
class _UsageMeter:
    """
    Adds up a run's usage and passes each increment on as a L{Usage} event.
    """

    events: EventSink
    total: Usage = Usage()

    def __call__(self, usage: Usage) -> None:
        if usage.totalTokens:
            self.total = self.total + usage
            self.events(usage)

    def toolSink(self, event: Event) -> None:
        """
        The sink tools get: their L{Usage} events count towards the run.
        """
        if isinstance(event, Usage):
            self(event)
        else:
            self.events(event)


def _llmRequest(
    agent: AgentSpec,
    model: str,
    messages: Sequence[ChatMessage],
    specs: tuple[ToolSpec, ...],
    sampling: Sampling,
    stream: bool,
    reasoning: str | None,
    outputFormat: OutputFormat | None,
) -> LLMRequest:
    """
    One LLM call's request: the client's sampling over the agent's, the
    agent's timeouts.
    """
    return LLMRequest(
        model=model,
        messages=tuple(messages),
        tools=specs,
        temperature=_first(sampling.temperature, agent.temperature),
        topP=_first(sampling.topP, agent.topP),
        topK=agent.topK,
        repeatPenalty=agent.repeatPenalty,
        reasoningTokens=agent.reasoningTokens,
        maxTokens=_first(sampling.maxTokens, agent.maxOutputTokens),
        stop=sampling.stop,
        seed=sampling.seed,
        reasoning=reasoning,
        stream=stream,
        timeout=agent.llmTimeout,
        totalTimeout=totalTimeout(agent.llmTimeout),
        outputFormat=outputFormat,
        cache=agent.caching,
    )


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _refuseClashes(clientTools: Sequence[ClientTool], own: Sequence[ToolSpec]) -> None:
    """
    A client tool may not take the name of one of the agent's own tools,
    nor the sub-agents' namespace: the model could not tell them apart.

    @raise AgentError: a 400 naming the tool.
    """
    ownNames = {spec.name for spec in own} | {TOOL_OUTPUT}
    for tool in clientTools:
        name = tool.spec.name
        if name in ownNames or name.startswith(SUBAGENT_PREFIX):
            raise invalidRequest(
                f"the client tool {name!r} has the name of one of the agent's own tools"
                f" ({SUBAGENT_PREFIX}* names are sub-agents); rename it",
                tool.param,
                "tool_name_conflict",
            )


def _turnChoice(
    choice: ToolChoice, turn: int, calledTools: bool, lastTurn: bool
) -> ToolChoice | None:
    """
    The tool choice of one LLM call: a named tool is forced on the first
    call only; C{required} holds until some tool was called; otherwise the
    provider's default.
    """
    if lastTurn:
        return None
    if choice.mode == ToolChoice.TOOL:
        return choice if turn == 1 else None
    if choice.mode == ToolChoice.REQUIRED:
        return None if calledTools else choice
    return None


def _uniqueIds(
    calls: Sequence[ToolCall], messages: Sequence[ChatMessage], clientNames: frozenset[str]
) -> tuple[ToolCall, ...]:
    """
    The calls with ids unique in the run: the model's own for the agent's
    tools, unless empty or repeated; always a generated one (C{call_} and
    96 random bits) for a call handed back to the client, since its hidden
    turn is found by that id in a store shared by every conversation, and a
    model's ids (C{call_0}) can repeat across conversations.
    """
    seen = {call.id for message in messages for call in message.toolCalls}
    unique: list[ToolCall] = []
    for call in calls:
        if not call.id or call.id in seen or call.name in clientNames:
            call = attrs.evolve(call, id="call_" + secrets.token_hex(12))
        seen.add(call.id)
        unique.append(call)
    return tuple(unique)


def _runReason(reason: str) -> str:
    """
    A run's finish reason from its last LLM call's: the model's own tool
    calls were handled (or ignored on the last turn), so they end nothing.
    """
    if reason in (
        FinishReason.MAX_TOKENS,
        FinishReason.STOP_SEQUENCE,
        FinishReason.CONTENT_FILTER,
    ):
        return reason
    return FinishReason.END


__all__ = [
    "RunRequest",
    "Sampling",
    "SessionRunner",
    "ToolBox",
    "agentOutputFormat",
    "buildMessages",
    "splitModel",
]
