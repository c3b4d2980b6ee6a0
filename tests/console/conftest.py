"""The console's browser tests: a real Mandate server (the SDK tests' fixtures: `server`,
`register`) and Debian's Chromium driven by Playwright for Python.

Set MANDATE_SCREENSHOTS to a directory to keep a screenshot of each page there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

_SDK_TESTS = Path(__file__).resolve().parents[2] / "sdk" / "python" / "tests"
_spec = importlib.util.spec_from_file_location("mandate_sdk_conftest", _SDK_TESTS / "conftest.py")
assert _spec and _spec.loader
_sdk = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _sdk
_spec.loader.exec_module(_sdk)

server = _sdk.server
register = _sdk.register
OWNER = _sdk.OWNER


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.exit("no Chromium: run scripts/setup-test-deps", returncode=4)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    yield pg
    ctx.close()


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(f"{url}/console")
    assert page.url.endswith("/console/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/approvals**")


def shot(page: Page, name: str) -> None:
    d = os.environ.get("MANDATE_SCREENSHOTS")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(d) / f"{name}.png"), full_page=True)


@pytest.fixture()
def owner_token(server: Any) -> str:
    return server.owner_token()
