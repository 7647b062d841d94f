"""
C{python -m ai_agent}: the same as the C{ai-agent} command.
"""

from ai_agent.cli import main

if __name__ == "__main__":
    main()
