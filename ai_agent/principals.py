# -*- test-case-name: tests.test_tenancy -*-
"""
Who is asking: each client API key is a L{Principal}, a tenant of the
server.  A principal may use the agents its key allows (all, unless the key
names some) and owns what its requests stored; another key reaches neither.

Named keys come from the configuration (C{"keys"} in C{.ai-agent.json});
keys given bare (C{--api-key}, C{--api-key-file}, C{AI_AGENT_API_KEYS}) are
anonymous principals of their own, named by a short hash of the key.  A
server without keys has one principal, L{IMPLICIT}, which owns everything as
before tenants existed.  See docs/security.md.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import attrs

from ai_agent.registry import AgentRegistry, ServedAgent


@attrs.frozen
class Principal:
    """
    One tenant: the holder of a client API key.

    @ivar name: the key's name in the configuration, C{key:<hash prefix>}
        for a bare key, or the empty string for L{IMPLICIT} (no keys).
        Never the key itself.  Names never hold C{/}, so a store key scoped
        by one (L{scoped}) cannot be mistaken for another's.
    @ivar agents: the model ids this principal may use, or L{None} for all.
    """

    name: str
    agents: frozenset[str] | None = None

    def mayUse(self, agent: ServedAgent) -> bool:
        """
        Whether this principal may use C{agent}.
        """
        return self.agents is None or agent.id in self.agents

    def scoped(self, key: str) -> str:
        """
        C{key} in this principal's part of a store: C{<name>/<key>}, or
        C{key} itself for L{IMPLICIT}.
        """
        return f"{self.name}/{key}" if self.name else key


#: The one principal of a server without API keys: it owns everything.
IMPLICIT = Principal("")

#: Whoever sent no valid key to a path that needs none (C{/}, C{/health}):
#: it may use no agent and owns nothing.
NOBODY = Principal("-nobody", frozenset())


def anonymousPrincipal(key: str) -> Principal:
    """
    The principal of a key given bare: named by the first 12 hex digits of
    the key's SHA-256, so that logs and the store can tell keys apart
    without holding one.
    """
    return Principal("key:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12])


def visibleAgents(registry: AgentRegistry, principal: Principal) -> list[ServedAgent]:
    """
    The served agents C{principal} may use, in order.
    """
    return [agent for agent in registry.served if principal.mayUse(agent)]


def visibleIds(registry: AgentRegistry, principal: Principal) -> list[str]:
    """
    The model ids C{principal} may use, in order.
    """
    return [agent.id for agent in visibleAgents(registry, principal)]


def resolveFor(registry: AgentRegistry, principal: Principal, model: str) -> ServedAgent | None:
    """
    The agent C{model} names if C{principal} may use it, else L{None}: an
    agent a key may not use is answered exactly as one that does not exist.
    """
    agent = registry.resolve(model)
    if agent is None or not principal.mayUse(agent):
        return None
    return agent


def unknownAgents(principals: Iterable[Principal], registry: AgentRegistry) -> list[str]:
    """
    The agents keys name that no served agent has as its model id
    (C{name: agent} pairs), for a warning.
    """
    served = set(registry.ids())
    missing: list[str] = []
    for principal in principals:
        for agent in sorted(principal.agents or ()):
            if agent not in served:
                missing.append(f"{principal.name}: {agent}")
    return missing


def describe(principals: Sequence[Principal]) -> str:
    """
    The principals' names for a log line.
    """
    return ", ".join(p.name for p in principals) or "none"


__all__ = [
    "IMPLICIT",
    "NOBODY",
    "Principal",
    "anonymousPrincipal",
    "describe",
    "resolveFor",
    "unknownAgents",
    "visibleAgents",
    "visibleIds",
]
