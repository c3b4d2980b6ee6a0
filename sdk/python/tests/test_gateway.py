"""The official MCP Python SDK reaching the gateway's /mcp as a task, with `task.httpx_auth()`."""

from __future__ import annotations

import asyncio
import time

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mandate_agent import AgentKey, CredentialRefused


def text(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def tool_names(s: ClientSession, want: set[str]) -> set[str]:
    # The upstream starts with the server; wait until it offers its tools.
    deadline = time.monotonic() + 30
    while True:
        names = {t.name for t in (await s.list_tools()).tools}
        if want <= names or time.monotonic() > deadline:
            return names
        await asyncio.sleep(0.2)


def test_mcp_sdk_lists_and_calls_tools_through_the_gateway(server, register):
    r = register("call:notes.search call:notes.read call:notes.delete")
    mcp_url = server.url + "/mcp"

    async def main(task) -> dict:
        out: dict = {}
        async with httpx2.AsyncClient(auth=task.httpx_auth(), timeout=30) as http:
            async with streamable_http_client(mcp_url, http_client=http) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    # Only what the task may call is listed.
                    out["tools"] = await tool_names(s, {"notes.search", "notes.read"})
                    out["search"] = text(await s.call_tool("notes.search", {"query": "printer"}))
                    out["read"] = text(await s.call_tool("notes.read", {"note_id": "n1"}))
                    try:
                        await s.call_tool("notes.delete", {"note_id": "n1"})
                    except MCPError as e:
                        out["denied"] = (e.error.code, e.error.message, e.error.data)
        return out

    with r.agent.task(intent="look up the printer runbook", access=["call:notes.search", "call:notes.read"]) as task:
        out = asyncio.run(main(task))
        assert out["tools"] == {"notes.search", "notes.read"}
        assert out["search"] == "n1" and "unplug" in out["read"]
        code, message, data = out["denied"]
        assert code == -32001 and "denied by Mandate" in message
        assert data["decision"] == "deny" and data["policies"] == ["mandate:task-scope"]
        # Each request carried its own proof: a reused one would have been refused.
        flow = server.task_state(task.task_id)["flow"]
        assert flow["calls"] == 2 and flow["denied"] == 1
    # After the task ended, the same client is refused (401) at its first request.
    with pytest.raises(BaseException) as ended:
        asyncio.run(main(task))
    assert ended.group_contains(MCPError, depth=None) if isinstance(ended.value, BaseExceptionGroup) else (
        isinstance(ended.value, (MCPError, httpx2.HTTPStatusError))
    )


def test_gateway_refuses_a_copied_token_with_a_challenge(server, register):
    r = register("call:notes.search")
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "0"}}}  # fmt: skip
    headers = {"Accept": "application/json, text/event-stream"}
    url = server.url + "/mcp"
    resp = httpx2.post(url, json=init, headers=headers)
    assert resp.status_code == 401
    assert f'resource_metadata="{server.url}/.well-known/oauth-protected-resource/mcp"' in resp.headers[
        "www-authenticate"
    ]
    meta = httpx2.get(server.url + "/.well-known/oauth-protected-resource/mcp").json()
    assert meta["authorization_servers"] == [server.url] and meta["resource"] == url
    with r.agent.task(intent="copy test", access=["call:notes.search"]) as task:
        stolen = {**headers, "Authorization": f"Bearer {task.token}"}
        resp = httpx2.post(url, json=init, headers=stolen)
        assert resp.status_code == 401 and "DPoP proof is required" in resp.json()["error_description"]
        thief = AgentKey.generate()
        stolen["DPoP"] = thief.dpop_proof("POST", url, task.token)
        assert httpx2.post(url, json=init, headers=stolen).status_code == 401
        # The task's own auth works, also as an `httpx.Auth` for the classic httpx package.
        ok = httpx2.post(url, json=init, headers=headers, auth=task.httpx_auth())
        assert ok.status_code == 200 and ok.json()["result"]["serverInfo"]["name"] == "mandate-gateway"
        auth = task.httpx_auth(module=httpx)
        assert isinstance(auth, httpx.Auth)
        ok = httpx.post(url, json={**init, "id": 2}, headers=headers, auth=auth)
        assert ok.status_code == 200 and "mcp-session-id" in ok.headers
    with pytest.raises(CredentialRefused):
        task.decide("call", "notes.search")


def test_http_proxy_with_the_task_auth(server, register):
    r = register("read:article:7 read:article:8")
    with r.agent.task(intent="read article 7", access=["read:article:7"]) as task:
        with httpx2.Client(auth=task.httpx_auth()) as http:
            ok = http.get(server.url + "/http/kb/articles/7?lang=en")
            assert ok.status_code == 200
            # The upstream sees the rebuilt path, never the agent's credential.
            assert ok.json() == {"path": "/api/articles/7?lang=en", "authorization": None}
            refused = http.get(server.url + "/http/kb/articles/8")
            assert refused.status_code == 403 and refused.json()["error"] == "access_denied"
            assert refused.json()["policies"] == ["mandate:task-scope"]
            assert http.get(server.url + "/http/kb/other").status_code == 403
        # Without the proof, the copied credential is refused.
        resp = httpx2.get(server.url + "/http/kb/articles/7", headers={"Authorization": f"DPoP {task.token}"})
        assert resp.status_code == 401
