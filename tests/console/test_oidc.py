"""Console sign-in with a real OpenID provider (oidc-provider-mock, run locally): an owner and an
administrator sign in through the provider's page in Chromium; unverified and unknown addresses,
and a callback that this browser did not start, are refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import _sdk, shot
from playwright.sync_api import Browser, Page, expect

REPO = Path(__file__).resolve().parents[2]
PROVIDER = REPO / ".test-deps" / "oidc-venv" / "bin" / "oidc-provider-mock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    if not PROVIDER.exists():
        pytest.exit("no OpenID provider: run scripts/setup-test-deps", returncode=4)
    port = free_port()
    users = [
        {"sub": "alice", "email": "alice@example.com", "email_verified": True},
        {"sub": "root", "email": "root@example.com", "email_verified": True},
        {"sub": "eve", "email": "alice@example.com", "email_verified": False},
        {"sub": "mallory", "email": "mallory@example.com", "email_verified": True},
    ]
    args = [str(PROVIDER), "--port", str(port), "--require-nonce"]
    for u in users:
        args += ["--user-claims", json.dumps(u)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/.well-known/openid-configuration", proc, "oidc-provider-mock")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def mandate(provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("oidc")
    port = free_port()
    config = tmp / "mandate.toml"
    config.write_text(
        "[console.oidc]\n"
        f'issuer = "{provider}"\n'
        'client_id = "mandate-console"\n'
        'admins = ["root@example.com"]\n'
    )
    proc = subprocess.Popen(
        [str(_sdk.mandate_bin()), "serve", "--config", str(config), "--data-dir", str(tmp / "data"),
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp / "log").open("wb"),
        env={**os.environ, "MANDATE_LOG": "warn", "MANDATE_OIDC_CLIENT_SECRET": "not-so-secret"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, "mandate serve")
        token = (tmp / "data" / "admin.token").read_text().strip()
        r = httpx2.post(f"{url}/admin/v1/owners", json={"id": "alice@example.com"},
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 201, r.text
        yield {"url": url, "token": token}
    finally:
        proc.terminate()
        proc.wait(10)


def sign_in_as(page: Page, url: str, sub: str) -> None:
    page.goto(f"{url}/console/login")
    page.click("text=Sign in with")
    # The provider's own page: pick the user.
    page.click(f"button[name=sub][value='{sub}']")


def test_owner_signs_in_with_the_provider(page: Page, mandate: dict[str, Any]) -> None:
    sign_in_as(page, mandate["url"], "alice")
    page.wait_for_url("**/console/approvals")
    expect(page.locator(".who")).to_have_text("alice@example.com (owner)")
    cookie = next(c for c in page.context.cookies() if c["name"] == "mandate_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # The owner cannot reload policies; an owner session is an owner's, not an admin's.
    page.goto(f"{mandate['url']}/console/policies")
    assert page.locator("text=Reload policies").count() == 0
    # Removing the owner ends the session at its next request.
    r = httpx2.delete(f"{mandate['url']}/admin/v1/owners/alice@example.com",
                      headers={"Authorization": f"Bearer {mandate['token']}"})  # fmt: skip
    assert r.status_code == 200, r.text
    page.goto(f"{mandate['url']}/console/agents")
    assert page.url.endswith("/console/login")
    httpx2.post(f"{mandate['url']}/admin/v1/owners", json={"id": "alice@example.com"},
                headers={"Authorization": f"Bearer {mandate['token']}"})  # fmt: skip


def test_admin_signs_in_with_the_provider(page: Page, mandate: dict[str, Any]) -> None:
    sign_in_as(page, mandate["url"], "root")
    page.wait_for_url("**/console/approvals")
    expect(page.locator(".who")).to_have_text("root@example.com (admin)")
    page.goto(f"{mandate['url']}/console/policies")
    expect(page.locator("text=Reload policies")).to_be_visible()


@pytest.mark.parametrize(("sub", "why"), [("eve", "has not verified"), ("mallory", "neither an owner")])
def test_unverified_or_unknown_addresses_are_refused(page: Page, mandate: dict[str, Any], sub: str, why: str) -> None:
    sign_in_as(page, mandate["url"], sub)
    expect(page.locator(".error")).to_contain_text(why)
    assert not [c for c in page.context.cookies() if c["name"] == "mandate_console"]
    if sub == "mallory":
        shot(page, "sign-in-refused")


def test_a_callback_this_browser_did_not_start_is_refused(browser: Browser, mandate: dict[str, Any]) -> None:
    # One browser starts a sign-in and stops at the provider; another opens the callback with
    # its state (a login-CSRF attempt): refused, and no session.
    a = browser.new_context()
    pa = a.new_page()
    pa.goto(f"{mandate['url']}/console/login")
    pa.click("text=Sign in with")
    state = dict(p.split("=", 1) for p in pa.url.split("?", 1)[1].split("&"))["state"]
    b = browser.new_context()
    pb = b.new_page()
    pb.goto(f"{mandate['url']}/console/oidc/callback?code=x&state={state}")
    expect(pb.locator(".error")).to_contain_text("not started in this browser")
    assert not [c for c in b.cookies() if c["name"] == "mandate_console"]
    a.close()
    b.close()
