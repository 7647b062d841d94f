# -*- test-case-name: tests.test_openapi -*-
"""
The OpenAPI 3.1 description of the server's endpoints (the OpenAI-compatible
headend's and the Anthropic Messages API's), served at C{GET /openapi.json}.

The request components are generated from the types that validate each
request (L{ai_agent.headends._request.ChatCompletionRequest},
L{ai_agent.headends.responses.ResponsesRequestBody},
L{ai_agent.headends.anthropic.MessagesRequestBody} and
L{CountTokensRequest<ai_agent.headends.anthropic.CountTokensRequest>}):
the fields their parsers read are typed and bounded as they check them,
every other field is allowed and ignored.  Limits that a schema cannot
state (nesting at most L{MAX_DEPTH} deep, no lone surrogates, the body size
cap) are written in the descriptions and answered with a 400 or 413.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from ai_agent import __version__
from ai_agent.headends._request import (
    MAX_DEPTH,
    ChatCompletionRequest,
)
from ai_agent.headends._schema import schemaComponents
from ai_agent.headends.anthropic import CountTokensRequest, MessagesRequestBody
from ai_agent.headends.responses import HOSTED_TOOL_PATTERN, ResponsesRequestBody

_REF = "#/components/"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"{_REF}{kind}/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """
    C{schema}, or C{null} (the parser treats C{null} as "not given").
    """
    return {"anyOf": [schema, {"type": "null"}]}


def _jsonResponse(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _chatRequestSchemas() -> dict[str, Any]:
    """
    The Chat Completions request's components, generated from its types
    (L{ChatCompletionRequest}), with what a type cannot state: the limits
    checked before parsing, and that an assistant message needs C{content}
    unless it carries C{tool_calls}.
    """
    schemas = schemaComponents([ChatCompletionRequest])
    schemas["ChatCompletionRequest"]["description"] = (
        "A Chat Completions request. Fields not listed here are accepted "
        f"and ignored. The body must be UTF-8 JSON nested at most {MAX_DEPTH} levels deep "
        "and its strings must not hold lone UTF-16 surrogates; otherwise the answer is a 400."
    )
    schemas["ChatAssistantMessage"]["anyOf"] = [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {
            "required": ["tool_calls"],
            "properties": {"tool_calls": {"type": "array", "minItems": 1}},
        },
    ]
    return schemas


def _schemas() -> dict[str, Any]:
    error = {
        "type": "object",
        "description": "OpenAI's error envelope: every error this server answers has this shape.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string", "description": "What went wrong."},
                    "type": {
                        "type": "string",
                        "description": "OpenAI's error type, such as "
                        "invalid_request_error, rate_limit_error or server_error.",
                    },
                    "param": {
                        "type": ["string", "null"],
                        "description": "The request field at fault, such as "
                        "messages[0].content, when one can be named.",
                    },
                    "code": {
                        "type": ["string", "null"],
                        "description": "A machine-readable reason, such as "
                        "model_not_found, invalid_api_key or request_too_large.",
                    },
                },
            }
        },
    }
    health = {
        "type": "object",
        "required": ["status", "agents", "running", "queued"],
        "properties": {
            "status": {
                "type": "string",
                "enum": ["ok", "stopping"],
                "description": "stopping (with a 503) once a graceful shutdown began.",
            },
            "agents": {"type": "array", "items": {"type": "string"}},
            "running": {"type": "integer", "minimum": 0},
            "queued": {"type": "integer", "minimum": 0},
        },
    }
    model = {
        "type": "object",
        "description": "One served agent, as an OpenAI model.",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "description": {"type": "string"},
        },
    }
    modelList = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("schemas", "Model")},
        },
    }
    usage = {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        },
    }
    completion = {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"const": 0},
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {
                                "role": {"const": "assistant"},
                                "content": _nullable({"type": "string"}),
                                "tool_calls": {
                                    "type": "array",
                                    "description": "Calls of the client's tools, handed "
                                    "back (finish_reason tool_calls).",
                                    "items": {
                                        "type": "object",
                                        "required": ["id", "type", "function"],
                                        "properties": {
                                            "id": {"type": "string"},
                                            "type": {"const": "function"},
                                            "function": {
                                                "type": "object",
                                                "required": ["name", "arguments"],
                                                "properties": {
                                                    "name": {"type": "string"},
                                                    "arguments": {"type": "string"},
                                                },
                                            },
                                        },
                                    },
                                },
                                "reasoning_content": {
                                    "type": "string",
                                    "description": "The model's reasoning and the agent's "
                                    "progress, when there was any.",
                                },
                            },
                        },
                        "logprobs": {"type": "null"},
                        "finish_reason": {"type": "string"},
                    },
                },
            },
            "usage": _ref("schemas", "Usage"),
        },
    }
    streamEvent = {
        "type": "object",
        "description": "One Server-Sent Event (this schema describes each event of the "
        "stream). Its data is a chat.completion.chunk as JSON; the last is [DONE]. A failure "
        "after the stream began arrives as an error envelope as JSON, then [DONE].",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string"},
        },
    }
    return {
        "Error": error,
        "StreamEvent": streamEvent,
        "Health": health,
        "Model": model,
        "ModelList": modelList,
        **_chatRequestSchemas(),
        "ChatCompletion": completion,
        "Usage": usage,
    }


def _headers() -> dict[str, Any]:
    return {
        "RetryAfter": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 1},
        },
        "RequestId": {
            "description": "The completion's id.",
            "schema": {"type": "string"},
        },
        "AnsweringModel": {
            "description": "The model (provider/model) that answered, e.g. local/smollm2 "
            "when the embedded model did; absent when no model answered before the "
            "response began.",
            "schema": {"type": "string"},
        },
        "ShouldRetry": {
            "description": "false when the failed run had already called a tool, so "
            "repeating the request could repeat the tool's effects.",
            "schema": {"enum": ["true", "false"]},
        },
        "WWWAuthenticate": {
            "description": "The authentication scheme: Bearer.",
            "schema": {"type": "string"},
        },
    }


def _responses() -> dict[str, Any]:
    error = _ref("schemas", "Error")

    def failure(description: str, **headers: str) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if headers:
            extra["headers"] = {name: _ref("headers", ref) for name, ref in headers.items()}
        return _jsonResponse(description, error, **extra)

    return {
        "BadRequest": failure(
            "The request is malformed: not JSON, not UTF-8, nested too deeply, holding too "
            "many arrays and objects, a lone surrogate, a number too large for a double, or a "
            "field of the wrong type or out of range (param names it)."
        ),
        "Unauthorized": failure(
            "API keys are configured and the request carried none that matches "
            "(Authorization: Bearer KEY, or x-api-key: KEY).",
            **{"WWW-Authenticate": "WWWAuthenticate"},
        ),
        "NotFound": failure("No agent is served under that model name (model_not_found)."),
        "RequestTimeout": failure(
            "The request's head and body did not arrive in time; the connection is closed."
        ),
        "PayloadTooLarge": failure("The body is larger than --max-body-size."),
        "UnsupportedMediaType": failure("The body was sent with a Content-Type that is not JSON."),
        "RateLimited": failure(
            "The model provider is rate limiting this server.",
            **{"Retry-After": "RetryAfter", "x-should-retry": "ShouldRetry"},
        ),
        "ServerError": failure(
            "The agent could not run (for example a provider's key is not set), "
            "or an unexpected error.",
            **{"x-should-retry": "ShouldRetry"},
        ),
        "BadGateway": failure(
            "The model provider failed or refused the call, sent an answer of the wrong "
            "shape (upstream_invalid_response), or too long an answer "
            "(upstream_answer_too_large, answer_too_large).",
            **{"x-should-retry": "ShouldRetry"},
        ),
        "Unavailable": failure(
            "Every run slot is busy and the queue is full or the wait ran out, too many "
            "large bodies are waiting to be parsed, or the server is shutting down.",
            **{"Retry-After": "RetryAfter", "x-should-retry": "ShouldRetry"},
        ),
        "GatewayTimeout": failure(
            "The model provider did not answer in time.",
            **{"x-should-retry": "ShouldRetry"},
        ),
    }


def _htmlResponse(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _errors(*names: str) -> dict[str, Any]:
    statuses = {
        "BadRequest": "400",
        "Unauthorized": "401",
        "NotFound": "404",
        "RequestTimeout": "408",
        "PayloadTooLarge": "413",
        "UnsupportedMediaType": "415",
        "RateLimited": "429",
        "ServerError": "500",
        "BadGateway": "502",
        "Unavailable": "503",
        "GatewayTimeout": "504",
    }
    return {statuses[name]: _ref("responses", name) for name in names}


_KEYED: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]


def _paths() -> dict[str, Any]:
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness, the agents served, and the pool's load.",
                "security": [],
                "responses": {
                    "200": _jsonResponse("Serving.", _ref("schemas", "Health")),
                    "503": _jsonResponse(
                        "Shutting down: take this instance out of rotation.",
                        _ref("schemas", "Health"),
                    ),
                    **_errors("RequestTimeout"),
                },
            }
        },
        "/": {
            "get": {
                "operationId": "home",
                "summary": "A page naming the server, its models and links.",
                "security": [],
                "responses": {
                    "200": _htmlResponse("The page."),
                    **_errors("RequestTimeout"),
                },
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "An interactive page for this document.",
                "security": [],
                "responses": {
                    "200": _htmlResponse("The page."),
                    **_errors("RequestTimeout"),
                },
            }
        },
        "/favicon.ico": {
            "get": {
                "operationId": "favicon",
                "summary": "The pages' icon.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The icon.",
                        "content": {
                            "image/x-icon": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    **_errors("RequestTimeout"),
                },
            }
        },
        "/assets/{name}": {
            "get": {
                "operationId": "asset",
                "summary": "The pages' script and style sheet.",
                "security": [],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["docs.js", "page.css"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors("NotFound", "RequestTimeout"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {
                    "200": _jsonResponse("The OpenAPI document.", {"type": "object"}),
                    **_errors("RequestTimeout"),
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "Every served agent, as an OpenAI model (Anthropic's model list "
                "to requests carrying anthropic-version).",
                "security": _KEYED,
                "responses": {
                    "200": _jsonResponse(
                        "The models.",
                        {
                            "anyOf": [
                                _ref("schemas", "ModelList"),
                                _ref("schemas", "AnthropicModelList"),
                            ]
                        },
                    ),
                    **_errors("Unauthorized", "RequestTimeout"),
                },
            }
        },
        "/v1/limits": {
            "get": {
                "operationId": "getLimits",
                "summary": "The requesting key's own limits and usage (never another key's).",
                "security": _KEYED,
                "responses": {
                    "200": _jsonResponse(
                        "The key's limits (null: none) and what it used of each: requests"
                        " this minute, runs now, tokens and cost (USD) today (UTC); resets"
                        " as Unix times.",
                        {
                            "type": "object",
                            "required": ["object", "key", "limits", "usage", "resets"],
                            "properties": {
                                "object": {"const": "limits"},
                                "key": {"type": ["string", "null"]},
                                "limits": {"type": "object"},
                                "usage": {"type": "object"},
                                "resets": {"type": "object"},
                            },
                        },
                    ),
                    **_errors("Unauthorized", "NotFound", "RequestTimeout", "Unavailable"),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "retrieveModel",
                "summary": "One served agent.",
                "security": _KEYED,
                "parameters": [
                    {
                        "name": "model",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                        "description": "A model id, an agent's file name or path.",
                    }
                ],
                "responses": {
                    "200": _jsonResponse(
                        "The model.",
                        {"anyOf": [_ref("schemas", "Model"), _ref("schemas", "AnthropicModel")]},
                    ),
                    # 400 invalid_path: an id with control characters, ...
                    **_errors("BadRequest", "Unauthorized", "NotFound", "RequestTimeout"),
                    "404": _jsonResponse(
                        "No agent is served under that model name (in Anthropic's envelope "
                        "to requests carrying anthropic-version).",
                        {"anyOf": [_ref("schemas", "Error"), _ref("schemas", "AnthropicError")]},
                    ),
                },
            }
        },
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "summary": "Run an agent on a conversation.",
                "description": "With stream=true the answer is Server-Sent Events, started at "
                "the run's first event: a failure before it is a real HTTP status, one after "
                'it arrives in-band as data: {"error": ...} followed by data: [DONE].',
                "security": _KEYED,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("schemas", "ChatCompletionRequest")}
                    },
                },
                "responses": {
                    "200": {
                        "description": "The completion: one JSON body, or with stream=true "
                        "an SSE stream of chat.completion.chunk objects ending in "
                        "data: [DONE].",
                        "headers": {
                            "x-request-id": _ref("headers", "RequestId"),
                            "x-ai-agent-model": _ref("headers", "AnsweringModel"),
                        },
                        "content": {
                            "application/json": {"schema": _ref("schemas", "ChatCompletion")},
                            "text/event-stream": {"schema": _ref("schemas", "StreamEvent")},
                        },
                    },
                    **_errors(
                        "BadRequest",
                        "Unauthorized",
                        "NotFound",
                        "RequestTimeout",
                        "PayloadTooLarge",
                        "UnsupportedMediaType",
                        "RateLimited",
                        "ServerError",
                        "BadGateway",
                        "Unavailable",
                        "GatewayTimeout",
                    ),
                },
            }
        },
    }


def _responsesRequestSchemas() -> dict[str, Any]:
    """
    The Responses request's components, generated from its types
    (L{ResponsesRequestBody}), with what a type cannot state: an input
    item without a type is a message, a hosted tool is any of
    L{isHostedTool}'s types, a refusal part needs its refusal or its text,
    and background may only be false.
    """
    schemas = schemaComponents([ResponsesRequestBody])
    request = schemas.pop("ResponsesRequestBody")
    schemas["ResponseRequest"] = request
    request["description"] = (
        f"{request['description']} The body must be UTF-8 JSON nested at most {MAX_DEPTH} "
        "levels deep and its strings must not hold lone UTF-16 surrogates; otherwise the "
        "answer is a 400."
    )
    properties = request["properties"]
    # The type that tells the unions apart may be left out (a message), or
    # be one of several (a hosted tool): not a discriminator's one value.
    del properties["input"]["anyOf"][1]["items"]["discriminator"]
    del properties["tools"]["anyOf"][0]["items"]["discriminator"]
    schemas["ResponsesMessageItem"]["required"].remove("type")
    schemas["ResponsesHostedTool"]["properties"]["type"] = {
        "type": "string",
        "pattern": HOSTED_TOOL_PATTERN,
    }
    schemas["ResponsesRefusal"]["anyOf"] = [
        {"required": [field], "properties": {field: {"type": "string"}}}
        for field in ("refusal", "text")
    ]
    properties["background"]["enum"] = [False, None]
    return schemas


def _responsesSchemas() -> dict[str, Any]:
    """
    The Responses API's bodies (C{/v1/responses}, see docs/responses.md).
    """
    text = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
    }
    item = {
        "type": "object",
        "description": "An input or output item: a message (input_text or output_text "
        "parts), a function_call, a function_call_output, a reasoning item, or (input only) "
        "an item_reference to a stored output item. An input item without a type is a "
        "message (as OpenAI accepts it).",
        "properties": {
            "type": {"type": "string"},
            "id": {"type": "string"},
            "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": text}]},
            "call_id": {"type": "string"},
            "name": {"type": "string"},
            "arguments": {"type": "string"},
            "namespace": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "output": {"type": ["string", "array"]},
        },
    }
    response = {
        "type": "object",
        "description": "A response object, or with stream=true Server-Sent Events "
        "(event: response.created, ..., response.completed).",
        "required": ["id", "object", "created_at", "status", "model", "output"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response"},
            "created_at": {"type": "integer"},
            "status": {
                "type": "string",
                "enum": ["completed", "incomplete", "failed", "in_progress"],
            },
            "model": {"type": "string"},
            "output": {"type": "array", "items": item},
            "usage": {"type": ["object", "null"]},
            "error": {"type": ["object", "null"]},
            "incomplete_details": {"type": ["object", "null"]},
            "previous_response_id": {"type": ["string", "null"]},
        },
    }
    return {
        "ResponseStreamEvent": {
            "type": "object",
            "description": "One Server-Sent Event of a streamed response: its event name is "
            "the type of its data, a JSON object with that type and a sequence_number "
            "(response.created, ..., response.completed, response.incomplete or "
            "response.failed).",
            "required": ["event", "data"],
            "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        },
        **_responsesRequestSchemas(),
        "Response": response,
        "ResponseItem": item,
        "ResponseDeleted": {
            "type": "object",
            "required": ["id", "object", "deleted"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "response"},
                "deleted": {"const": True},
            },
        },
        "ResponseItemList": {
            "type": "object",
            "required": ["object", "data", "has_more"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": item},
                "first_id": {"type": ["string", "null"]},
                "last_id": {"type": ["string", "null"]},
                "has_more": {"type": "boolean"},
            },
        },
    }


def _responsesPaths() -> dict[str, Any]:
    """
    The Responses API's routes.
    """
    responseId = {
        "name": "response_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
        "description": "A stored response's id (resp_...).",
    }
    stored = _errors("Unauthorized", "NotFound", "RequestTimeout", "Unavailable")
    return {
        "/v1/responses": {
            "post": {
                "operationId": "createResponse",
                "summary": "Run an agent on input items (the OpenAI Responses API).",
                "description": "Stored (store defaults to true) for previous_response_id, "
                "item_reference and the routes below. With stream=true: typed Server-Sent "
                "Events ending in response.completed, response.incomplete or response.failed.",
                "security": _KEYED,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("schemas", "ResponseRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "The response object, or its events.",
                        "headers": {"x-request-id": _ref("headers", "RequestId")},
                        "content": {
                            "application/json": {"schema": _ref("schemas", "Response")},
                            "text/event-stream": {"schema": _ref("schemas", "ResponseStreamEvent")},
                        },
                    },
                    **_errors(
                        "BadRequest",
                        "Unauthorized",
                        "NotFound",
                        "RequestTimeout",
                        "PayloadTooLarge",
                        "UnsupportedMediaType",
                        "RateLimited",
                        "ServerError",
                        "BadGateway",
                        "Unavailable",
                        "GatewayTimeout",
                    ),
                },
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "operationId": "retrieveResponse",
                "summary": "A stored response.",
                "security": _KEYED,
                "parameters": [responseId],
                "responses": {
                    "200": _jsonResponse("The response.", _ref("schemas", "Response")),
                    **stored,
                },
            },
            "delete": {
                "operationId": "deleteResponse",
                "summary": "Forget a stored response.",
                "security": _KEYED,
                "parameters": [responseId],
                "responses": {
                    "200": _jsonResponse("Deleted.", _ref("schemas", "ResponseDeleted")),
                    **stored,
                },
            },
        },
        "/v1/responses/{response_id}/input_items": {
            "get": {
                "operationId": "listResponseInputItems",
                "summary": "A stored response's own input items, a page at a time.",
                "security": _KEYED,
                "parameters": [
                    responseId,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {
                        "name": "order",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["asc", "desc"]},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _jsonResponse("The items.", _ref("schemas", "ResponseItemList")),
                    **_errors("BadRequest"),
                    **stored,
                },
            }
        },
    }


def _everyOperation(paths: dict[str, Any]) -> dict[str, Any]:
    """
    C{paths} with what the HTTP guard may answer on any route: a 400
    (C{invalid_path} for a target with no single meaning, C{invalid_http}
    for malformed HTTP) wherever an operation does not list it already.
    """
    for operations in paths.values():
        for operation in operations.values():
            operation["responses"].setdefault("400", _ref("responses", "BadRequest"))
    return paths


def _build() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ai-agent",
            "version": __version__,
            "description": "LLM agents defined in .ai files, served as models over OpenAI's "
            "Chat Completions and Responses APIs and Anthropic's Messages API. Errors use "
            "OpenAI's envelope, except on /v1/messages and to requests carrying an "
            "anthropic-version header, which get Anthropic's. The /v1 routes need an API key "
            "only when "
            "the server was started with --api-key, --api-key-file or AI_AGENT_API_KEYS.",
        },
        "paths": _everyOperation({**_paths(), **_responsesPaths()}),
        "components": {
            "schemas": {**_schemas(), **_responsesSchemas()},
            "responses": _responses(),
            "headers": _headers(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


#: The document, built once.  Use L{openapiDocument} for a copy to change.
OPENAPI: dict[str, Any] = _build()


def openapiDocument(serverUrl: str | None = None, models: Sequence[str] = ()) -> dict[str, Any]:
    """
    A copy of L{OPENAPI}.

    @param serverUrl: when given, the document's one C{servers} entry.
    @param models: served model ids, given as C{examples} of the request's
        C{model} (any other name is still valid and answered with a 404).
    """
    document = copy.deepcopy(OPENAPI)
    if serverUrl is not None:
        document["servers"] = [{"url": serverUrl}]
    if models:
        schemas = document["components"]["schemas"]
        for name in ("ChatCompletionRequest", "MessagesRequest", "CountTokensRequest"):
            schemas[name]["properties"]["model"]["examples"] = list(models)
    return document


__all__ = ["OPENAPI", "openapiDocument"]


# -- the Anthropic Messages API (ai_agent.headends.anthropic) -----------


def _messagesRequestSchemas() -> dict[str, Any]:
    """
    The Messages and count_tokens requests' components, generated from
    their types (L{MessagesRequestBody}, L{CountTokensRequest}).
    """
    schemas = schemaComponents([MessagesRequestBody, CountTokensRequest])
    schemas["MessagesRequest"] = schemas.pop("MessagesRequestBody")
    return schemas


def _anthropicSchemas() -> dict[str, Any]:
    text = {"type": "string"}
    usage = {
        "type": "object",
        "required": ["input_tokens", "output_tokens"],
        "properties": {
            "input_tokens": {"type": "integer", "minimum": 0},
            "output_tokens": {"type": "integer", "minimum": 0},
            "cache_creation_input_tokens": {"type": "integer", "minimum": 0},
            "cache_read_input_tokens": {"type": "integer", "minimum": 0},
        },
    }
    answer = {
        "type": "object",
        "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
        "properties": {
            "id": {"type": "string", "pattern": "^msg_"},
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "model": text,
            "content": {
                "type": "array",
                "description": "thinking (the model's reasoning and the agent's progress, "
                "signed by this server; only when the request enables thinking), text, and "
                "tool_use blocks (the client's tools).",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"type": {"enum": ["thinking", "text", "tool_use"]}},
                },
            },
            "stop_reason": {
                "enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]
            },
            "stop_sequence": {"type": "null"},
            "usage": usage,
        },
    }
    model = {
        "type": "object",
        "required": ["type", "id", "display_name", "created_at"],
        "properties": {
            "type": {"const": "model"},
            "id": text,
            "display_name": text,
            "created_at": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "AnthropicError": {
            "type": "object",
            "description": "Anthropic's error envelope, answered on /v1/messages and to every "
            "request carrying an anthropic-version header.",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {
                        "type": {
                            "enum": [
                                "invalid_request_error",
                                "authentication_error",
                                "permission_error",
                                "not_found_error",
                                "request_too_large",
                                "rate_limit_error",
                                "timeout_error",
                                "overloaded_error",
                                "api_error",
                            ]
                        },
                        "message": text,
                    },
                },
            },
        },
        **_messagesRequestSchemas(),
        "AnthropicMessage": answer,
        "AnthropicStreamEvent": {
            "type": "object",
            "description": "One Server-Sent Event (this schema describes each event of the "
            'stream): event: X with data: {"type": "X", ...} as JSON. In order: '
            "message_start, then content blocks (content_block_start, content_block_delta with "
            "text_delta, thinking_delta, signature_delta or input_json_delta, "
            "content_block_stop), message_delta, message_stop; ping anywhere; a failure after "
            "the start as event: error with Anthropic's error envelope.",
            "required": ["event", "data"],
            "properties": {
                "event": {
                    "enum": [
                        "message_start",
                        "content_block_start",
                        "content_block_delta",
                        "content_block_stop",
                        "message_delta",
                        "message_stop",
                        "ping",
                        "error",
                    ]
                },
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
        },
        "InputTokens": {
            "type": "object",
            "required": ["input_tokens"],
            "properties": {"input_tokens": {"type": "integer", "minimum": 0}},
        },
        "AnthropicModel": model,
        "AnthropicModelList": {
            "type": "object",
            "required": ["data", "has_more", "first_id", "last_id"],
            "properties": {
                "data": {"type": "array", "items": model},
                "has_more": {"type": "boolean"},
                "first_id": {"type": ["string", "null"]},
                "last_id": {"type": ["string", "null"]},
            },
        },
    }


def _anthropicErrors(*statuses: str) -> dict[str, Any]:
    described = {
        "400": "The request is malformed (the message names the field).",
        "401": "API keys are configured and the request carried none that matches "
        "(x-api-key: KEY, or Authorization: Bearer KEY).",
        "404": "No agent is served under that model name.",
        "408": "The request's head and body did not arrive in time.",
        "413": "The body is larger than --max-body-size.",
        "415": "The body was sent with a Content-Type that is not JSON.",
        "429": "The model provider is rate limiting this server.",
        "500": "The agent could not run, or an unexpected error.",
        "502": "The model provider failed or sent an answer of the wrong shape.",
        "503": "The server cannot run the agent now.",
        "504": "The model provider did not answer in time.",
        "529": "Every run slot is busy and the queue is full, or the server is shutting down "
        "(overloaded_error, with retry-after).",
    }
    error = _ref("schemas", "AnthropicError")
    return {status: _jsonResponse(described[status], error) for status in statuses}


_ANTHROPIC_STATUSES = ("400", "401", "404", "408", "413", "415", "429", "500", "502", "503")


def _anthropicPaths() -> dict[str, Any]:
    def body(schema: str) -> dict[str, Any]:
        return {
            "required": True,
            "content": {"application/json": {"schema": _ref("schemas", schema)}},
        }

    return {
        "/v1/messages": {
            "post": {
                "operationId": "createMessage",
                "summary": "Run an agent on a conversation (Anthropic's Messages API; also "
                "at /v1/messages?beta=true).",
                "security": _KEYED,
                "requestBody": body("MessagesRequest"),
                "responses": {
                    "200": {
                        "description": "The message: one JSON body, or with stream=true "
                        "Anthropic's Server-Sent Events.",
                        "headers": {
                            "request-id": _ref("headers", "RequestId"),
                            "x-ai-agent-model": _ref("headers", "AnsweringModel"),
                        },
                        "content": {
                            "application/json": {"schema": _ref("schemas", "AnthropicMessage")},
                            "text/event-stream": {
                                "schema": _ref("schemas", "AnthropicStreamEvent")
                            },
                        },
                    },
                    **_anthropicErrors(*_ANTHROPIC_STATUSES, "504", "529"),
                },
            }
        },
        "/v1/messages/count_tokens": {
            "post": {
                "operationId": "countMessageTokens",
                "summary": "The input tokens a request would start with: counted by the agent's "
                "first provider when it speaks Anthropic's wire, else estimated as one token "
                "per 4 characters of the agent's prompt, the system text, the messages and the "
                "tools (the agent's own and the client's), plus 4 per message. A count takes "
                "a run slot (529 when every slot is busy and the queue is full); a provider's "
                "answer past 1 MiB is a 502.",
                "security": _KEYED,
                "requestBody": body("CountTokensRequest"),
                "responses": {
                    "200": _jsonResponse("The estimate.", _ref("schemas", "InputTokens")),
                    **_anthropicErrors(*_ANTHROPIC_STATUSES, "529"),
                },
            }
        },
    }


OPENAPI["paths"].update(_anthropicPaths())
OPENAPI["components"]["schemas"].update(_anthropicSchemas())
