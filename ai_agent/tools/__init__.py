"""
Tools for agents: MCP servers (C{<server>__<tool>}), REST tools
(C{rest__<name>}) and sub-agents (C{agent__<name>}).

  - L{McpManager} / L{McpServer}: the MCP client, over stdio and Streamable
    HTTP, with shared servers restarted after a crash.
  - L{SubAgentTool}: a sub-agent run as a tool.
  - L{RestTool} / L{RestCatalog}: HTTP API calls from C{restTools} and
    C{openapiSpecs}.
  - L{ToolBoxFactory}: builds the tool box of each run for
    L{ai_agent.session.SessionRunner}.
"""

from ai_agent.tools._jsonrpc import JsonRpcConnection, JsonRpcError, McpError
from ai_agent.tools._naming import MAX_TOOL_NAME, toolName
from ai_agent.tools._toolbox import AgentToolBox, ToolBoxFactory, functionParameters
from ai_agent.tools.mcp import (
    PROTOCOL_VERSION,
    McpManager,
    McpServer,
    McpTool,
    formatToolResult,
)
from ai_agent.tools.rest import RestCatalog, RestTool
from ai_agent.tools.subagent import NestedSink, SubAgentTool

__all__ = [
    "MAX_TOOL_NAME",
    "PROTOCOL_VERSION",
    "AgentToolBox",
    "JsonRpcConnection",
    "JsonRpcError",
    "McpError",
    "McpManager",
    "McpServer",
    "McpTool",
    "NestedSink",
    "RestCatalog",
    "RestTool",
    "SubAgentTool",
    "ToolBoxFactory",
    "formatToolResult",
    "functionParameters",
    "toolName",
]
