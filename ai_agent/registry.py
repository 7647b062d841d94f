# -*- test-case-name: tests.test_tools,tests.test_headend_openai -*-
"""
The agents a server offers: loaded agent files, their model ids and aliases,
and the sub-agents they call (loaded too, cycles refused).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping

import attrs

from ai_agent.agentfile import AgentSpec, RouteTarget, loadAgent
from ai_agent.config import Config
from ai_agent.errors import ConfigurationError
from ai_agent.providers.sampling import SAMPLING_KEYS, samplingProblem
from ai_agent.session import splitModel


@attrs.frozen
class ServedAgent:
    """
    One agent exposed as a model.

    @ivar id: the model id clients use.
    @ivar created: a stable Unix time (the file's modification time).
    """

    id: str
    spec: AgentSpec
    created: int


@attrs.define
class AgentRegistry:
    """
    Agents by model id, plus every sub-agent by path.
    """

    served: list[ServedAgent] = attrs.field(factory=list)
    byPath: dict[str, AgentSpec] = attrs.field(factory=dict)
    _aliases: dict[str, ServedAgent] = attrs.field(factory=dict)

    def resolve(self, model: str) -> ServedAgent | None:
        """
        The agent a request's C{model} names: an exact model id first, then
        an alias (the file name with or without C{.ai}, the path given on
        the command line, its absolute path); case-insensitive as a last
        resort.
        """
        for agent in self.served:
            if agent.id == model:
                return agent
        found = self._aliases.get(model)
        if found is not None:
            return found
        lowered = model.lower()
        for agent in self.served:
            if agent.id.lower() == lowered:
                return agent
        return None

    def ids(self) -> list[str]:
        """
        The served model ids in order.
        """
        return [agent.id for agent in self.served]


def agentFiles(paths: Iterable[str]) -> list[str]:
    """
    The agent files C{paths} name: a file as it is, a directory as every
    C{.ai} file directly in it, sorted.

    @raise ConfigurationError: a directory holds no C{.ai} file.
    """
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.endswith(".ai") and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise ConfigurationError(f"{path}: the directory holds no .ai agent file")
            files.extend(found)
        else:
            files.append(path)
    return files


def loadRegistry(
    paths: Iterable[str],
    config: Config,
    load: Callable[[str], AgentSpec] = loadAgent,
) -> AgentRegistry:
    """
    Load the agent files C{paths} and, recursively, their sub-agents,
    advisors, router destinations and handoff agents.

    @raise ConfigurationError: a file is missing or invalid, a sub-agent has
        no C{description}, agents form a cycle (through any of those keys),
        or a model names a provider the configuration does not define.
    """
    registry = AgentRegistry()
    taken: set[str] = set()

    def visit(path: str, stack: tuple[str, ...]) -> AgentSpec:
        if path in stack:
            cycle = " -> ".join(os.path.basename(p) for p in (*stack[stack.index(path) :], path))
            raise ConfigurationError(f"{stack[-1]}: sub-agents form a cycle: {cycle}")
        known = registry.byPath.get(path)
        if known is None:
            known = load(path)
            _checkProviders(known, config.providers)
            _checkSampling(known, config)
            registry.byPath[path] = known
        for child in known.agents:
            spec = visit(child, (*stack, path))
            if not spec.description:
                raise ConfigurationError(
                    f"{child}: a sub-agent needs a 'description' (used by {path})"
                )
        for key, target in routeTargets(known):
            if not os.path.isfile(target.path):
                raise ConfigurationError(
                    f"{path}: {key!r} names {target.label!r}, which is not an agent file"
                    f" ({target.path} does not exist)"
                )
            visit(target.path, (*stack, path))
        return known

    for given in paths:
        path = os.path.abspath(given)
        spec = visit(path, ())
        if any(agent.spec.path == path for agent in registry.served):
            continue
        modelId = _uniqueId(spec.name, taken)
        taken.add(modelId)
        served = ServedAgent(modelId, spec, int(os.stat(path).st_mtime))
        registry.served.append(served)
        base = os.path.basename(path)
        for alias in (given, path, base, base[:-3] if base.lower().endswith(".ai") else base):
            registry._aliases.setdefault(alias, served)
    return registry


def routeTargets(spec: AgentSpec) -> list[tuple[str, RouteTarget]]:
    """
    The agents C{spec} runs around its own run, with the key naming each:
    C{advisors}, C{router} destinations and C{handoff}.
    """
    targets = [("advisors", target) for target in spec.advisors]
    targets += [("router", target) for target in spec.router]
    if spec.handoff is not None:
        targets.append(("handoff", spec.handoff))
    return targets


def _uniqueId(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _checkProviders(spec: AgentSpec, providers: Mapping[str, object]) -> None:
    for model in (*spec.models, *spec.toolOutput.models):
        name, _ = splitModel(model)
        if name not in providers:
            known = ", ".join(sorted(providers)) or "none"
            raise ConfigurationError(
                f"{spec.path}: model {model!r} names provider {name!r},"
                f" which is not configured (known providers: {known})"
            )


def _checkSampling(spec: AgentSpec, config: Config) -> None:
    """
    Refuse a sampling key (C{topK}, C{repeatPenalty}, C{reasoningTokens})
    that a provider of the agent's models cannot send.
    """
    for key in SAMPLING_KEYS:
        value = getattr(spec, key)
        if value is None:
            continue
        for model in spec.models:
            provider = config.providers[splitModel(model)[0]]
            problem = samplingProblem(key, value, model, provider)
            if problem is not None:
                raise ConfigurationError(f"{spec.path}: {problem}")


__all__ = ["AgentRegistry", "ServedAgent", "agentFiles", "loadRegistry", "routeTargets"]
