"""
ai-agent: LLM agents defined in C{.ai} files, served as OpenAI-compatible models.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
