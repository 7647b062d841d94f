# -*- test-case-name: tests.test_rest -*-
"""
OpenAPI import: each operation of an OpenAPI 3 document (a local JSON or
YAML file, C{openapiSpecs.<name>}) becomes a REST tool, as the TypeScript
ai-agent imports them.

  - name: C{<name>_<operationId>}, or C{<name>_<method>_<path>} without one
    (offered to the model as C{rest__<that>});
  - description: the operation's C{summary}, else its C{description},
    else C{<METHOD> <path>};
  - parameters: one property per path, query and header parameter (path
    ones required), plus C{body} for an C{application/json} request body,
    each with its schema; C{$ref}s within the document are resolved;
  - URL: the spec's C{baseUrl}, else the document's first C{servers} URL,
    then the path with C{{param}} as C{${parameters.param}}; query
    parameters are added when given; header parameters become headers,
    beside the spec's configured C{headers};
  - C{includeMethods} and C{tagFilter} choose the operations.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import yaml

from ai_agent.config import OpenApiSpecConfig, RestToolConfig, checkRestUrl
from ai_agent.errors import ConfigurationError

_METHODS = ("get", "post", "put", "patch", "delete")

#: How deep C{$ref}s are followed inside one schema.
_MAX_REF_DEPTH = 16


def _isRecord(value: object) -> bool:
    return isinstance(value, dict)


def readDocument(path: str, where: str) -> dict[str, Any]:
    """
    Read an OpenAPI document (JSON is YAML too).

    @raise ConfigurationError: naming C{where} and the file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise ConfigurationError(f"{where}: cannot read the document {path}: {why}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigurationError(f"{where}: {path} is not JSON or YAML") from None
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise ConfigurationError(f"{where}: {path} is not an OpenAPI document (no 'paths')")
    return document


def _pointer(document: Mapping[str, Any], ref: str) -> Any:
    """
    The value a local C{$ref} (C{#/a/b}) points at, or L{None}.
    """
    if not ref.startswith("#/"):
        return None
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def resolveRefs(document: Mapping[str, Any], node: Any, seen: tuple[str, ...] = ()) -> Any:
    """
    C{node} with every local C{$ref} replaced by what it points at; a
    reference back into itself (a recursive schema), one too deep or one
    that points nowhere becomes C{{}} (any value).
    """
    if isinstance(node, list):
        return [resolveRefs(document, item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = _pointer(document, ref)
        if target is None or ref in seen or len(seen) >= _MAX_REF_DEPTH:
            return {}
        return resolveRefs(document, target, (*seen, ref))
    return {key: resolveRefs(document, value, seen) for key, value in node.items()}


def _pathName(path: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", path.replace("{", "").replace("}", ""))
    return cleaned.strip("_").lower()


def importOpenApi(spec: OpenApiSpecConfig) -> dict[str, RestToolConfig]:
    """
    The REST tools of C{spec}'s document, by name.

    @raise ConfigurationError: the document cannot be read, has no base
        URL, or yields two tools of the same name.
    """
    where = f"{spec.source}: openapiSpecs.{spec.name}"
    document = readDocument(spec.spec, where)
    baseUrl = spec.baseUrl
    if baseUrl is None:
        servers = document.get("servers")
        first = servers[0] if isinstance(servers, list) and servers else None
        baseUrl = first.get("url") if isinstance(first, dict) else None
        if not isinstance(baseUrl, str) or not baseUrl.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"{where}: the document names no absolute server URL; set baseUrl"
            )
        baseUrl = baseUrl.rstrip("/")
    checkRestUrl(baseUrl, where)
    tools: dict[str, RestToolConfig] = {}
    for path, item in document["paths"].items():
        if not isinstance(path, str) or not isinstance(item, dict):
            continue
        for method in _METHODS:
            operation = item.get(method)
            if method not in spec.includeMethods or not isinstance(operation, dict):
                continue
            tags = [t for t in operation.get("tags") or () if isinstance(t, str)]
            if spec.tagFilter and not set(tags) & set(spec.tagFilter):
                continue
            tool = _operationTool(spec, document, baseUrl, path, method, item, operation)
            if tool.name in tools:
                raise ConfigurationError(
                    f"{where}: two operations would both be the tool {tool.name!r}"
                )
            tools[tool.name] = tool
    return tools


def _operationTool(
    spec: OpenApiSpecConfig,
    document: Mapping[str, Any],
    baseUrl: str,
    path: str,
    method: str,
    item: Mapping[str, Any],
    operation: Mapping[str, Any],
) -> RestToolConfig:
    operationId = operation.get("operationId")
    base = operationId if isinstance(operationId, str) and operationId else None
    name = f"{spec.name}_{base or f'{method}_{_pathName(path)}'}"
    description = next(
        (
            text
            for text in (operation.get("summary"), operation.get("description"), base)
            if isinstance(text, str) and text.strip()
        ),
        f"{method.upper()} {path}",
    )
    # Operation parameters override the path item's of the same name and place.
    parameters: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*(item.get("parameters") or ()), *(operation.get("parameters") or ())]:
        parameter = resolveRefs(document, raw)
        if isinstance(parameter, dict) and isinstance(parameter.get("name"), str):
            parameters[(parameter["name"], str(parameter.get("in")))] = parameter
    properties: dict[str, Any] = {}
    required: list[str] = []
    query: list[str] = []
    headers = dict(spec.headers)
    for (paramName, place), parameter in parameters.items():
        if place not in ("path", "query", "header"):
            continue
        given = parameter.get("schema")
        schema = dict(given) if isinstance(given, dict) else {"type": "string"}
        if isinstance(parameter.get("description"), str) and "description" not in schema:
            schema["description"] = parameter["description"]
        properties[paramName] = schema
        if place == "path" or parameter.get("required") is True:
            required.append(paramName)
        if place == "query":
            query.append(paramName)
        elif place == "header":
            headers[paramName] = f"${{parameters.{paramName}}}"
    hasBody = False
    body = resolveRefs(document, operation.get("requestBody"))
    content = body.get("content") if isinstance(body, dict) else None
    json = content.get("application/json") if isinstance(content, dict) else None
    if isinstance(json, dict) and isinstance(json.get("schema"), dict):
        properties["body"] = json["schema"]
        if body.get("required") is True:
            required.append("body")
        hasBody = True
    url = baseUrl + re.sub(r"\{([^}]+)\}", r"${parameters.\1}", path)
    parametersSchema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parametersSchema["required"] = required
    return RestToolConfig(
        name=name,
        description=description.strip(),
        method=method.upper(),
        url=url,
        headers=headers,
        parametersSchema=parametersSchema,
        hasBody=hasBody,
        bodyTemplate="${parameters.body}" if hasBody else None,
        queryParams=tuple(query),
        timeout=spec.timeout,
        maxResponseBytes=spec.maxResponseBytes,
        missingVariables=spec.missingVariables,
        source=f"openapiSpecs.{spec.name}",
    )


__all__ = ["importOpenApi", "readDocument", "resolveRefs"]
