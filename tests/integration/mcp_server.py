"""A small MCP server for the tool-source tests (official `mcp` SDK), run over stdio by the
test (`python -m tests.integration.mcp_server`) or served over Streamable HTTP.

Notes are kept in the JSON file named by `MCP_NOTES_FILE`, so a write's effect can be counted
across the separate server processes that stdio calls start."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

server = MCPServer("goalrail-test-tools")


class Note(BaseModel):
    note_id: str
    title: str


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def create_note(title: str = Field(min_length=1), idempotency_key: str = "") -> Note:
    """Create a note; one note per idempotency key."""
    path = Path(os.environ.get("MCP_NOTES_FILE", "notes.json"))
    notes = json.loads(path.read_text()) if path.exists() else {}
    if idempotency_key not in notes:
        notes[idempotency_key] = {"note_id": f"note-{len(notes) + 1}", "title": title}
        path.write_text(json.dumps(notes))
    return Note(**notes[idempotency_key])


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def purge_notes() -> str:
    """Delete every note."""
    Path(os.environ.get("MCP_NOTES_FILE", "notes.json")).unlink(missing_ok=True)
    return "purged"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def explode() -> str:
    """Always fails."""
    raise ValueError("the reactor is on fire")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
async def nap(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "rested"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def token_check() -> bool:
    """Whether the server got its token from the environment."""
    return os.environ.get("MCP_TEST_TOKEN") == "mcp-token-42"


if __name__ == "__main__":
    server.run()
