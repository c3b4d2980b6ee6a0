"""``httpx2.Auth`` (or ``httpx.Auth``) for a task: its credential and a fresh DPoP proof on every
request, so any client built on httpx, the MCP SDK's Streamable HTTP client among them, reaches
the gateway as the task."""

from __future__ import annotations

import threading
from collections.abc import Generator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx2

if TYPE_CHECKING:
    from ._agent import Task

_classes: dict[str, type] = {}
_lock = threading.Lock()


def _auth_flow(self: Any, request: Any) -> Generator[Any, Any, None]:
    # The proof names the request's method and its URL without query or fragment (RFC 9449
    # section 4.2), and the hash of the credential (`ath`). Nothing is retried: a 401 means the
    # task ended or its key does not match, and a new proof would not change that.
    task: Task = self.task
    url = str(request.url.copy_with(query=None, fragment=None))
    for name, value in task.headers(request.method, url).items():
        request.headers[name] = value
    yield request


def _repr(self: Any) -> str:
    return f"MandateAuth(task={self.task.task_id!r})"


def _init(self: Any, task: Task) -> None:
    self.task = task


def auth_class(module: ModuleType) -> type:
    """The ``Auth`` subclass of ``module`` (``httpx2`` or ``httpx``), made once."""
    base = getattr(module, "Auth", None)
    if not isinstance(base, type):
        raise TypeError(f"{module.__name__} has no Auth class")
    key = module.__name__
    with _lock:
        cls = _classes.get(key)
        if cls is None:
            cls = type(
                "MandateAuth",
                (base,),
                {
                    "__init__": _init,
                    "auth_flow": _auth_flow,
                    "__repr__": _repr,
                    "requires_request_body": False,
                    "requires_response_body": False,
                    "__module__": __name__,
                    "__doc__": "A Mandate task's credential and DPoP proof on every request.",
                },
            )
            _classes[key] = cls
        return cls


def auth_for(task: Task, module: ModuleType | None = None) -> Any:
    return auth_class(module or httpx2)(task)


class MandateAuth(httpx2.Auth):
    """A task's credential (``Authorization: DPoP <token>``, or ``Bearer`` when unbound) and a
    fresh DPoP proof (``htm``, ``htu``, ``iat``, ``jti``, ``ath``) on every request."""

    requires_request_body = False
    requires_response_body = False

    def __init__(self, task: Task) -> None:
        self.task = task

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        yield from _auth_flow(self, request)

    def __repr__(self) -> str:
        return _repr(self)


_classes["httpx2"] = MandateAuth
