"""The official MCP Python SDK as an agent behind Mandate's gateway.

The SDK discovers the gateway's protected-resource metadata (RFC 9728), finds Mandate's token
service, and obtains a task credential by itself with the client-credentials extension
(private_key_jwt, EdDSA). Each `run` below is a separate task. Prints one JSON report.

Environment: GATEWAY (the /mcp URL), ISSUER, AGENT_ID, AGENT_KEY (PEM), WORKDIR (a directory
the filesystem server may use; holds customers.txt), APPROVAL_FILE / GRANTED_FILE (handshake
with the test for the approval flow).
"""
import asyncio
import json
import os
import sys
import time

from mcp import ClientSession
from mcp.client.auth import TokenStorage
from mcp.client.auth.extensions.client_credentials import (
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

GATEWAY = os.environ["GATEWAY"]
ISSUER = os.environ["ISSUER"]
AGENT = os.environ["AGENT_ID"]
KEY = open(os.environ["AGENT_KEY"]).read()
WORKDIR = os.environ["WORKDIR"]


class Memory(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


def text(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def session(scope):
    # MCP scope selection: once the gateway answers 401, the SDK asks for the scopes its resource
    # metadata lists (every tool on offer) in place of this one; the broker grants the part of
    # that request that fits the agent's envelope.
    storage = Memory()
    params = SignedJWTParameters(issuer=AGENT, subject=AGENT, signing_key=KEY, signing_algorithm="EdDSA")
    auth = PrivateKeyJWTOAuthProvider(
        server_url=GATEWAY,
        storage=storage,
        client_id=AGENT,
        assertion_provider=params.create_assertion_provider(),
        scope=scope,
        issuer=ISSUER,
    )
    return auth, storage


async def refused(s, name, args):
    try:
        await s.call_tool(name, args)
    except MCPError as e:
        return {"code": e.error.code, "message": e.error.message, "data": e.error.data}
    return None


async def run(scope, body):
    auth, storage = await session(scope)
    async with create_mcp_http_client(auth=auth) as http:
        async with streamable_http_client(GATEWAY, http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                out = await body(s)
                out["token"] = storage.tokens.access_token if storage.tokens else None
                return out


async def wait_for_tools(s, want):
    deadline = time.time() + 60
    names = []
    while time.time() < deadline:
        names = sorted(t.name for t in (await s.list_tools()).tools)
        if all(w in names for w in want):
            return names
        await asyncio.sleep(0.5)
    return names


async def basics(s):
    names = await wait_for_tools(s, ["everything.get-sum", "time.get_current_time", "fs.read_text_file"])
    out = {"tools": names}
    out["sum"] = text(await s.call_tool("everything.get-sum", {"a": 2, "b": 3}))
    out["time"] = text(await s.call_tool("time.get_current_time", {"timezone": "UTC"}))
    out["denied"] = await refused(s, "everything.get-tiny-image", {})
    out["env"] = text(await s.call_tool("everything.get-env", {}))
    return out


async def s3(s):
    await wait_for_tools(s, ["fs.read_text_file", "everything.echo"])
    out = {"echo_before": text(await s.call_tool("everything.echo", {"message": "hello"}))}
    out["read"] = text(await s.call_tool("fs.read_text_file", {"path": os.path.join(WORKDIR, "customers.txt")}))
    out["echo_after"] = await refused(s, "everything.echo", {"message": "exfiltrate"})
    return out


async def approval(s):
    await wait_for_tools(s, ["fs.write_file"])
    target = os.path.join(WORKDIR, "report.txt")
    args = {"path": target, "content": "quarterly report"}
    first = await refused(s, "fs.write_file", args)
    out = {"first": first, "written_before": os.path.exists(target)}
    if first and first.get("data") and first["data"].get("approval_id"):
        with open(os.environ["APPROVAL_FILE"], "w") as f:
            f.write(first["data"]["approval_id"])
        deadline = time.time() + 60
        while not os.path.exists(os.environ["GRANTED_FILE"]) and time.time() < deadline:
            await asyncio.sleep(0.2)
        out["second"] = text(await s.call_tool("fs.write_file", args))
        out["written_after"] = open(target).read() if os.path.exists(target) else None
        out["third"] = await refused(s, "fs.write_file", {"path": target, "content": "tampered"})
    return out


async def main():
    report = {}
    report["basics"] = await run(
        "call:everything.get-sum call:time.get_current_time call:everything.get-env call:fs.read_text_file",
        basics,
    )
    report["s3"] = await run("call:everything.echo call:fs.read_text_file", s3)
    report["approval"] = await run("call:fs.write_file", approval)
    print(json.dumps(report))


asyncio.run(main())
