# -*- test-case-name: tests.test_quotas -*-
"""
The one call the run pipeline (L{ai_agent.headends._api.runOn}), Anthropic's
C{count_tokens}, MCP's C{tools/call} and an A2A task make before a run: the
key's and agent's limits (L{ai_agent.quotas}), then a slot of the pool.
"""

from __future__ import annotations

from typing import Any

from ai_agent.pool import RunPool, Slot
from ai_agent.principals import Principal
from ai_agent.quotas import Admission

#: The admission of a run no limit applies to.
UNLIMITED = Admission(None)


async def admitted(
    request: Any, pool: RunPool, principal: Principal, agent: str, anthropic: bool = False
) -> tuple[Admission, Slot]:
    """
    Admit a run of C{principal} on C{agent} within its limits, then wait
    for a slot of C{pool} in C{principal}'s turn; the remaining budget goes
    into C{request}'s headers (Anthropic's names when C{anthropic}; no
    headers when C{request} is L{None}: an MCP tool call, an A2A task).

    @return: the admission and the slot; release both when the run ends.
    @raise AgentError: a 429 when a limit is reached (before any slot is
        taken), or the pool's refusal (the admission is then released).
    """

    def setHeaders(admission: Admission) -> None:
        if request is None:
            return
        for name, value in admission.headers(anthropic):
            request.setHeader(name, value)

    quotas = pool.quotas
    admission = UNLIMITED
    if quotas is not None:
        admission = await quotas.admit(principal, agent, setHeaders)
        setHeaders(admission)
    try:
        slot = await pool.acquire(principal.name)
    except BaseException:
        admission.release()
        raise
    return admission, slot


__all__ = ["UNLIMITED", "admitted"]
