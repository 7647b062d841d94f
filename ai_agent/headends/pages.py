# -*- test-case-name: tests.test_firstrun -*-
"""
The pages a person opens in a browser: C{GET /} names the server, its
models and where to go next; C{GET /docs} is an interactive page for
C{/openapi.json}.  Everything is served from files installed with the
package (C{assets/}); nothing is loaded from elsewhere.
"""

from __future__ import annotations

import html
import re
from importlib.resources import files
from typing import Sequence

from ai_agent import __version__

#: The files under C{/assets/}, with their content types.
ASSETS = {
    "docs.js": b"text/javascript; charset=utf-8",
    "page.css": b"text/css; charset=utf-8",
}

HTML = b"text/html; charset=utf-8"

#: The icon browsers ask for at C{/favicon.ico} (a 16x16 PNG in an ICO).
FAVICON = "favicon.ico"
ICON = b"image/x-icon"

#: A C{Host} header value the home page shows as this server's address: a
#: name, an IPv4 address or a bracketed IPv6 address, and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")

#: Pages load only this server's own scripts and styles.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"
)


def asset(name: str) -> bytes:
    """
    The bytes of an installed asset (C{docs.html}, or one of L{ASSETS}).
    """
    return files("ai_agent.headends").joinpath("assets", name).read_bytes()


def origin(host: bytes | None, secure: bool, fallback: str) -> str:
    """
    The address a browser reached this server at, for the home page:
    C{http://} (or C{https://}) and the request's C{Host} header when it
    is a well-formed host and port, else C{fallback} (the address the
    connection came in on).  The header is the client's word: anything
    else in it is never shown.
    """
    text = "" if host is None else host.decode("ascii", "replace").strip()
    if not _HOST.fullmatch(text):
        text = fallback
    return ("https://" if secure else "http://") + text


def homePage(models: Sequence[str], base: str = "http://HOST:PORT") -> bytes:
    """
    The page at C{/}: what this is, the served models, and links, with
    C{base} (see L{origin}) as the server's address in the examples.
    """
    address = html.escape(base)
    items = "".join(f"<li><code>{html.escape(model)}</code></li>" for model in models)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ai-agent</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/assets/page.css">
<link rel="icon" href="/favicon.ico">
</head>
<body>
<h1>ai-agent {html.escape(__version__)}</h1>
<p>LLM agents served as OpenAI-compatible models. Point a client (the OpenAI SDKs,
Open WebUI, LangChain, curl) at the base URL <code>{address}/v1</code>,
with any model below.</p>
<h2>Models</h2>
<ul>{items or "<li>none</li>"}</ul>
<h2>Links</h2>
<ul>
<li><a href="/docs">/docs</a>: try the API in this browser</li>
<li><a href="/openapi.json">/openapi.json</a>: the OpenAPI document</li>
<li><a href="/v1/models">/v1/models</a>: the models, as clients see them</li>
<li><a href="/health">/health</a>: liveness and load</li>
</ul>
<h2>Try it</h2>
<pre>curl {address}/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{html.escape(models[0] if models else "MODEL")}",
       "messages": [{{"role": "user", "content": "Hello!"}}]}}'</pre>
</body>
</html>
""".encode()


__all__ = [
    "ASSETS",
    "CONTENT_SECURITY_POLICY",
    "FAVICON",
    "HTML",
    "ICON",
    "asset",
    "homePage",
    "origin",
]
