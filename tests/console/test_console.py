"""The web console in a real browser: sign-in, the approvals inbox (live, approve and deny),
the kill switch, task revocation and trace, policies, and CSRF refusal."""

from __future__ import annotations

import http.server
import threading
from typing import Any

import httpx2
import pytest
from conftest import shot, sign_in
from playwright.sync_api import Page, expect

from mandate_agent import CredentialRefused, Denied, NeedsApproval


def test_sign_in_refuses_a_bad_token_and_sets_a_strict_cookie(page: Page, server: Any, owner_token: str) -> None:
    page.goto(f"{server.url}/console/approvals")
    assert page.url.endswith("/console/login")
    shot(page, "sign-in")
    page.fill("#token", "mnd_not-a-token")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not valid")
    assert not [c for c in page.context.cookies() if c["name"] == "mandate_console"]

    sign_in(page, server.url, owner_token)
    cookie = next(c for c in page.context.cookies() if c["name"] == "mandate_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    # Scripts cannot read it.
    assert "mandate_console" not in page.evaluate("document.cookie")
    r = page.request.get(f"{server.url}/console/approvals")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    # Signing out ends the session on the server, not just in the browser.
    sid = cookie["value"]
    page.click("text=Sign out")
    page.wait_for_url("**/console/login")
    r = httpx2.get(f"{server.url}/console/approvals", headers={"Cookie": f"mandate_console={sid}"},
                   follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/console/login"


def _pending_refund(register: Any, amount: int) -> tuple[Any, Any, NeedsApproval]:
    r = register("call:refund", tier="high")
    task = r.agent.open_task(intent=f"refund order 1234 ({amount} EUR) for the customer", access=["call:refund"],
                             ttl=300)  # fmt: skip
    with pytest.raises(NeedsApproval) as e:
        task.decide("call", "refund", {"amount": amount, "order": "1234"})
    return r, task, e.value


def test_owner_approves_a_pending_refund_and_the_call_goes_through(page: Page, server: Any, register: Any,
                                                                   owner_token: str) -> None:  # fmt: skip
    sign_in(page, server.url, owner_token)
    page.wait_for_selector("body[data-live-ready]")
    # The request arrives while the inbox is open: it appears without a reload.
    _, task, pending = _pending_refund(register, 250)
    card = page.locator(f"article[data-approval='{pending.approval_id}']")
    expect(card).to_be_visible(timeout=10_000)
    expect(card).to_contain_text("call on tool refund")
    expect(card).to_contain_text("refund order 1234")
    expect(card).to_contain_text('"amount": 250')
    expect(card).to_contain_text("large-amount-needs-approval")
    expect(card.locator(".ttl")).to_contain_text("left")
    shot(page, "approvals")

    result: dict[str, Any] = {}

    def agent_waits() -> None:
        try:
            result["decision"] = task.wait_for_approval(pending, timeout=30)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=agent_waits)
    t.start()
    card.locator("input[name=note]").fill("order checked")
    card.locator("button.grant").click()
    expect(page.locator(".flash")).to_contain_text(f"Request {pending.approval_id} approved.")
    t.join(30)
    assert "error" not in result, result.get("error")
    d = result["decision"]
    assert d.allowed and f"approval:{pending.approval_id}" in d.policies
    shown = server.admin("GET", f"/admin/v1/approvals/{pending.approval_id}", token=owner_token)
    assert shown["state"] in ("granted", "used") and shown["note"] == "order checked"
    assert shown["decided_by"] == "owner:owner@example.com" or "owner@example.com" in shown["decided_by"]
    expect(page.locator("table")).to_contain_text("order checked")
    task.complete()


def test_owner_denies_and_the_agent_is_told(page: Page, server: Any, register: Any, owner_token: str) -> None:
    _, task, pending = _pending_refund(register, 900)
    sign_in(page, server.url, owner_token)
    card = page.locator(f"article[data-approval='{pending.approval_id}']")
    card.locator("input[name=note]").fill("not this customer")
    card.locator("button.deny").click()
    expect(page.locator(".flash")).to_contain_text("denied")
    expect(card).to_have_count(0)
    with pytest.raises(Denied) as e:
        task.wait_for_approval(pending, timeout=5)
    assert "not this customer" in str(e.value) or "denied" in str(e.value)
    task.complete()


def test_kill_switch_fails_the_agents_next_call(page: Page, server: Any, register: Any, owner_token: str) -> None:
    r = register("call:search_kb")
    task = r.agent.open_task(intent="look things up", access=["call:search_kb"], ttl=300)
    assert task.decide("call", "search_kb", {"q": "x"}).allowed
    sign_in(page, server.url, owner_token)
    page.click("nav >> text=Agents")
    row = page.locator(f"tr[data-agent='{r.agent_id}']")
    expect(row.locator(".status")).to_have_text("active")
    shot(page, "agents")
    row.locator("input[name=reason]").fill("looping on the search tool")
    row.locator("button.deny").click()
    expect(page.locator(".flash")).to_contain_text(f"Agent {r.agent_id} suspended")
    expect(page.locator(f"tr[data-agent='{r.agent_id}'] .status")).to_have_text("suspended")
    # The agent's very next call fails: its task was revoked with the suspension.
    with pytest.raises((CredentialRefused, Denied)):
        task.decide("call", "search_kb", {"q": "y"})
    t = server.task_state(task.task_id)
    assert t["state"] == "revoked" and "looping on the search tool" in t["end_reason"]
    # And it can open no new task until resumed.
    with pytest.raises(Exception):
        r.agent.open_task(intent="again", access=["call:search_kb"])
    page.locator(f"tr[data-agent='{r.agent_id}'] button", has_text="Resume").click()
    expect(page.locator(f"tr[data-agent='{r.agent_id}'] .status")).to_have_text("active")
    r.agent.open_task(intent="again", access=["call:search_kb"]).complete()


def test_tasks_list_trace_and_revoke(page: Page, server: Any, register: Any, owner_token: str) -> None:
    r = register("call:search_kb call:http_post")
    task = r.agent.open_task(intent="research <b>pricing</b>", access=["call:search_kb", "call:http_post"], ttl=300)
    assert task.decide("call", "search_kb", {"q": "pricing"}).allowed
    sign_in(page, server.url, owner_token)
    page.click("nav >> text=Tasks")
    row = page.locator(f"tr[data-task='{task.task_id}']")
    # Markup in an intent is shown as text, never rendered.
    expect(row.locator(".intent")).to_have_text("research <b>pricing</b>")
    shot(page, "tasks")
    row.locator("a").first.click()
    page.wait_for_url(f"**/console/tasks/{task.task_id}")
    trace = page.locator(".trace")
    expect(trace).to_contain_text("task_opened")
    expect(trace).to_contain_text("call tool:search_kb")
    expect(trace.locator(".decision").first).to_have_text("allow")
    shot(page, "trace")
    page.go_back()
    page.locator(f"tr[data-task='{task.task_id}'] button", has_text="Revoke").click()
    expect(page.locator(".flash")).to_contain_text(f"Task {task.task_id} revoked.")
    assert server.task_state(task.task_id)["state"] == "revoked"
    with pytest.raises((CredentialRefused, Denied)):
        task.decide("call", "search_kb", {"q": "more"})


def test_policies_page_and_reload_for_admins(page: Page, server: Any) -> None:
    sign_in(page, server.url, server.admin_token)
    page.click("nav >> text=Policies")
    expect(page.locator("main")).to_contain_text("40-approval.cedar")
    page.click("text=Reload policies")
    expect(page.locator(".flash")).to_contain_text("policies loaded")
    expect(page.locator("dd.ok")).to_contain_text("policies loaded")
    shot(page, "policies")


def test_owner_cannot_reload_policies(page: Page, server: Any, owner_token: str) -> None:
    sign_in(page, server.url, owner_token)
    page.goto(f"{server.url}/console/policies")
    assert page.locator("text=Reload policies").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    r = page.request.post(f"{server.url}/console/policies/reload", form={"csrf": csrf or ""})
    assert r.status == 403


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin's page that posts a form to the console as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><form id=f method=post action='" + self.target + "'>"
            "<input name=csrf value=guess><input name=reason value=pwned></form>"
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_csrf_is_refused(page: Page, server: Any, register: Any, owner_token: str) -> None:
    r = register("call:search_kb")
    sign_in(page, server.url, owner_token)
    # A form post from the console's own origin without the session's token.
    res = page.request.post(f"{server.url}/console/agents/{r.agent_id}/suspend", form={"csrf": "guess"})
    assert res.status == 403 and "CSRF" in res.text()
    # A request with the right token but another site's Origin.
    page.goto(f"{server.url}/console/agents")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
    res = page.request.post(f"{server.url}/console/agents/{r.agent_id}/suspend", form={"csrf": csrf},
                            headers={"Origin": "http://evil.example"})  # fmt: skip
    assert res.status == 403
    # A real cross-site page in the same browser: the SameSite=Strict cookie is not sent.
    _Attacker.target = f"{server.url}/console/agents/{r.agent_id}/suspend"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        # `localhost` vs `127.0.0.1`: a different site for the browser.
        page.goto(f"http://localhost:{srv.server_address[1]}/")
        # The form did post: the browser is on the console's answer, sent without the cookie.
        page.wait_for_url(_Attacker.target)
        expect(page.locator("body")).to_contain_text("sign in again")
    finally:
        srv.shutdown()
    agent = server.admin("GET", f"/admin/v1/agents/{r.agent_id}")
    assert agent["status"] == "active"
    # A session id that does not exist signs nobody in.
    res = httpx2.post(f"{server.url}/console/agents/{r.agent_id}/suspend", data={"csrf": csrf},
                      headers={"Cookie": "mandate_console=forged"})  # fmt: skip
    assert res.status_code == 401


def test_agents_page_lists_live_leases(page: Page, server: Any, register: Any, owner_token: str) -> None:
    r = register("read:article:1")
    task = r.agent.open_task(intent="look up article 1", access=["read:article:1"], ttl=300)
    task.credential("kb_token")
    sign_in(page, server.url, owner_token)
    page.click("nav >> text=Agents")
    expect(page.locator(f"tr[data-agent='{r.agent_id}'] .leases")).to_have_text("kb_token (jwt)")
    task.complete()
    # Revoked with the task: gone from the page at the next load.
    for _ in range(100):
        page.reload()
        if page.locator(f"tr[data-agent='{r.agent_id}'] .leases").inner_text() == "-":
            break
        page.wait_for_timeout(50)
    expect(page.locator(f"tr[data-agent='{r.agent_id}'] .leases")).to_have_text("-")
