"""
The C{twistd ai-agent} dropin: a lazy service maker, so listing twistd
plugins does not import the server.
"""

from twisted.application.service import ServiceMaker

aiAgent = ServiceMaker(
    "ai-agent",
    "ai_agent.tap",
    "Serve LLM agents from .ai files as OpenAI-compatible models",
    "ai-agent",
)
