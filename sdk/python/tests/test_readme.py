"""The README's snippets are the files in examples/, verbatim, and each runs as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from conftest import SDK

EXAMPLES = ["quickstart.py", "pydantic_ai_agent.py", "mcp_gateway.py"]


def readme_blocks(readme: Path = SDK / "README.md", prefix: str = "") -> dict[str, str]:
    text = readme.read_text()
    pattern = rf"<!-- begin {re.escape(prefix)}(examples/[\w.]+) -->\n```python\n(.*?)```\n<!-- end {re.escape(prefix)}\1 -->"
    return {name: body for name, body in re.findall(pattern, text, flags=re.DOTALL)}


def test_the_main_readme_shows_the_same_agents():
    blocks = readme_blocks(SDK.parent.parent / "README.md", "sdk/python/")
    assert sorted(blocks) == ["examples/pydantic_ai_agent.py", "examples/quickstart.py"]
    for name, body in blocks.items():
        assert body == (SDK / name).read_text(), f"README block {name} differs from the file"


def test_readme_includes_the_examples_verbatim():
    blocks = readme_blocks()
    assert sorted(blocks) == sorted(f"examples/{e}" for e in EXAMPLES)
    for name, body in blocks.items():
        assert body == (SDK / name).read_text(), f"README block {name} differs from the file"
    # The two promised snippets stay short.
    for e in ("quickstart.py", "pydantic_ai_agent.py"):
        lines = [line for line in (SDK / "examples" / e).read_text().splitlines() if line.strip()]
        assert len(lines) <= 15, e


@pytest.fixture(scope="module")
def workdir(server, register, tmp_path_factory):
    r = register("read:tickets call:search_kb call:notes.search", name="support-bot")
    d = tmp_path_factory.mktemp("readme")
    shutil.copy(r.key_path, d / "support-bot.pem")
    (d / "support-bot.pem").chmod(0o600)
    # The gateway's upstream must be up for the MCP example: its tools appear in the metadata.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = httpx2.get(server.url + "/.well-known/oauth-protected-resource/mcp").json()
        if "call:notes.search" in meta["scopes_supported"]:
            break
        time.sleep(0.2)
    return d


def run(example: str, workdir: Path, server, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, str(SDK / "examples" / example)],
        cwd=workdir, capture_output=True, text=True, timeout=60,
        env={**os.environ, "MANDATE_URL": server.url, **env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_quickstart_runs(server, workdir):
    out = run("quickstart.py", workdir, server).splitlines()
    assert out[0] == "allowed by policy `act-within-task-scope`"
    assert out[1].startswith("refused: `call` on `send_email` is outside the scope")
    assert out[1].endswith("('mandate:task-scope',)")


def test_pydantic_ai_example_runs(server, workdir):
    # pydantic-ai's own `test` model calls every tool; no network, no LLM.
    answer = json.loads(run("pydantic_ai_agent.py", workdir, server, MODEL="test"))
    assert answer["search_kb"].startswith("KB: unplug the printer")
    assert answer["close_ticket"].startswith("Mandate denied this call")


def test_mcp_example_runs(server, workdir):
    out = run("mcp_gateway.py", workdir, server).splitlines()
    assert out == ["['notes.search']", "n1"]
