"""An interactive MCP host signing in through the browser: the MCP Python SDK's own OAuth client
(dynamic registration, authorization code with PKCE, RFC 8707 resource, RFC 9207 iss) against the
gateway, the person consenting on the console's consent screen in Chromium."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from conftest import _sdk
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider, OAuthFlowError, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from playwright.async_api import async_playwright

CALLBACK = "http://127.0.0.1:47611/callback"


class Memory(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def run_host(server: Any, owner_token: str, decision: str, agent: str, uncheck: str | None = None) -> dict[str, Any]:
    """The MCP SDK's client connects; its browser step is a person in Chromium."""
    out: dict[str, Any] = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = await (await browser.new_context(viewport={"width": 1100, "height": 900})).new_page()
        # The person is signed in to the console already.
        await page.goto(f"{server.url}/console/login")
        await page.fill("#token", owner_token)
        await page.click("button[type=submit]")
        await page.wait_for_url("**/console/approvals")
        got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def on_callback(route: Any) -> None:
            if not got.done():
                got.set_result(route.request.url)
            await route.fulfill(status=200, body="you can close this window")

        await page.route(f"{CALLBACK}**", on_callback)

        async def redirect_handler(url: str) -> None:
            out["authorize_url"] = url
            await page.goto(url)
            await page.wait_for_selector("form.consent")
            out["consent_text"] = await page.inner_text("main")
            await page.select_option("#agent", agent)
            if uncheck:
                await page.uncheck(f"input[name=grant][value='{uncheck}']")
            shots = os.environ.get("MANDATE_SCREENSHOTS")
            if shots and decision == "allow":
                await page.screenshot(path=f"{shots}/consent.png", full_page=True)
            await page.click(f"button[value={decision}]")

        async def callback_handler() -> AuthorizationCodeResult:
            url = await asyncio.wait_for(got, 20)
            q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            out["callback"] = q
            if "error" in q:
                raise OAuthFlowError(f"authorization refused: {q['error']}")
            return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))

        storage = Memory()
        auth = OAuthClientProvider(
            server_url=server.url + "/mcp",
            client_metadata=OAuthClientMetadata(
                client_name="Desk Assistant",
                redirect_uris=[CALLBACK],
                grant_types=["authorization_code"],
                response_types=["code"],
                token_endpoint_auth_method="none",
                scope="call:notes.search call:notes.read",
            ),
            storage=storage,
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
        )
        try:
            async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
                async with streamable_http_client(server.url + "/mcp", http_client=http) as (read, write):
                    async with ClientSession(read, write) as s:
                        await s.initialize()
                        deadline = time.monotonic() + 30
                        while True:
                            names = {t.name for t in (await s.list_tools()).tools}
                            if "notes.search" in names or time.monotonic() > deadline:
                                break
                            await asyncio.sleep(0.2)
                        out["tools"] = names
                        res = await s.call_tool("notes.search", {"query": "printer"})
                        out["search"] = "\n".join(c.text for c in res.content if getattr(c, "type", "") == "text")
        except BaseException as e:  # noqa: BLE001 - the caller asserts on it
            out["error"] = e
        out["tokens"] = storage.tokens
        out["client"] = storage.client
        await browser.close()
    return out


def host(*args: Any, **kw: Any) -> dict[str, Any]:
    # In a thread of its own: the other tests' synchronous Playwright holds this thread's loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(run_host(*args, **kw))).result()


def test_mcp_sdk_oauth_client_signs_in_through_the_browser(server: Any, register: Any, owner_token: str) -> None:
    r = register("call:notes.search call:notes.read")
    out = host(server, owner_token, "allow", r.agent_id, uncheck="call:notes.read")
    assert "error" not in out, repr(out.get("error"))
    # The consent screen named the host, the agent and what it asked for.
    assert "Desk Assistant" in out["consent_text"] and r.agent_id in out["consent_text"]
    assert "call:notes.search" in out["consent_text"]
    q = parse_qs(urlsplit(out["authorize_url"]).query)
    assert q["code_challenge_method"] == ["S256"] and q["resource"] == [server.url + "/mcp"]
    assert out["callback"]["iss"] == server.url
    # The person narrowed the scope: the host got search only, as an ordinary task.
    assert out["tools"] == {"notes.search"}
    assert out["search"] == "n1"
    token = out["tokens"].access_token
    tasks = server.admin("GET", f"/admin/v1/tasks?agent={r.agent_id}")
    assert len(tasks) == 1
    t = tasks[0]
    assert t["state"] == "active" and t["intent"]["class"] == "interactive"
    assert t["scope"] == [{"identifier": "notes.search", "actions": ["call"]}]
    # Audited as opened on the person's behalf, and the calls under it.
    trace = json.loads(subprocess.run(
        [str(_sdk.mandate_bin()), "--data-dir", str(server.data_dir), "--json", "audit", "trace", t["id"]],
        capture_output=True, check=True, text=True).stdout)  # fmt: skip
    opened = next(s["event"] for s in trace["steps"] if s["event"]["kind"] == "task_opened")
    assert opened["detail"]["on_behalf_of"] == "owner:owner@example.com"
    # The person revokes it; the host's credential stops working at once.
    server.admin("POST", f"/admin/v1/tasks/{t['id']}/revoke", None, token=owner_token)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}  # fmt: skip
    resp = httpx2.post(server.url + "/mcp", json=init, headers={"Authorization": f"Bearer {token}",
                       "Accept": "application/json, text/event-stream"})  # fmt: skip
    assert resp.status_code == 401


def test_the_person_can_refuse(server: Any, register: Any, owner_token: str) -> None:
    r = register("call:notes.search")
    out = host(server, owner_token, "deny", r.agent_id)
    assert out["callback"]["error"] == "access_denied" and out["callback"]["iss"] == server.url
    assert out["tokens"] is None and "error" in out


def test_code_is_single_use_and_needs_the_verifier(server: Any) -> None:
    reg = httpx2.post(server.url + "/oauth/register", json={"redirect_uris": [CALLBACK], "client_name": "x"})
    assert reg.status_code == 201 and reg.json()["token_endpoint_auth_method"] == "none"
    bad = httpx2.post(server.url + "/oauth/register", json={"redirect_uris": ["http://evil.example/cb"]})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_redirect_uri"
    bad = httpx2.post(server.url + "/oauth/register", json={"redirect_uris": []})
    assert bad.status_code == 400
    # A code nobody issued is refused with invalid_grant.
    r = httpx2.post(server.url + "/oauth/token", data={
        "grant_type": "authorization_code", "code": "forged", "code_verifier": "v" * 43,
        "client_id": reg.json()["client_id"], "redirect_uri": CALLBACK})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # The authorization endpoint hands over to the console, which asks who is signing in.
    a = httpx2.get(server.url + "/oauth/authorize?response_type=code&client_id=nobody", follow_redirects=False)
    assert a.status_code == 303 and a.headers["location"].startswith("/console/authorize?")
    meta = httpx2.get(server.url + "/.well-known/oauth-authorization-server").json()
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["registration_endpoint"] == server.url + "/oauth/register"

