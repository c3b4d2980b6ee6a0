"""A scripted MCP server over stdio for the efficacy benchmark.

    python mcp_server.py domains/banking.json

serves the tools of one domain file with their input schemas. A `tools/call` answers, as text
content, the `output` of the first step (over every task of the domain, in file order) whose
tool and arguments equal the call's, compared as canonical JSON; a call that no step scripts
gets a short generic success. Built on the official MCP Python SDK's low-level `Server`.
"""
import json
import sys

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

GENERIC = json.dumps({"ok": True})


def canonical(value):
    """The canonical JSON text of a value: sorted keys, no insignificant whitespace.

    Numbers compare by value, so 98.7 and 98.70 and 100 and 100.0 are the same argument.
    """

    def norm(v):
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            f = float(v)
            return int(f) if f.is_integer() else f
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    return json.dumps(norm(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load(path):
    with open(path, encoding="utf-8") as f:
        domain = json.load(f)
    tools = [
        types.Tool(name=t["name"], description=t.get("description"), input_schema=t["inputSchema"])
        for t in domain["tools"]
    ]
    scripted = {}
    for task in domain.get("tasks", []):
        for step in task.get("steps", []):
            if "output" not in step:
                continue
            key = (step["tool"], canonical(step.get("arguments") or {}))
            scripted.setdefault(key, step["output"])  # the first step in file order wins
    return domain["domain"], tools, scripted


def as_text(output):
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


def build(path):
    name, tools, scripted = load(path)
    known = {t.name for t in tools}

    async def list_tools(ctx, params):
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx, params):
        if params.name not in known:
            return types.CallToolResult(
                content=[types.TextContent(text=f"unknown tool: {params.name}")], is_error=True
            )
        output = scripted.get((params.name, canonical(params.arguments or {})))
        text = GENERIC if output is None else as_text(output)
        return types.CallToolResult(content=[types.TextContent(text=text)])

    return Server(f"efficacy-{name}", version="1", on_list_tools=list_tools, on_call_tool=call_tool)


async def main(path):
    server = build(path)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: mcp_server.py DOMAIN.json")
    anyio.run(main, sys.argv[1])
