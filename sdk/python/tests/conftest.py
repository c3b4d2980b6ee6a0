"""A real Mandate server (with its gateway fronting a tiny MCP server) for the whole test run.

The binary is `$MANDATE_BIN`, else `<repo>/target/debug/mandate` (`cargo build -p mandate`).
Agents are registered through the admin API with the bootstrap token; their keys are made by
`mandate agent keygen`, so the SDK reads exactly what the CLI writes.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mandate_agent import Agent, AgentKey

HERE = Path(__file__).resolve().parent
SDK = HERE.parent
REPO = SDK.parent.parent
OWNER = "owner@example.com"

CATALOG_EXTRA = """

# Added by the SDK tests.
[tools.http_post]
side_effect = "write"
egress = "external"

[tools.send_email]
side_effect = "write"
egress = "external"
destinations = ["to"]
"""


def mandate_bin() -> Path:
    p = Path(os.environ.get("MANDATE_BIN") or REPO / "target" / "debug" / "mandate")
    if not p.is_file():
        pytest.exit(f"no Mandate binary at {p}: run `cargo build -p mandate` or set MANDATE_BIN", returncode=4)
    return p


@dataclass
class Server:
    url: str
    admin_token: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def admin(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        r = httpx2.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=10,
        )
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def task_state(self, task_id: str) -> dict[str, Any]:
        return self.admin("GET", f"/admin/v1/tasks/{task_id}")

    def owner_token(self) -> str:
        return self.admin("POST", f"/admin/v1/owners/{OWNER}/tokens", {"name": "tests", "days": 1})["token"]


class _Api(http.server.BaseHTTPRequestHandler):
    """The HTTP API the gateway's proxy fronts as `kb`: echoes what reached it."""

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "authorization": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _api() -> str:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}/api"


def _start(tmp: Path) -> Server:
    data = tmp / "data"
    policies = tmp / "policies"
    shutil.copytree(REPO / "policies", policies)
    with (policies / "catalog.toml").open("a") as f:
        f.write(CATALOG_EXTRA)
    config = tmp / "mandate.toml"
    config.write_text(
        "[gateway]\n"
        "call_timeout_seconds = 20\n"
        "[[gateway.mcp]]\n"
        'name = "notes"\n'
        f"command = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(HERE / 'mcp_notes.py'))}]\n"
        "[[credentials]]\n"
        'name = "kb_token"\n'
        'kind = "jwt"\n'
        'audience = "https://kb.example"\n'
        "[[credentials.grants]]\n"
        'scope = "read:article:1"\n'
        "[[gateway.http]]\n"
        'name = "kb"\n'
        f"url = {json.dumps(_api())}\n"
        "[[gateway.http.routes]]\n"
        'method = "GET"\n'
        'path = "/articles/{id}"\n'
        'action = "read"\n'
        'resource = "article:{id}"\n'
    )
    log = tmp / "mandate.log"
    proc = subprocess.Popen(
        [str(mandate_bin()), "serve", "--config", str(config), "--data-dir", str(data),
         "--policy-dir", str(policies), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        stdin=subprocess.DEVNULL,
        env={**os.environ, "MANDATE_LOG": "warn"},
    )  # fmt: skip
    assert proc.stdout is not None
    found: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("mandate listening on ") and not found:
                found.append(line.rsplit(" ", 1)[-1])

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 30
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mandate serve did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.02)
    token = (data / "admin.token").read_text().strip()
    server = Server(found[0], token, data, log, proc)
    server.admin("POST", "/admin/v1/owners", {"id": OWNER})
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = _start(tmp_path_factory.mktemp("mandate"))
    try:
        yield s
    finally:
        s.proc.terminate()
        try:
            s.proc.wait(10)
        except subprocess.TimeoutExpired:
            s.proc.kill()


_ids = itertools.count()


@dataclass
class Registered:
    agent_id: str
    key_path: Path
    agent: Agent

    @property
    def key(self) -> AgentKey:
        return self.agent.key


@pytest.fixture(scope="session")
def register(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Any:
    keys = tmp_path_factory.mktemp("keys")

    def make(envelope: str, tier: str = "low", name: str | None = None) -> Registered:
        agent_id = name or f"bot-{next(_ids)}"
        key_path = keys / f"{agent_id}.pem"
        out = subprocess.run(
            [str(mandate_bin()), "agent", "keygen", "--out", str(key_path)],
            capture_output=True, check=True, text=True,
        )  # fmt: skip
        public = out.stdout.strip()
        server.admin("POST", "/admin/v1/agents", {
            "id": agent_id, "owner": OWNER, "tier": tier, "envelope": envelope,
            "attestations": [{"type": "private_key_jwt", "public_key": public}],
        })  # fmt: skip
        agent = Agent.from_key_file(server.url, agent_id, key_path)
        assert agent.key.public_key == public
        return Registered(agent_id, key_path, agent)

    return make
