"""A deliberately broken MCP server over stdio, for the gateway's fault tests.

It initialises and lists one tool like any server; what it does when the tool is called
depends on argv[1]: `crash` exits, `hang` never answers, `garbage` writes lines that are not
JSON-RPC and never answers.
"""
import json
import sys
import time

mode = sys.argv[1]


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    msg = json.loads(line)
    method, mid = msg.get("method"), msg.get("id")
    if mid is None:
        continue
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": f"faulty-{mode}", "version": "0"},
        }})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [
            {"name": "work", "inputSchema": {"type": "object"}},
        ]}})
    elif method == "tools/call":
        if mode == "crash":
            sys.exit(3)
        if mode == "hang":
            time.sleep(3600)
        if mode == "garbage":
            sys.stdout.write("this is not json\n{\"half\": \n\x00\x01\x02\n")
            sys.stdout.flush()
    else:
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
