"""A tiny MCP server (stdio) the gateway fronts in the tests, as `notes.<tool>`."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("notes")
NOTES = {"n1": "printer runbook: unplug it, wait ten seconds", "n2": "vpn runbook: reconnect"}


@server.tool()
def search(query: str) -> str:
    """Search the notes."""
    hits = [k for k, v in NOTES.items() if query.lower() in v.lower()]
    return ", ".join(hits) or "no match"


@server.tool()
def read(note_id: str) -> str:
    """Read one note."""
    return NOTES.get(note_id, "no such note")


@server.tool()
def delete(note_id: str) -> str:
    """Delete one note."""
    NOTES.pop(note_id, None)
    return f"deleted {note_id}"


if __name__ == "__main__":
    server.run("stdio")
