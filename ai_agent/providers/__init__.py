"""
LLM providers: one module per wire protocol behind the L{Provider} interface.
"""

from __future__ import annotations

from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime

from ai_agent.config import ProviderConfig
from ai_agent.errors import ConfigurationError
from ai_agent.providers._base import (
    CallbackSink,
    ChatMessage,
    DeltaSink,
    LLMRequest,
    LLMResponse,
    Provider,
    TokenCounter,
    ToolCall,
    ToolSpec,
)
from ai_agent.providers._http import CONNECT_TIMEOUT
from ai_agent.providers.anthropic import AnthropicProvider
from ai_agent.providers.local import LocalProvider, LocalSettings
from ai_agent.providers.openai import OpenAIProvider


def makeProvider(config: ProviderConfig, http: HTTPClient, reactor: IReactorTime) -> Provider:
    """
    The L{Provider} for one configured endpoint.

    @param http: the client (with its own connection pool) for every call.
    @param reactor: schedules timeouts.
    @raise ConfigurationError: the wire type is unknown.
    """
    if config.type == "local":
        return LocalProvider(config.name, LocalSettings.fromConfig(config.local), http, reactor)
    wireTypes: dict[str, type[OpenAIProvider] | type[AnthropicProvider]] = {
        "openai": OpenAIProvider,
        "ollama": OpenAIProvider,
        "anthropic": AnthropicProvider,
    }
    wireType = wireTypes.get(config.type)
    if wireType is not None:
        return wireType(
            name=config.name,
            baseUrl=config.baseUrl,
            http=http,
            reactor=reactor,
            apiKey=config.apiKey,
            headers=dict(config.headers),
            missingVariables=config.missingVariables,
        )
    raise ConfigurationError(
        f"provider {config.name!r}: unknown type {config.type!r} "
        "(expected openai, anthropic, ollama or local)"
    )


__all__ = [
    "CONNECT_TIMEOUT",
    "AnthropicProvider",
    "CallbackSink",
    "ChatMessage",
    "DeltaSink",
    "LLMRequest",
    "LLMResponse",
    "LocalProvider",
    "OpenAIProvider",
    "Provider",
    "ToolCall",
    "TokenCounter",
    "ToolSpec",
    "makeProvider",
]
