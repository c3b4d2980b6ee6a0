"""Replays every step of every task through mcp_server.py with the MCP Python SDK's stdio client.

    /work/main/.test-deps/venv/bin/python check_server.py [domains/*.json]

Lists each domain's tools (they must match the file) and calls every step's tool with its
arguments; the answer must be exactly the step's `output`, or `{"ok": true}` where none is
scripted. Exits non-zero on any mismatch.
"""
import asyncio
import glob
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

HERE = os.path.dirname(os.path.abspath(__file__))
GENERIC = json.dumps({"ok": True})


async def replay(path):
    with open(path, encoding="utf-8") as f:
        domain = json.load(f)
    params = StdioServerParameters(command=sys.executable, args=[os.path.join(HERE, "mcp_server.py"), path])
    calls = bad = 0
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = {t.name: t.input_schema for t in (await session.list_tools()).tools}
            want = {t["name"]: t["inputSchema"] for t in domain["tools"]}
            if listed != want:
                print(f"{path}: tools/list differs from the file")
                bad += 1
            for task in domain["tasks"]:
                for i, step in enumerate(task["steps"]):
                    result = await session.call_tool(step["tool"], step["arguments"])
                    text = "".join(c.text for c in result.content if getattr(c, "type", "") == "text")
                    calls += 1
                    if result.is_error or text != step.get("output", GENERIC):
                        bad += 1
                        print(f"{path}: {task['id']} step {i}: got {text[:80]!r}")
    print(f"{os.path.relpath(path, HERE)}: {len(listed)} tools, {calls} calls, {bad} mismatches")
    return bad


async def main(paths):
    bad = 0
    for p in paths:
        bad += await replay(p)
    return 1 if bad else 0


if __name__ == "__main__":
    files = sys.argv[1:] or sorted(glob.glob(os.path.join(HERE, "domains", "*.json")))
    sys.exit(asyncio.run(main(files)))
