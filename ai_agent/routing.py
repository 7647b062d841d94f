# -*- test-case-name: tests.test_routing -*-
"""
Orchestration around an agent's run, as the TypeScript ai-agent defines it
in the frontmatter keys C{advisors}, C{router} and C{handoff}:

  - B{advisors}: agents run in parallel before the agent, each on the
    client's conversation; their answers go to the agent's model as tagged
    blocks (C{<advisory__NONCE agent="...">}) at the start of the last user
    message.  A failed advisor becomes a block saying so; the run goes on.
  - B{router}: the agent gets the C{router__handoff-to} tool, whose
    C{agent} parameter is one of C{router.destinations} as the file wrote
    them; when the model calls it, the agent's run ends and the chosen
    destination takes the conversation (with the router's optional
    C{message}); the destination's answer is the answer.
  - B{handoff}: the agent's answer (or the chosen destination's) goes to
    the handoff agent, with the original request, and the handoff agent's
    answer is the answer.

Only the last stage's answer streams as content: the earlier stages'
answer text is held back (their reasoning, progress and usage stream as
usual).  Each step is told as progress (L{AdvisorProgress},
L{HandoffProgress}).  Every agent run here counts against the server-wide
sub-agent bound (L{ai_agent.limits.SubAgentLimiter}), and the registry
refuses cycles through these keys when it loads, so the depth is bounded.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Mapping, Sequence, cast

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.python.failure import Failure

from ai_agent.agentfile import AgentSpec, RouteTarget
from ai_agent.errors import AgentError
from ai_agent.events import (
    AdvisorProgress,
    ContentDelta,
    Event,
    EventSink,
    Finished,
    HandoffProgress,
    Usage,
)
from ai_agent.providers import ChatMessage, ToolCall, ToolSpec
from ai_agent.request import RunRequest, ToolChoice
from ai_agent.tools.subagent import NestedSink

if TYPE_CHECKING:
    from ai_agent.session import SessionRunner

ROUTER_TOOL = "router__handoff-to"
"""
The router's tool, named as in the TypeScript ai-agent.
"""


def orchestrated(agent: AgentSpec) -> bool:
    """
    Whether C{agent} has advisors, a router or a handoff.
    """
    return bool(agent.advisors or agent.router or agent.handoff is not None)


def taggedBlock(prefix: str, content: str, **attributes: str) -> str:
    """
    C{content} in a tag named C{<prefix>__<nonce>} (12 random hex digits,
    so the content cannot close it), with C{attributes}.
    """
    tag = f"{prefix}__{secrets.token_hex(6)}"
    attrText = "".join(f' {key}="{value}"' for key, value in attributes.items() if value)
    return f"<{tag}{attrText}>\n{content}\n</{tag}>"


def routerToolSpec(agent: AgentSpec, agents: Mapping[str, AgentSpec]) -> ToolSpec:
    """
    The C{router__handoff-to} tool of a router agent: C{agent} is one of
    its destinations as the file wrote them, C{message} optional.
    """
    labels = [target.label for target in agent.router]
    described = []
    for target in agent.router:
        spec = agents.get(target.path)
        about = spec.description if spec is not None and spec.description else ""
        described.append(f"{target.label}" + (f" ({about})" if about else ""))
    return ToolSpec(
        ROUTER_TOOL,
        "Hand the user's request to another agent, who answers the user directly."
        f" Available destinations: {', '.join(described)}",
        {
            "type": "object",
            "properties": {
                "agent": {
                    "type": "string",
                    "enum": labels,
                    "description": "The destination (exactly as listed).",
                },
                "message": {
                    "type": "string",
                    "description": "Optional note for the destination agent.",
                },
            },
            "required": ["agent"],
            "additionalProperties": False,
        },
    )


def routerInstructions(agent: AgentSpec) -> str:
    """
    What the router's model is told with its prompt.
    """
    labels = ", ".join(target.label for target in agent.router)
    return (
        f"Use the {ROUTER_TOOL} tool to route to one of the available destinations:"
        f" {labels}. The destination receives the original user request (and your"
        " optional message) and answers the user directly."
    )


@attrs.define(eq=False)
class RouteChoice:
    """
    What a router agent's model chose, once it called C{router__handoff-to}.
    """

    agent: AgentSpec
    target: RouteTarget | None = None
    message: str = ""

    def choose(self, call: ToolCall, arguments: Mapping[str, Any]) -> str:
        """
        Take the model's call; the text is its tool result.
        """
        wanted = arguments.get("agent", arguments.get("destination"))
        for target in self.agent.router:
            if wanted == target.label:
                message = arguments.get("message")
                self.target = target
                self.message = message if isinstance(message, str) else ""
                return f"Routed to destination: {target.label}"
        labels = ", ".join(target.label for target in self.agent.router)
        return f"error: unknown destination {wanted!r}; choose one of: {labels}"


@attrs.define(eq=False)
class _Totals:
    """
    Passes events on, adding up their usage.
    """

    events: EventSink
    usage: Usage = Usage()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Usage):
            self.usage = self.usage + event
        self.events(event)


@attrs.define(eq=False)
class _HeldAnswer:
    """
    Holds a stage's answer text back; passes everything else on.
    """

    events: EventSink
    parts: list[str] = attrs.field(factory=list)

    @property
    def answer(self) -> str:
        return "".join(self.parts)

    def __call__(self, event: Event) -> None:
        if isinstance(event, ContentDelta):
            self.parts.append(event.text)
        else:
            self.events(event)

    def release(self) -> None:
        """
        Send the held answer after all (this stage's answer is the run's).
        """
        if self.parts:
            self.events(ContentDelta(self.answer))


@attrs.define(eq=False)
class Orchestration:
    """
    One run of an agent with advisors, a router or a handoff.
    """

    runner: SessionRunner
    agent: AgentSpec
    request: RunRequest
    events: EventSink

    def run(self) -> Deferred[Finished]:
        return ensureDeferred(self._run())

    def _spec(self, target: RouteTarget) -> AgentSpec:
        spec = self.runner.agents.get(target.path)
        if spec is None:
            raise AgentError(f"the agent {target.label!r} of {self.agent.name} is not loaded", 500)
        return spec

    def _child(self, spec: AgentSpec, request: RunRequest, sink: EventSink) -> Deferred[Finished]:
        limiter = self.runner.limiter
        if limiter is None:
            return self.runner.run(spec, request, sink)
        return limiter.run(spec.toolTimeout, self.runner.run, spec, request, sink)

    async def _run(self) -> Finished:
        agent, request = self.agent, self.request
        totals = _Totals(self.events)
        original = _lastUserText(request.conversation)
        conversation = request.conversation
        if agent.advisors:
            blocks = await self._advise(totals)
            conversation = _withAdvice(conversation, blocks)
        lastStage = agent.handoff is None
        mainRequest = attrs.evolve(request, conversation=conversation)
        if not (lastStage and not agent.router):
            # Client tools go to the stage whose answer is the run's.
            mainRequest = attrs.evolve(mainRequest, clientTools=(), toolChoice=ToolChoice())
        route = RouteChoice(agent) if agent.router else None
        held = _HeldAnswer(totals)
        sink: EventSink = totals if lastStage and route is None else held
        finished = await self.runner.runStage(agent, mainRequest, sink, route)
        answer, source = held.answer, agent.name
        if route is not None and route.target is not None:
            destination = self._spec(route.target)
            totals(HandoffProgress(agent.name, destination.name, "router", route.message))
            instructions = request.instructions
            if route.message.strip():
                instructions += (f"Message from the router agent {agent.name}: {route.message}",)
            destRequest = attrs.evolve(
                request, conversation=conversation, instructions=instructions
            )
            destHeld = _HeldAnswer(totals)
            if not lastStage:
                destRequest = attrs.evolve(destRequest, clientTools=(), toolChoice=ToolChoice())
            finished = await self._child(
                destination, destRequest, totals if lastStage else destHeld
            )
            answer, source = destHeld.answer, destination.name
        elif lastStage and sink is held:
            held.release()
        if agent.handoff is not None:
            handoff = self._spec(agent.handoff)
            totals(HandoffProgress(source, handoff.name, "handoff"))
            prompt = "\n".join(
                (
                    taggedBlock("original_user_request", original),
                    taggedBlock("response", answer, agent=source),
                )
            )
            handoffRequest = RunRequest(
                (ChatMessage("user", prompt),),
                stream=request.stream,
                labels=request.labels,
                owner=request.owner,
            )
            finished = await self._child(handoff, handoffRequest, totals)
        return Finished(finished.reason, totals.usage)

    async def _advise(self, totals: EventSink) -> list[str]:
        advisors = [self._spec(target) for target in self.agent.advisors]
        request = RunRequest(
            tuple(m for m in self.request.conversation if m.role not in ("system", "developer")),
            stream=self.request.stream,
            labels=self.request.labels,
            owner=self.request.owner,
        )
        sinks = [NestedSink(spec.name, totals) for spec in advisors]
        for spec in advisors:
            totals(AdvisorProgress(spec.name))
        outcomes = await DeferredList(
            [self._child(spec, request, sink) for spec, sink in zip(advisors, sinks, strict=True)],
            consumeErrors=True,
        )
        blocks: list[str] = []
        for spec, sink, (ok, value) in zip(advisors, sinks, outcomes, strict=True):
            sink.flush()
            if ok:
                totals(AdvisorProgress(spec.name, finished=True))
                text = sink.answer.strip() or "(the advisor gave no advice)"
            else:
                failure = cast(Failure, value)
                if failure.check(CancelledError):
                    failure.raiseException()
                error = failure.value
                message = error.message if isinstance(error, AgentError) else str(error)
                totals(AdvisorProgress(spec.name, finished=True, error=message))
                text = f"The advisor failed and gave no advice: {message}"
            blocks.append(taggedBlock("advisory", text, agent=spec.name))
        return blocks


def _lastUserText(conversation: Sequence[ChatMessage]) -> str:
    for message in reversed(conversation):
        if message.role == "user":
            return message.content
    return ""


def _withAdvice(conversation: Sequence[ChatMessage], blocks: list[str]) -> tuple[ChatMessage, ...]:
    """
    The conversation with the advisory blocks at the start of its last user
    message (or as a user message of their own when there is none).
    """
    advice = "\n".join(blocks)
    messages = list(conversation)
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            message = messages[index]
            messages[index] = attrs.evolve(message, content=f"{advice}\n\n{message.content}")
            return tuple(messages)
    return (*messages, ChatMessage("user", advice))


__all__ = [
    "ROUTER_TOOL",
    "Orchestration",
    "RouteChoice",
    "orchestrated",
    "routerInstructions",
    "routerToolSpec",
    "taggedBlock",
]
