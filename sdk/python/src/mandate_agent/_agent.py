"""Agents, their tasks, and the calls a task makes."""

from __future__ import annotations

import collections
import datetime as _dt
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any, Union

import httpx2
import jwt

from . import _protocol as P
from ._errors import (
    ConfigurationError,
    Denied,
    MandateError,
    NeedsApproval,
    ProtocolError,
)
from ._http import DEFAULT_TIMEOUT, Answer, Transport, error_from
from ._keys import AgentKey, PathLike, load_key, strip_query
from ._models import Decision, DownstreamCredential, Grant, ReportResult

DpopChoice = Union[bool, AgentKey]

#: Most calls waiting for approval remembered per task (for :meth:`Task.wait_for_approval`).
MAX_PENDING_APPROVALS = 64


def _check_agent_id(agent_id: str) -> str:
    if not isinstance(agent_id, str) or not 0 < len(agent_id) <= 128 or any(c.isspace() for c in agent_id):
        raise ConfigurationError("an agent id is 1 to 128 characters without spaces")
    return agent_id


class Agent:
    """A registered agent: its id, its key, and the broker it talks to.

    ``url`` is the broker's public URL (its token issuer, ``server.public_url``). Requests go to
    ``url``; the issuer named in the broker's metadata is what assertions and DPoP proofs are
    addressed to.
    """

    def __init__(
        self,
        url: str,
        agent_id: str,
        key: AgentKey,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        verify: Any = True,
        http_client: httpx2.Client | None = None,
        _transport: Transport | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError("the broker URL must start with http:// or https://")
        if not isinstance(key, AgentKey):
            raise ConfigurationError("key must be an AgentKey (see Agent.from_key_file)")
        self.agent_id = _check_agent_id(agent_id)
        self.key = key
        self._http = _transport or Transport(url, timeout=timeout, verify=verify, client=http_client)
        self._issuer: str | None = None
        self._issuer_lock = threading.Lock()

    @classmethod
    def from_key_file(cls, url: str, agent_id: str, key_path: PathLike, **kwargs: Any) -> Agent:
        """An agent whose key is the file ``mandate agent keygen --out FILE`` wrote."""
        return cls(url, agent_id, AgentKey.from_file(key_path), **kwargs)

    @property
    def url(self) -> str:
        return self._http.base_url

    def __repr__(self) -> str:
        return f"Agent({self.agent_id!r}, url={self.url!r})"

    def _sibling(self, agent_id: str, key: AgentKey) -> Agent:
        """Another agent of the same broker, sharing this one's connections."""
        a = Agent(self.url, agent_id, key, _transport=self._http)
        a._issuer = self._issuer
        return a

    # The issuer: what assertions (`aud`) and DPoP proofs (`htu`) are addressed to.

    def _set_issuer(self, answer: Answer) -> str:
        if answer.status != 200:
            raise error_from(answer, "metadata")
        meta = answer.json()
        iss = meta.get("issuer") if isinstance(meta, dict) else None
        if not isinstance(iss, str) or not iss.startswith(("http://", "https://")) or len(iss) > 2048:
            raise ProtocolError("the broker's metadata names no valid issuer")
        with self._issuer_lock:
            self._issuer = iss.rstrip("/")
        return self._issuer

    def issuer(self) -> str:
        """The broker's issuer URL, from its RFC 8414 metadata (fetched once)."""
        if self._issuer is None:
            self._set_issuer(self._http.request("GET", P.METADATA_PATH))
        assert self._issuer is not None
        return self._issuer

    async def aissuer(self) -> str:
        if self._issuer is None:
            self._set_issuer(await self._http.arequest("GET", P.METADATA_PATH))
        assert self._issuer is not None
        return self._issuer

    def _assertion(self, issuer: str) -> str:
        return self.key.assertion(self.agent_id, issuer + P.TOKEN_PATH)

    def _client_auth(self, issuer: str) -> dict[str, str]:
        return {
            "client_id": self.agent_id,
            "client_assertion_type": P.JWT_BEARER,
            "client_assertion": self._assertion(issuer),
        }

    # Opening tasks.

    def task(
        self,
        intent: str,
        access: Iterable[P.AccessEntry],
        ttl: float | _dt.timedelta | None = None,
        values: Sequence[str] | None = None,
        intent_class: str | None = None,
        *,
        budget: Mapping[str, int] | None = None,
        dpop: DpopChoice = True,
    ) -> TaskOpener:
        """A task to open: use it as ``with agent.task(...) as task:`` (or ``async with``).

        The task is opened on entry (``POST /oauth/token``, client credentials with a
        ``private_key_jwt`` assertion, the task in ``authorization_details``, and a DPoP proof
        binding the credential to ``dpop``: the agent's own key by default, another
        :class:`AgentKey`, or ``False`` for an unbound Bearer credential). It is completed on
        exit (``POST /oauth/revoke``), also when the block raises. Nothing is renewed: when the
        task expires, its calls raise :class:`CredentialRefused`.
        """
        details = P.task_details(
            intent=intent, access=access, ttl=ttl, values=values, intent_class=intent_class, budget=budget
        )
        return TaskOpener(self, details, dpop, parent=None)

    def open_task(self, *args: Any, **kwargs: Any) -> Task:
        """Opens a task now (see :meth:`task`); complete it with :meth:`Task.complete`."""
        return self.task(*args, **kwargs).open()

    async def aopen_task(self, *args: Any, **kwargs: Any) -> Task:
        return await self.task(*args, **kwargs).aopen()

    def close(self) -> None:
        """Closes this agent's HTTP connections."""
        self._http.close()

    async def aclose(self) -> None:
        """Closes this agent's connections, those of the running event loop included."""
        await self._http.aclose_current()
        self._http.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dpop_key(agent: Agent, dpop: DpopChoice) -> AgentKey | None:
    if dpop is True:
        return agent.key
    if dpop is False:
        return None
    if isinstance(dpop, AgentKey):
        return dpop
    raise ConfigurationError("dpop is True (the agent's key), False (unbound), or an AgentKey")


class TaskOpener:
    """A task not yet opened. Enter it (``with`` / ``async with``), or call :meth:`open`."""

    def __init__(self, agent: Agent, details: str, dpop: DpopChoice, parent: Task | None) -> None:
        self._agent = agent
        self._details = details
        self._dpop = _dpop_key(agent, dpop)
        self._parent = parent
        self._task: Task | None = None

    # The token request.

    def _form(self, issuer: str) -> tuple[dict[str, str], dict[str, str]]:
        token_url = issuer + P.TOKEN_PATH
        headers: dict[str, str] = {}
        if self._parent is None:
            form = {"grant_type": "client_credentials", **self._agent._client_auth(issuer)}
            if self._dpop is not None:
                headers["DPoP"] = self._dpop.dpop_proof("POST", token_url)
        else:
            # RFC 8693: the parent's credential as subject (with a proof of its key when it is
            # bound), the child's own assertion as actor; no client authentication.
            p = self._parent
            form = {
                "grant_type": P.TOKEN_EXCHANGE,
                "subject_token": p._grant.access_token,
                "subject_token_type": P.ACCESS_TOKEN_TYPE,
                "actor_token": self._agent._assertion(issuer),
                "actor_token_type": P.JWT_TOKEN_TYPE,
                "requested_token_type": P.ACCESS_TOKEN_TYPE,
            }
            if p._dpop is not None:
                headers["DPoP"] = p._dpop.dpop_proof("POST", token_url, p._grant.access_token)
            if self._dpop is not None:
                form["dpop_jkt"] = self._dpop.thumbprint
        form["authorization_details"] = self._details
        return form, headers

    def _made(self, answer: Answer, issuer: str) -> Task:
        if answer.status != 200:
            raise error_from(answer, "token request")
        grant = Grant.parse(answer.json())
        self._task = Task(self._agent, grant, _binding(grant, self._dpop, self._agent.key), issuer, self._parent)
        return self._task

    def open(self) -> Task:
        """Opens the task. Raises :class:`TaskRefused` with the server's reason and policies
        when it is not admitted."""
        if self._task is not None:
            raise ConfigurationError("this task was opened already")
        issuer = self._agent.issuer()
        form, headers = self._form(issuer)
        return self._made(self._agent._http.request("POST", P.TOKEN_PATH, form=form, headers=headers), issuer)

    async def aopen(self) -> Task:
        if self._task is not None:
            raise ConfigurationError("this task was opened already")
        issuer = await self._agent.aissuer()
        form, headers = self._form(issuer)
        return self._made(
            await self._agent._http.arequest("POST", P.TOKEN_PATH, form=form, headers=headers), issuer
        )

    def __enter__(self) -> Task:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = self._task
        if task is None:
            return
        if exc is None:
            task.complete()
            return
        try:
            task.complete()
        except Exception as e:  # the block's own exception is the one that matters
            exc.add_note(f"mandate: task {task.task_id} could not be completed: {e}")

    async def __aenter__(self) -> Task:
        return await self.aopen()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = self._task
        if task is None:
            return
        if exc is None:
            await task.acomplete()
            return
        try:
            await task.acomplete()
        except Exception as e:
            exc.add_note(f"mandate: task {task.task_id} could not be completed: {e}")


def _binding(grant: Grant, asked: AgentKey | None, own: AgentKey) -> AgentKey | None:
    """The key the credential is bound to (its ``cnf.jkt``), among the keys this client holds."""
    if grant.token_type != "DPoP":
        return None
    try:
        claims = jwt.decode(grant.access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise ProtocolError("the task credential is not a JWT") from None
    # Only to pick which of our keys signs the proofs; the server checks the binding.
    jkt = (claims.get("cnf") or {}).get("jkt") if isinstance(claims, dict) else None
    for k in (asked, own):
        if k is not None and k.thumbprint == jkt:
            return k
    raise ProtocolError("the task credential is bound to a key this client does not hold")


class Task:
    """An open task: its credential, and the calls it makes.

    The credential is :attr:`token`; it is never shown by ``repr``. Every call that names an
    action takes ``kind="tool"`` (the default) or ``kind="resource"``; a catalogued target must be
    named with its own kind.
    """

    def __init__(
        self, agent: Agent, grant: Grant, dpop: AgentKey | None, issuer: str, parent: Task | None
    ) -> None:
        self._agent = agent
        self._grant = grant
        self._dpop = dpop
        self._issuer = issuer
        self.parent = parent
        self.opened_at = time.time()
        self.expires_at = self.opened_at + grant.expires_in
        self._ended = False
        self._pending: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    # What the task is.

    @property
    def task_id(self) -> str:
        return self._grant.task_id

    @property
    def agent(self) -> Agent:
        return self._agent

    @property
    def agent_id(self) -> str:
        return self._agent.agent_id

    @property
    def token(self) -> str:
        """The task credential. Treat it as a secret; it dies with the task."""
        return self._grant.access_token

    @property
    def token_type(self) -> str:
        """``DPoP`` when the credential is bound to a key, else ``Bearer``."""
        return self._grant.token_type

    @property
    def bound(self) -> bool:
        return self._dpop is not None

    @property
    def dpop_key(self) -> AgentKey | None:
        """The key every request of this task is proven with, when its credential is bound."""
        return self._dpop

    @property
    def scope(self) -> str:
        """The granted scope, as ``action:target`` tokens."""
        return self._grant.scope

    @property
    def authorization_details(self) -> Any:
        """The granted task (RFC 9396), as the server described it."""
        return self._grant.authorization_details

    @property
    def ended(self) -> bool:
        """Whether this client completed the task."""
        return self._ended

    def __repr__(self) -> str:
        return f"Task({self.task_id!r}, agent={self.agent_id!r}, scope={self.scope!r}, token_type={self.token_type!r})"

    # Credentials on requests.

    def htu(self, url: str) -> str:
        """The DPoP ``htu`` for a request to ``url``: the broker addresses proofs to its issuer,
        so a URL under the agent's broker URL is named under the issuer."""
        base = self._agent.url
        if url.startswith(base) and (len(url) == len(base) or url[len(base)] in "/?#"):
            url = self._issuer + url[len(base) :]
        return strip_query(url)

    def headers(self, method: str, url: str) -> dict[str, str]:
        """``Authorization`` (and, when bound, a fresh ``DPoP`` proof) for one request to
        ``url`` with ``method``: for any HTTP client, e.g. to reach the gateway's ``/http/…``."""
        if self._dpop is None:
            return {"Authorization": f"Bearer {self.token}"}
        return {
            "Authorization": f"DPoP {self.token}",
            "DPoP": self._dpop.dpop_proof(method, self.htu(url), self.token),
        }

    def _auth_headers(self, path: str) -> dict[str, str]:
        return self.headers("POST", self._agent.url + path)

    def httpx_auth(self, *, module: ModuleType | None = None) -> Any:
        """An ``httpx2.Auth`` that puts this task's credential, with a fresh DPoP proof, on every
        request: ``httpx2.AsyncClient(auth=task.httpx_auth())``, e.g. for the MCP SDK's
        ``streamable_http_client`` against the gateway's ``/mcp``. Pass ``module=httpx`` for an
        ``httpx.Auth`` instead."""
        from ._auth import auth_for

        return auth_for(self, module)

    # Decisions.

    def _remember(self, d: Decision, call: dict[str, Any]) -> None:
        if d.decision == "needs_approval" and d.approval_id:
            with self._lock:
                self._pending[d.approval_id] = call
                self._pending.move_to_end(d.approval_id)
                while len(self._pending) > MAX_PENDING_APPROVALS:
                    self._pending.popitem(last=False)
        elif d.approval_id:
            with self._lock:
                self._pending.pop(d.approval_id, None)

    @staticmethod
    def _outcome(d: Decision, raise_on_deny: bool) -> Decision:
        if raise_on_deny:
            if d.decision == "deny":
                raise Denied(d)
            if d.decision == "needs_approval":
                raise NeedsApproval(d)
        return d

    def _decide_answer(self, answer: Answer, call: dict[str, Any], raise_on_deny: bool) -> Decision:
        if answer.status != 200:
            raise error_from(answer, "decision")
        d = Decision.parse(answer.json())
        self._remember(d, call)
        return self._outcome(d, raise_on_deny)

    @staticmethod
    def _call(
        action: str,
        target: str,
        arguments: Mapping[str, Any] | None,
        kind: str,
        context: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        return {"action": action, "target": target, "arguments": arguments, "kind": kind, "context": context}

    def decide(
        self,
        action: str,
        target: str,
        arguments: Mapping[str, Any] | None = None,
        kind: str = "tool",
        *,
        context: Mapping[str, Any] | None = None,
        approval_id: str | None = None,
        wait: int = 0,
        raise_on_deny: bool = True,
    ) -> Decision:
        """Asks whether this task may do ``action`` on ``target`` now (``POST /v1/decide``).

        Returns the :class:`Decision` when allowed. Raises :class:`Denied` or
        :class:`NeedsApproval` (with its ``approval_id``) otherwise, unless ``raise_on_deny`` is
        false; :class:`CredentialRefused` when the task's credential is refused. ``wait`` (seconds
        to wait for a person when the call needs approval) is capped at 25 per request, since the
        broker cuts requests at 30 s; :meth:`wait_for_approval` waits longer in steps.
        """
        call = self._call(action, target, arguments, kind, context)
        body = P.decide_body(
            action=action, target=target, kind=kind, arguments=arguments, context=context,
            approval_id=approval_id, wait=_wait(wait),
        )  # fmt: skip
        answer = self._agent._http.request(
            "POST", P.DECIDE_PATH, content=body, headers=self._auth_headers(P.DECIDE_PATH),
            timeout=self._agent._http.timeout + _wait(wait),
        )  # fmt: skip
        return self._decide_answer(answer, call, raise_on_deny)

    async def adecide(
        self,
        action: str,
        target: str,
        arguments: Mapping[str, Any] | None = None,
        kind: str = "tool",
        *,
        context: Mapping[str, Any] | None = None,
        approval_id: str | None = None,
        wait: int = 0,
        raise_on_deny: bool = True,
    ) -> Decision:
        """:meth:`decide`, asynchronously."""
        call = self._call(action, target, arguments, kind, context)
        body = P.decide_body(
            action=action, target=target, kind=kind, arguments=arguments, context=context,
            approval_id=approval_id, wait=_wait(wait),
        )  # fmt: skip
        answer = await self._agent._http.arequest(
            "POST", P.DECIDE_PATH, content=body, headers=self._auth_headers(P.DECIDE_PATH),
            timeout=self._agent._http.timeout + _wait(wait),
        )  # fmt: skip
        return self._decide_answer(answer, call, raise_on_deny)

    def _pending_call(self, approval: str | NeedsApproval) -> tuple[str, dict[str, Any]]:
        approval_id = approval.approval_id if isinstance(approval, NeedsApproval) else approval
        with self._lock:
            call = self._pending.get(approval_id)
        if call is None:
            raise ConfigurationError(
                f"approval `{str(approval_id)[:64]}` was not asked for by this task's decide(); "
                "call decide() again with the same call and approval_id=…"
            )
        return approval_id, call

    def wait_for_approval(self, approval: str | NeedsApproval, timeout: float = 60.0) -> Decision:
        """Waits up to ``timeout`` seconds for a person to decide ``approval`` (an id, or the
        :class:`NeedsApproval` raised by :meth:`decide`), then makes the call's decision again
        with it (``approval_id`` and ``wait``). Returns the :class:`Decision` once granted
        (the grant is spent on this decision); raises :class:`Denied` if refused,
        :class:`NeedsApproval` if still pending at the deadline."""
        approval_id, call = self._pending_call(approval)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            step = _step(deadline)
            d = self.decide(**call, approval_id=approval_id, wait=step, raise_on_deny=False)
            if d.decision != "needs_approval" or time.monotonic() >= deadline:
                return self._outcome(d, True)

    async def await_for_approval(self, approval: str | NeedsApproval, timeout: float = 60.0) -> Decision:
        """:meth:`wait_for_approval`, asynchronously."""
        approval_id, call = self._pending_call(approval)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            step = _step(deadline)
            d = await self.adecide(**call, approval_id=approval_id, wait=step, raise_on_deny=False)
            if d.decision != "needs_approval" or time.monotonic() >= deadline:
                return self._outcome(d, True)

    # Reports.

    def _report_request(
        self,
        target: str | None,
        data_classes: Iterable[str],
        output: str | None,
        kind: str,
        third_party: bool,
    ) -> tuple[bytes, bool]:
        return P.report_body(
            target=target, kind=kind, data_classes=data_classes, output=output, third_party=third_party
        )

    def report(
        self,
        target: str | None,
        data_classes: Iterable[str] = (),
        output: str | None = None,
        *,
        kind: str = "tool",
        third_party: bool = False,
    ) -> ReportResult:
        """Tells Mandate what a call returned (``POST /v1/report``): the ``data_classes`` in it
        join the task's flow labels, and the values in ``output`` its provenance
        (``third_party=True`` when the output is content others wrote: a mail, a web page)."""
        body, cut = self._report_request(target, data_classes, output, kind, third_party)
        answer = self._agent._http.request(
            "POST", P.REPORT_PATH, content=body, headers=self._auth_headers(P.REPORT_PATH)
        )
        if answer.status != 200:
            raise error_from(answer, "report")
        return ReportResult.parse(answer.json(), cut)

    async def areport(
        self,
        target: str | None,
        data_classes: Iterable[str] = (),
        output: str | None = None,
        *,
        kind: str = "tool",
        third_party: bool = False,
    ) -> ReportResult:
        """:meth:`report`, asynchronously."""
        body, cut = self._report_request(target, data_classes, output, kind, third_party)
        answer = await self._agent._http.arequest(
            "POST", P.REPORT_PATH, content=body, headers=self._auth_headers(P.REPORT_PATH)
        )
        if answer.status != 200:
            raise error_from(answer, "report")
        return ReportResult.parse(answer.json(), cut)

    # Downstream credentials.

    def credential(self, name: str) -> DownstreamCredential:
        """This task's downstream credential ``name`` (``POST /v1/credentials/NAME``): made on the
        first call, the same lease afterwards, revoked downstream when the task ends. Raises
        :class:`ClientRefused` when the task's scope earns nothing of it, :class:`BadRequest`
        when no such credential is configured, :class:`CredentialRefused` once the task ended."""
        path = P.credential_path(name)
        answer = self._agent._http.request("POST", path, content=b"", headers=self._auth_headers(path))
        if answer.status != 200:
            raise error_from(answer, "credential")
        return DownstreamCredential.parse(answer.json())

    async def acredential(self, name: str) -> DownstreamCredential:
        """:meth:`credential`, asynchronously."""
        path = P.credential_path(name)
        answer = await self._agent._http.arequest("POST", path, content=b"", headers=self._auth_headers(path))
        if answer.status != 200:
            raise error_from(answer, "credential")
        return DownstreamCredential.parse(answer.json())

    # Delegation.

    def delegate(
        self,
        child: str | Agent,
        child_key: AgentKey | PathLike | bytes | None = None,
        *,
        intent: str,
        access: Iterable[P.AccessEntry],
        ttl: float | _dt.timedelta | None = None,
        values: Sequence[str] | None = None,
        intent_class: str | None = None,
        budget: Mapping[str, int] | None = None,
        dpop: DpopChoice = True,
    ) -> TaskOpener:
        """A sub-task for another registered agent (RFC 8693 token exchange), to open with
        ``with task.delegate(...) as sub:``. ``child`` is its id (with ``child_key``, its key or
        key file) or an :class:`Agent`. The sub-task gets at most what this task holds and the
        child's envelope allows, and lives no longer than this task; asking for more raises
        :class:`TaskRefused`. Its credential is bound to the child's key by default."""
        if isinstance(child, Agent):
            child_agent = child if child_key is None else child._sibling(child.agent_id, load_key(child_key))
        else:
            if child_key is None:
                raise ConfigurationError("give the child agent's key (child_key) to sign its actor assertion")
            child_agent = self._agent._sibling(_check_agent_id(child), load_key(child_key))
        details = P.task_details(
            intent=intent, access=access, ttl=ttl, values=values, intent_class=intent_class, budget=budget
        )
        return TaskOpener(child_agent, details, dpop, parent=self)

    # Introspection and completion.

    def introspect(self) -> dict[str, Any]:
        """RFC 7662 introspection of this task's credential, as its agent (``active`` false once
        the task ended)."""
        form = {**self._agent._client_auth(self._issuer), "token": self.token}
        answer = self._agent._http.request("POST", P.INTROSPECT_PATH, form=form)
        return _introspected(answer)

    async def aintrospect(self) -> dict[str, Any]:
        form = {**self._agent._client_auth(self._issuer), "token": self.token}
        answer = await self._agent._http.arequest("POST", P.INTROSPECT_PATH, form=form)
        return _introspected(answer)

    def complete(self) -> None:
        """Completes the task: revokes its credential as its agent (``POST /oauth/revoke``,
        RFC 7009), which ends every task delegated from it too. Idempotent."""
        if self._ended:
            return
        form = {**self._agent._client_auth(self._issuer), "token": self.token, "token_type_hint": "access_token"}
        answer = self._agent._http.request("POST", P.REVOKE_PATH, form=form)
        if answer.status != 200:
            raise error_from(answer, "completion")
        self._ended = True

    async def acomplete(self) -> None:
        """:meth:`complete`, asynchronously."""
        if self._ended:
            return
        form = {**self._agent._client_auth(self._issuer), "token": self.token, "token_type_hint": "access_token"}
        answer = await self._agent._http.arequest("POST", P.REVOKE_PATH, form=form)
        if answer.status != 200:
            raise error_from(answer, "completion")
        self._ended = True


def _wait(wait: float) -> int:
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) or wait < 0:
        raise ConfigurationError("wait is a number of seconds, at least 0")
    return min(int(wait), P.MAX_WAIT_STEP)


def _step(deadline: float) -> int:
    return max(0, min(P.MAX_WAIT_STEP, int(deadline - time.monotonic())))


def _introspected(answer: Answer) -> dict[str, Any]:
    if answer.status != 200:
        raise error_from(answer, "introspection")
    body = answer.json()
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        raise ProtocolError("the introspection answer has no `active`")
    return body


__all__ = ["Agent", "MandateError", "Task", "TaskOpener"]
