"""What the server answers, as typed values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import ProtocolError

DecisionKind = Literal["allow", "deny", "needs_approval"]
TargetKind = Literal["tool", "resource"]


def _str(obj: Mapping[str, Any], name: str, *, optional: bool = False, limit: int = 64 * 1024) -> Any:
    v = obj.get(name)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise ProtocolError(f"the server's answer has no valid `{name}`")
    return v


def _strs(obj: Mapping[str, Any], name: str) -> tuple[str, ...]:
    v = obj.get(name, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ProtocolError(f"the server's answer has no valid `{name}`")
    return tuple(v)


@dataclass(frozen=True)
class Decision:
    """The answer to one decision request (``POST /v1/decide``)."""

    decision: DecisionKind
    task_id: str
    agent: str
    policies: tuple[str, ...]
    reason: str
    approval_id: str | None = None
    flow_added: Mapping[str, Any] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @classmethod
    def parse(cls, body: Any) -> Decision:
        if not isinstance(body, dict):
            raise ProtocolError("the decision is not a JSON object")
        d = body.get("decision")
        if d not in ("allow", "deny", "needs_approval"):
            raise ProtocolError("the decision names no known outcome")
        flow = body.get("flow_added") or {}
        if not isinstance(flow, dict):
            raise ProtocolError("the decision's `flow_added` is not an object")
        return cls(
            decision=d,
            task_id=_str(body, "task_id"),
            agent=_str(body, "agent"),
            policies=_strs(body, "policies"),
            reason=_str(body, "reason"),
            approval_id=_str(body, "approval_id", optional=True, limit=64),
            flow_added=flow,
        )


@dataclass(frozen=True)
class ReportResult:
    """The task's flow labels after a report (``POST /v1/report``)."""

    task_id: str
    added: Mapping[str, Any]
    data_read: tuple[str, ...]
    remembered: int
    #: Whether this client cut the output to fit the request size limit before sending it.
    truncated: bool = False

    @classmethod
    def parse(cls, body: Any, truncated: bool = False) -> ReportResult:
        if not isinstance(body, dict):
            raise ProtocolError("the report answer is not a JSON object")
        added = body.get("added") or {}
        remembered = body.get("remembered", 0)
        if not isinstance(added, dict) or not isinstance(remembered, int):
            raise ProtocolError("the report answer is malformed")
        return cls(
            task_id=_str(body, "task_id"),
            added=added,
            data_read=_strs(body, "data_read"),
            remembered=remembered,
            truncated=truncated,
        )


@dataclass(frozen=True)
class DownstreamCredential:
    """A per-task downstream credential (``POST /v1/credentials/NAME``): a PostgreSQL role, an
    SSH certificate or a JWT for an API, revoked by Mandate when the task ends."""

    credential: str
    #: ``postgres``, ``ssh`` or ``jwt``.
    kind: str
    lease_id: str
    #: Milliseconds since the epoch; never after the task's expiry.
    expires_at: int
    grants: tuple[str, ...]
    #: The kind's own fields: ``username``, ``password``, ``url`` (postgres); ``private_key``,
    #: ``public_key``, ``certificate``, ``principals`` (ssh); ``token``, ``token_type`` (jwt).
    fields: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def __repr__(self) -> str:
        # The fields hold secrets: never print them.
        return f"DownstreamCredential(credential={self.credential!r}, kind={self.kind!r}, lease_id={self.lease_id!r})"

    @classmethod
    def parse(cls, body: Any) -> DownstreamCredential:
        if not isinstance(body, dict):
            raise ProtocolError("the credential answer is not a JSON object")
        expires = body.get("expires_at")
        if not isinstance(expires, int):
            raise ProtocolError("the credential answer has no `expires_at`")
        known = {"credential", "kind", "lease_id", "expires_at", "grants"}
        return cls(
            credential=_str(body, "credential"),
            kind=_str(body, "kind"),
            lease_id=_str(body, "lease_id"),
            expires_at=expires,
            grants=_strs(body, "grants"),
            fields={k: v for k, v in body.items() if k not in known},
        )


@dataclass(frozen=True)
class Grant:
    """A token response (RFC 6749 section 5.1, RFC 9396 section 7). Internal."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str
    authorization_details: Any
    task_id: str
    issued_token_type: str | None

    @classmethod
    def parse(cls, body: Any) -> Grant:
        if not isinstance(body, dict):
            raise ProtocolError("the token response is not a JSON object")
        tt = body.get("token_type")
        if not isinstance(tt, str) or tt.lower() not in ("dpop", "bearer"):
            raise ProtocolError("the token response names no known `token_type`")
        exp = body.get("expires_in")
        if not isinstance(exp, int) or isinstance(exp, bool) or exp < 0:
            raise ProtocolError("the token response has no valid `expires_in`")
        return cls(
            access_token=_str(body, "access_token", limit=16 * 1024),
            token_type="DPoP" if tt.lower() == "dpop" else "Bearer",
            expires_in=exp,
            scope=_str(body, "scope"),
            authorization_details=body.get("authorization_details"),
            task_id=_str(body, "task_id", limit=128),
            issued_token_type=_str(body, "issued_token_type", optional=True, limit=128),
        )
