"""HTTP to the broker: bounded reads, one error mapping, sync and async clients.

The async client is kept per event loop: an ``httpx2.AsyncClient`` holds connections tied to
the loop that opened them, and frameworks run tools on loops of their own.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2

from ._errors import (
    BadRequest,
    ClientRefused,
    CredentialRefused,
    MandateError,
    ProtocolError,
    TaskRefused,
    Unavailable,
)

#: Largest answer read from the broker.
MAX_RESPONSE_BYTES = 1024 * 1024
#: Default timeout of one request, in seconds.
DEFAULT_TIMEOUT = 10.0

USER_AGENT = "mandate-agent-python"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str] = field(repr=False)
    # Never shown: a token response carries the credential.
    body: bytes = field(repr=False)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ProtocolError(
                f"the server answered {self.status} with a body that is not JSON", status=self.status
            ) from None


def encode_json(value: Any) -> bytes:
    """Compact JSON, refusing NaN and infinities (the server's JSON has neither)."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        from ._errors import ConfigurationError

        raise ConfigurationError(f"cannot send this as JSON: {e}") from None


def _short(s: str, n: int = 500) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def error_from(answer: Answer, where: str) -> MandateError:
    """The typed error for a non-2xx answer of the broker."""
    status = answer.status
    code: str | None = None
    desc = ""
    policies: list[str] = []
    task_id: str | None = None
    try:
        body = json.loads(answer.body) if answer.body else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            code = body["error"][:64]
        if isinstance(body.get("error_description"), str):
            desc = _short(body["error_description"])
        p = body.get("mandate_policies")
        if isinstance(p, list):
            policies = [str(x)[:128] for x in p[:64]]
        if isinstance(body.get("task_id"), str):
            task_id = body["task_id"][:128]
    reason = desc or (f"{where}: HTTP {status}" + (f" ({code})" if code else ""))
    kw: dict[str, Any] = {"policies": policies, "error": code, "status": status}
    if status == 401:
        if code in ("invalid_client", "unauthenticated"):
            return ClientRefused(reason, **kw)
        return CredentialRefused(reason, **kw)
    if code in ("invalid_scope", "invalid_authorization_details"):
        return TaskRefused(reason, task_id=task_id, **kw)
    if code in ("invalid_client", "unauthorized_client", "invalid_dpop_proof"):
        return ClientRefused(reason, **kw)
    if status in (400, 404, 409, 413, 422):
        return BadRequest(reason, **kw)
    if status == 403:
        return ClientRefused(reason, **kw)
    if status in (408, 429) or status >= 500:
        if not desc:
            reason = f"{where}: the server did not answer in time (HTTP {status})" if status == 408 else reason
        return Unavailable(reason, **kw)
    return ProtocolError(reason, **kw)


class Transport:
    """One broker's HTTP clients."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        verify: Any = True,
        client: httpx2.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._verify = verify
        self._client = client
        self._own_client = client is None
        self._lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def url(self, path: str) -> str:
        return self.base_url + path

    # Sync.

    def _sync(self) -> httpx2.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx2.Client(
                    verify=self._verify,
                    timeout=self.timeout,
                    follow_redirects=False,
                    headers={"User-Agent": USER_AGENT},
                )
            return self._client

    def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        hdrs, body = _prepare(content, form, headers)
        try:
            with self._sync().stream(
                method, self.url(path), content=body, headers=hdrs, timeout=timeout or self.timeout
            ) as r:
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE_BYTES:
                        raise ProtocolError(f"{path}: the answer is larger than {MAX_RESPONSE_BYTES} bytes")
                return Answer(r.status_code, dict(r.headers), bytes(data))
        except httpx2.TimeoutException:
            raise Unavailable(f"{path}: no answer from {self.base_url} in time") from None
        except httpx2.TransportError as e:
            raise Unavailable(f"{path}: cannot reach {self.base_url}: {_short(str(e), 200)}") from None

    # Async.

    def _aclient(self) -> httpx2.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            c = self._async.get(loop)
            if c is None:
                c = httpx2.AsyncClient(
                    verify=self._verify,
                    timeout=self.timeout,
                    follow_redirects=False,
                    headers={"User-Agent": USER_AGENT},
                )
                self._async[loop] = c
            return c

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        hdrs, body = _prepare(content, form, headers)
        try:
            async with self._aclient().stream(
                method, self.url(path), content=body, headers=hdrs, timeout=timeout or self.timeout
            ) as r:
                data = bytearray()
                async for chunk in r.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE_BYTES:
                        raise ProtocolError(f"{path}: the answer is larger than {MAX_RESPONSE_BYTES} bytes")
                return Answer(r.status_code, dict(r.headers), bytes(data))
        except httpx2.TimeoutException:
            raise Unavailable(f"{path}: no answer from {self.base_url} in time") from None
        except httpx2.TransportError as e:
            raise Unavailable(f"{path}: cannot reach {self.base_url}: {_short(str(e), 200)}") from None

    async def aclose_current(self) -> None:
        """Closes the async client of the running loop, if any."""
        loop = asyncio.get_running_loop()
        with self._lock:
            c = self._async.pop(loop, None)
        if c is not None:
            await c.aclose()

    def close(self) -> None:
        """Closes the sync client (if this transport made it). Async clients close with their
        loop, or with :meth:`aclose_current`."""
        with self._lock:
            c, self._client = self._client, None
        if c is not None and self._own_client:
            c.close()


def _prepare(
    content: bytes | None, form: Mapping[str, str] | None, headers: Mapping[str, str] | None
) -> tuple[dict[str, str], bytes | None]:
    hdrs = {"Accept": "application/json"}
    body = content
    if form is not None:
        from urllib.parse import urlencode

        body = urlencode(form).encode("ascii")
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    elif content is not None:
        hdrs["Content-Type"] = "application/json"
    if headers:
        hdrs.update(headers)
    return hdrs, body
