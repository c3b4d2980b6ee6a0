"""The wire format of Mandate's agent protocol: constants, limits, and the bodies of requests.

Sans-IO: nothing here sends anything. See docs/agent-protocol.md in the repository.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from ._errors import ConfigurationError
from ._http import encode_json

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
TASK_DETAILS_TYPE = "mandate_task"

TOKEN_PATH = "/oauth/token"
REVOKE_PATH = "/oauth/revoke"
INTROSPECT_PATH = "/oauth/introspect"
DECIDE_PATH = "/v1/decide"
REPORT_PATH = "/v1/report"
CREDENTIALS_PATH = "/v1/credentials/"
METADATA_PATH = "/.well-known/oauth-authorization-server"

# The server's limits, checked here too so the error is clear and nothing oversized is sent.
MAX_BODY_BYTES = 64 * 1024
MAX_DETAILS_BYTES = 16 * 1024
MAX_ARGUMENTS_BYTES = 16 * 1024
MAX_INTENT_BYTES = 8 * 1024
MAX_VALUES = 64
MAX_VALUE_BYTES = 256
MAX_GRANTS = 256
MAX_TARGET_LEN = 256
MAX_ACTION_LEN = 64
MAX_DATA_CLASSES = 64
MAX_APPROVAL_ID = 64
MAX_EXACT_INTEGER = 2**53
MAX_SIGNIFICANT_DIGITS = 15
#: Longest a single decision request may wait for a person. The broker's HTTP layer answers
#: 408 after 30 s whatever ``approvals.max_wait_seconds`` says, so waits are made in steps.
MAX_WAIT_STEP = 25

_ACTION = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CLASS = re.compile(r"^[a-z0-9_-]{1,64}$")

AccessEntry = Union[str, Mapping[str, Any]]


def check_action(action: str) -> str:
    if not isinstance(action, str) or not _ACTION.match(action):
        raise ConfigurationError(
            f"action `{str(action)[:80]}` must be lowercase letters, digits or `_`, start with a letter, "
            f"and be at most {MAX_ACTION_LEN} characters"
        )
    return action


def check_target(target: str) -> str:
    ok = (
        isinstance(target, str)
        and 0 < len(target) <= MAX_TARGET_LEN
        and all(33 <= ord(c) <= 126 and c not in '"\\' for c in target)
    )
    if not ok:
        raise ConfigurationError(
            f"target `{str(target)[:80]}` must be 1 to {MAX_TARGET_LEN} printable ASCII characters "
            "without spaces, quotes or backslashes"
        )
    return target


def check_kind(kind: str) -> str:
    if kind not in ("tool", "resource"):
        raise ConfigurationError(f"kind must be `tool` or `resource`, not `{str(kind)[:40]}`")
    return kind


def grants(access: Iterable[AccessEntry]) -> list[dict[str, Any]]:
    """``access`` entries from ``"action:target"`` strings (a bare ``"target"`` means ``call``)
    and RFC 9396 objects (``{"identifier": ..., "actions": [...], "arguments": {...}}``)."""
    if isinstance(access, (str, bytes)):
        raise ConfigurationError('`access` is a list: ["read:tickets", "call:search_kb"]')
    by_target: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    count = 0
    for entry in access:
        count += 1
        if count > MAX_GRANTS:
            raise ConfigurationError(f"a task asks for at most {MAX_GRANTS} grants")
        if isinstance(entry, str):
            action, sep, target = entry.partition(":")
            if not sep:
                action, target = "call", entry
            check_action(action)
            check_target(target)
            g = by_target.get(target)
            if g is None:
                g = {"identifier": target, "actions": []}
                by_target[target] = g
                out.append(g)
            if action not in g["actions"]:
                g["actions"].append(action)
        elif isinstance(entry, Mapping):
            ident = entry.get("identifier")
            if not isinstance(ident, str):
                raise ConfigurationError("an `access` object needs an `identifier` (the tool or resource)")
            check_target(ident)
            for a in entry.get("actions", ["call"]):
                check_action(a)
            out.append(dict(entry))
        else:
            raise ConfigurationError(f"an `access` entry is a string or an object, not {type(entry).__name__}")
    if not out:
        raise ConfigurationError("a task must ask for something: give `access`")
    return out


def ttl_seconds(ttl: float | _dt.timedelta | None) -> int | None:
    if ttl is None:
        return None
    if isinstance(ttl, _dt.timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl < 1:
        raise ConfigurationError("ttl is a number of seconds, at least 1")
    return int(ttl)


def task_details(
    *,
    intent: str,
    access: Iterable[AccessEntry],
    ttl: float | _dt.timedelta | None = None,
    values: Sequence[str] | None = None,
    intent_class: str | None = None,
    budget: Mapping[str, int] | None = None,
) -> str:
    """The ``authorization_details`` parameter (RFC 9396) describing one task."""
    if not isinstance(intent, str) or not intent.strip():
        raise ConfigurationError("a task needs an intent: what it is for, in words")
    if len(intent.encode("utf-8")) > MAX_INTENT_BYTES:
        raise ConfigurationError(f"the intent is longer than {MAX_INTENT_BYTES} bytes")
    entry: dict[str, Any] = {"type": TASK_DETAILS_TYPE, "intent": intent}
    if intent_class is not None:
        if not isinstance(intent_class, str) or not _CLASS.match(intent_class):
            raise ConfigurationError("intent_class is 1 to 64 lowercase letters, digits, `_` or `-`")
        entry["intent_class"] = intent_class
    t = ttl_seconds(ttl)
    if t is not None:
        entry["ttl"] = t
    entry["access"] = grants(access)
    if values:
        vals = list(values)
        if len(vals) > MAX_VALUES:
            raise ConfigurationError(f"a task names at most {MAX_VALUES} values")
        for v in vals:
            if not isinstance(v, str) or not v.strip() or len(v.encode("utf-8")) > MAX_VALUE_BYTES:
                raise ConfigurationError(f"values are strings of 1 to {MAX_VALUE_BYTES} bytes")
        entry["values"] = vals
    if budget:
        unknown = set(budget) - {"max_calls", "max_calls_per_minute"}
        if unknown:
            raise ConfigurationError(f"budget knows `max_calls` and `max_calls_per_minute`, not {sorted(unknown)}")
        entry["budget"] = dict(budget)
    raw = encode_json([entry]).decode("utf-8")
    if len(raw.encode("utf-8")) > MAX_DETAILS_BYTES:
        raise ConfigurationError(f"the task description is larger than {MAX_DETAILS_BYTES} bytes")
    return raw


def _significant_digits(f: float) -> int:
    mantissa = repr(abs(f)).split("e")[0].split("E")[0]
    digits = mantissa.replace(".", "").lstrip("0").rstrip("0")
    return len(digits)


def check_numbers(value: Any, path: str = "arguments", depth: int = 0) -> None:
    """Refuses numbers the server would refuse: integers beyond 2^53 and floats with more than
    15 significant digits (send such a value as a string)."""
    if depth > 64:
        raise ConfigurationError(f"{path} is nested too deeply")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_EXACT_INTEGER:
            raise ConfigurationError(f"{path}: integer {value} is larger than 2^53; send it as a string")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{path}: {value} is not a JSON number")
        if value != int(value) or abs(value) > MAX_EXACT_INTEGER:
            if _significant_digits(value) > MAX_SIGNIFICANT_DIGITS:
                raise ConfigurationError(
                    f"{path}: {value!r} has more than {MAX_SIGNIFICANT_DIGITS} significant digits; "
                    "round it or send it as a string"
                )
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigurationError(f"{path}: object keys must be strings")
            check_numbers(v, f"{path}.{k}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_numbers(v, f"{path}[{i}]", depth + 1)
        return
    raise ConfigurationError(f"{path}: a {type(value).__name__} cannot be sent as JSON")


def decide_body(
    *,
    action: str,
    target: str,
    kind: str,
    arguments: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
    approval_id: str | None,
    wait: int,
) -> bytes:
    body: dict[str, Any] = {
        "action": check_action(action),
        "resource": {"type": check_kind(kind), "id": check_target(target)},
    }
    if arguments:
        if not isinstance(arguments, Mapping):
            raise ConfigurationError("arguments are a JSON object (a mapping of names to values)")
        check_numbers(arguments)
        size = len(encode_json(arguments))
        if size > MAX_ARGUMENTS_BYTES:
            raise ConfigurationError(f"arguments are larger than {MAX_ARGUMENTS_BYTES} bytes ({size})")
        body["arguments"] = dict(arguments)
    if context:
        check_numbers(context, "context")
        body["context"] = dict(context)
    if approval_id is not None:
        if not isinstance(approval_id, str) or not 0 < len(approval_id) <= MAX_APPROVAL_ID:
            raise ConfigurationError("approval_id is malformed")
        body["approval_id"] = approval_id
    if wait:
        body["wait"] = int(wait)
    raw = encode_json(body)
    if len(raw) > MAX_BODY_BYTES:
        raise ConfigurationError(f"the decision request is larger than {MAX_BODY_BYTES} bytes")
    return raw


def check_data_classes(classes: Iterable[str]) -> list[str]:
    out = list(classes)
    if len(out) > MAX_DATA_CLASSES:
        raise ConfigurationError(f"report at most {MAX_DATA_CLASSES} data classes")
    for c in out:
        if not isinstance(c, str) or not _CLASS.match(c):
            raise ConfigurationError(
                f"data class `{str(c)[:64]}` must be 1 to 64 lowercase letters, digits, `_` or `-`"
            )
    return out


def report_body(
    *,
    target: str | None,
    kind: str,
    data_classes: Iterable[str],
    output: str | None,
    third_party: bool,
) -> tuple[bytes, bool]:
    """The report body, and whether ``output`` had to be cut to fit the server's body limit.

    The broker reads request bodies up to 64 KiB; a longer output is cut (on a character
    boundary) so the rest of the report still lands. Values past the cut stay unknown to the
    task's provenance, which the shipped flow rules treat as not the request's own.
    """
    body: dict[str, Any] = {"data_classes": check_data_classes(data_classes)}
    if target is not None:
        body["resource"] = {"type": check_kind(kind), "id": check_target(target)}
    if third_party:
        body["third_party"] = True
    truncated = False
    if output is not None:
        if not isinstance(output, str):
            raise ConfigurationError("output is text (str)")
        base = len(encode_json(body)) + len(',"output":""')
        budget = MAX_BODY_BYTES - base - 64
        if len(encode_json(output)) > budget + 2:
            truncated = True
            output = _fit(output, budget)
        body["output"] = output
    return encode_json(body), truncated


def _fit(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose JSON string encoding (without quotes) fits ``budget``."""
    text = text[: max(budget, 0)]
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode_json(text[:mid])) - 2 <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def credential_path(name: str) -> str:
    """The path of a downstream credential: its name is 1 to 64 of letters, digits, ``_``, ``-``,
    ``.``, as the server requires."""
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and all(c.isascii() and (c.isalnum() or c in "_-.") for c in name)
    )
    if not ok:
        raise ConfigurationError("a credential's name is 1 to 64 letters, digits, `_`, `-` or `.`")
    return CREDENTIALS_PATH + name
