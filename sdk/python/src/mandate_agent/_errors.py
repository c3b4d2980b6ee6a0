"""Typed errors. Each carries what the server said: its reason, the deciding policies, and the
OAuth or decision error code. None of them ever holds a credential or a key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import Decision


class MandateError(Exception):
    """Base of every error of this package.

    Attributes:
        reason: what the server (or this client) said, one line.
        policies: the ids of the deciding policies, when the server named them.
        error: the OAuth or API error code (``invalid_token``, ``invalid_scope``…), if any.
        status: the HTTP status of the answer, if there was one.
    """

    def __init__(
        self,
        reason: str,
        *,
        policies: tuple[str, ...] | list[str] = (),
        error: str | None = None,
        status: int | None = None,
    ) -> None:
        self.reason = reason
        self.policies: tuple[str, ...] = tuple(policies)
        self.error = error
        self.status = status
        super().__init__(reason)

    def __str__(self) -> str:
        s = self.reason
        if self.policies:
            s += f" (policies: {', '.join(self.policies)})"
        return s


class ConfigurationError(MandateError, ValueError):
    """Bad input on this side: an unreadable key file, a malformed argument, a value too large."""


class Denied(MandateError):
    """The action was denied by policy. ``decision`` holds the whole answer."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.reason, policies=decision.policies, error="deny", status=200)


class NeedsApproval(MandateError):
    """The action needs a person's approval. ``approval_id`` names the request; a person grants
    it (``mandate approval grant <id>``), then :meth:`Task.wait_for_approval` (or the same call
    again) lets the call through once."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.approval_id: str = decision.approval_id or ""
        super().__init__(decision.reason, policies=decision.policies, error="needs_approval", status=200)


class CredentialRefused(MandateError):
    """The task credential or its DPoP proof was refused (HTTP 401): the task ended (completed,
    revoked, expired, suspended), or the proof was missing or made with another key."""


class TaskRefused(MandateError):
    """The token endpoint refused to open the task (or the sub-task): outside the agent's
    envelope, refused by an admission policy, malformed ``authorization_details``…
    ``task_id`` names the refused task when the server recorded one."""

    def __init__(self, reason: str, *, task_id: str | None = None, **kw: Any) -> None:
        self.task_id = task_id
        super().__init__(reason, **kw)


class ClientRefused(MandateError):
    """The agent itself was refused: its client assertion (unknown agent, wrong key, replayed
    ``jti``), its DPoP proof at the token endpoint, or its state (suspended)."""


class BadRequest(MandateError):
    """The server found the request malformed (HTTP 400 or 413)."""


class Unavailable(MandateError):
    """The server could not answer (503, a timeout, a connection failure); nothing was granted
    or decided."""


class ProtocolError(MandateError):
    """The server's answer was not what the protocol says (wrong shape, too large)."""
