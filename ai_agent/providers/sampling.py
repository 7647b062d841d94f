# -*- test-case-name: tests.test_agentfile -*-
"""
Which of an agent's optional sampling keys each provider can send.

C{topK}, C{repeatPenalty} and C{reasoningTokens} exist on some wire
protocols and not on others.  An agent file that sets one is refused at load
when any of its models (fallbacks included) is served by a provider that
cannot send it: a fallback that silently dropped the setting would answer
differently from the model the file was written for.

  - C{anthropic}: C{top_k}, and C{reasoningTokens} as the extended-thinking
    C{budget_tokens} (at least L{MIN_THINKING_BUDGET}); no repeat penalty.
  - C{openai} (OpenAI-compatible servers): C{top_k} and C{repeat_penalty}
    as extra body fields, which vLLM, llama.cpp's server and LM Studio read;
    not to C{api.openai.com}, which refuses unknown fields.  No thinking
    budget (Chat Completions has only C{reasoning_effort}: use C{reasoning}).
  - C{local} (the embedded llama.cpp): C{top_k} and C{repeat_penalty}.
  - C{ollama}: neither; Ollama's OpenAI-compatible endpoint has no such
    fields (set them in the model's Modelfile).
"""

from __future__ import annotations

from typing import Mapping
from urllib.parse import urlsplit

from ai_agent.config import ProviderConfig

#: Anthropic's smallest C{thinking.budget_tokens}.
MIN_THINKING_BUDGET = 1024

#: The agent file's key and the wire field it becomes, for messages.
SAMPLING_KEYS: Mapping[str, str] = {
    "topK": "top_k",
    "repeatPenalty": "repeat_penalty",
    "reasoningTokens": "thinking budget",
}

_OPENAI_HOSTS = frozenset({"api.openai.com"})


def supportedSampling(provider: ProviderConfig) -> frozenset[str]:
    """
    The keys of L{SAMPLING_KEYS} that C{provider} can send.
    """
    if provider.type == "anthropic":
        return frozenset({"topK", "reasoningTokens"})
    if provider.type == "local":
        return frozenset({"topK", "repeatPenalty"})
    if provider.type == "openai":
        return frozenset() if _isOpenAI(provider) else frozenset({"topK", "repeatPenalty"})
    return frozenset()


def _isOpenAI(provider: ProviderConfig) -> bool:
    """
    Whether C{provider} is OpenAI's own API (rather than a server speaking
    its protocol).
    """
    return (urlsplit(provider.baseUrl).hostname or "").lower() in _OPENAI_HOSTS


def samplingProblem(
    key: str, value: int | float, model: str, provider: ProviderConfig
) -> str | None:
    """
    Why model C{model} of C{provider} cannot take C{key} set to C{value},
    or L{None} if it can.
    """
    if key == "reasoningTokens" and value == 0:
        # No reasoning: every provider can do without.
        return None
    if key not in supportedSampling(provider):
        if provider.type != "openai":
            where = f"the {provider.type} provider type"
        elif _isOpenAI(provider):
            where = "OpenAI's own API"
        else:
            where = "an OpenAI-compatible server"
        return (
            f"{key!r} cannot be sent to model {model!r}: provider {provider.name!r}"
            f" ({where}) has no {SAMPLING_KEYS[key]}; remove the key or that model"
        )
    if key == "reasoningTokens" and value < MIN_THINKING_BUDGET:
        return (
            f"'reasoningTokens' must be at least {MIN_THINKING_BUDGET} for model {model!r}"
            f" of provider {provider.name!r} (Anthropic's smallest thinking budget), got {value}"
        )
    return None


__all__ = ["MIN_THINKING_BUDGET", "SAMPLING_KEYS", "samplingProblem", "supportedSampling"]
