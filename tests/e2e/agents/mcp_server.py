"""A real MCP server written with the `mcp` Python SDK (FastMCP; renamed
MCPServer in mcp 2.x), for the orchestrator's mcp-http and mcp-stdio tests.

    python3 mcp_server.py stdio
    python3 mcp_server.py http PORT
Tools: add(a, b) -> a + b;  shout(text) -> text upper-cased;  nap(ms) -> sleeps.
"""
import asyncio
import sys

try:
    from mcp.server.fastmcp import FastMCP as Server  # mcp 1.x
except ImportError:  # mcp 2.x
    from mcp.server.mcpserver import MCPServer as Server

mcp = Server("paraserve-test-tools")


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


@mcp.tool()
async def nap(ms: int) -> str:
    """Sleep for ms milliseconds, then say so."""
    await asyncio.sleep(ms / 1000)
    return f"slept {ms} ms"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        mcp.run(transport="stdio")
    else:
        port = int(sys.argv[2])
        try:
            mcp.run(transport="streamable-http", host="127.0.0.1", port=port)
        except TypeError:  # mcp 1.x: host/port are settings
            mcp.settings.host, mcp.settings.port = "127.0.0.1", port
            mcp.run(transport="streamable-http")
