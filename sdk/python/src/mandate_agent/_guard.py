"""What every framework adapter does around a tool call: decide it before it runs, report its
output after, and turn a refusal into a message the model reads."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Union

from ._agent import Task
from ._errors import ConfigurationError, CredentialRefused, Denied, MandateError, NeedsApproval

TargetMap = Union[Callable[[str], str], Mapping[str, str], None]
Classifier = Callable[[str, str], Iterable[str]]
ThirdParty = Union[bool, Collection[str], Callable[[str], bool]]


def _jsonable(o: Any) -> Any:
    dump = getattr(o, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (_dt.datetime, _dt.date, _dt.time)):
        return o.isoformat()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


def plain(value: Any) -> Any:
    """``value`` as plain JSON data (pydantic models, dataclasses and dates converted)."""
    try:
        return json.loads(json.dumps(value, default=_jsonable, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"the arguments are not JSON data: {e}") from None


def output_text(output: Any) -> str:
    """A tool's output as the text reported to Mandate."""
    if isinstance(output, str):
        return output
    try:
        return json.dumps(output, default=_jsonable, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(output)


class Refused(Exception):
    """A call Mandate did not allow; ``message`` is what the model is told."""

    def __init__(self, message: str, error: MandateError) -> None:
        self.message = message
        self.error = error
        super().__init__(message)


def refusal_message(e: MandateError) -> str:
    policies = f" (policies: {', '.join(e.policies)})" if e.policies else ""
    if isinstance(e, NeedsApproval):
        return (
            f"This call needs a person's approval before it can run (approval {e.approval_id}): "
            f"{e.reason}{policies}. Once a person grants it, make the same call again with the same arguments."
        )
    if isinstance(e, Denied):
        return f"Mandate denied this call: {e.reason}{policies}. Do not retry it; find another way or stop."
    if isinstance(e, ConfigurationError):
        return f"Mandate cannot judge this call's arguments: {e.reason}"
    return f"Mandate could not record this call's output, so it is withheld: {e}"


class ToolGuard:
    """Decides and reports the calls of one task's tools.

    Args:
        task: the open task the tools act for.
        target: the Mandate target of a tool, from its name (a function or a mapping; default:
            the tool's own name).
        kind: ``tool`` (default) or ``resource``.
        action: the action a tool call is (default ``call``).
        report: whether to report each output (its text, for provenance).
        classify: ``classify(tool_name, output_text)`` → data classes seen in the output.
        third_party: which tools return content others wrote (``True`` for all, a set of tool
            names, or a predicate).
        approval_wait: seconds to wait for a person when a call needs approval (0: tell the
            model at once).
    """

    def __init__(
        self,
        task: Task,
        *,
        target: TargetMap = None,
        kind: str = "tool",
        action: str = "call",
        report: bool = True,
        classify: Classifier | None = None,
        third_party: ThirdParty = False,
        approval_wait: float = 0,
    ) -> None:
        self.task = task
        self._target = target
        self.kind = kind
        self.action = action
        self.report = report
        self.classify = classify
        self._third_party = third_party
        self.approval_wait = approval_wait

    def target_of(self, name: str) -> str:
        t = self._target
        if t is None:
            return name
        if callable(t):
            return t(name)
        return t.get(name, name)

    def is_third_party(self, name: str) -> bool:
        tp = self._third_party
        if isinstance(tp, bool):
            return tp
        if callable(tp):
            return bool(tp(name))
        return name in tp

    # Before the call.

    def before(self, name: str, arguments: Mapping[str, Any]) -> None:
        """Raises :class:`Refused` unless the call is allowed; :class:`CredentialRefused` and
        other errors propagate (the task is over or the broker unreachable: stop the run)."""
        try:
            self.task.decide(self.action, self.target_of(name), plain(dict(arguments)), self.kind)
        except NeedsApproval as e:
            if self.approval_wait <= 0:
                raise Refused(refusal_message(e), e) from None
            try:
                self.task.wait_for_approval(e, timeout=self.approval_wait)
            except (Denied, NeedsApproval) as e2:
                raise Refused(refusal_message(e2), e2) from None
        except (Denied, ConfigurationError) as e:
            raise Refused(refusal_message(e), e) from None

    async def abefore(self, name: str, arguments: Mapping[str, Any]) -> None:
        try:
            await self.task.adecide(self.action, self.target_of(name), plain(dict(arguments)), self.kind)
        except NeedsApproval as e:
            if self.approval_wait <= 0:
                raise Refused(refusal_message(e), e) from None
            try:
                await self.task.await_for_approval(e, timeout=self.approval_wait)
            except (Denied, NeedsApproval) as e2:
                raise Refused(refusal_message(e2), e2) from None
        except (Denied, ConfigurationError) as e:
            raise Refused(refusal_message(e), e) from None

    # After the call.

    def _report_args(self, name: str, output: Any) -> dict[str, Any]:
        text = output_text(output)
        classes = list(self.classify(name, text)) if self.classify else []
        return {
            "target": self.target_of(name),
            "data_classes": classes,
            "output": text,
            "kind": self.kind,
            "third_party": self.is_third_party(name),
        }

    def after(self, name: str, output: Any) -> None:
        """Reports the output; raises :class:`Refused` (the output is withheld from the model)
        when it cannot be recorded."""
        if not self.report:
            return
        try:
            self.task.report(**self._report_args(name, output))
        except CredentialRefused:
            raise
        except MandateError as e:
            raise Refused(refusal_message(e), e) from None

    async def aafter(self, name: str, output: Any) -> None:
        if not self.report:
            return
        try:
            await self.task.areport(**self._report_args(name, output))
        except CredentialRefused:
            raise
        except MandateError as e:
            raise Refused(refusal_message(e), e) from None
