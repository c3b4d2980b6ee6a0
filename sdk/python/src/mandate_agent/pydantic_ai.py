"""Pydantic AI adapter (``pip install mandate-agent[pydantic-ai]``).

Wrap any toolset, or plain functions, so that Mandate decides every call before it runs and
hears what it returned::

    from pydantic_ai import Agent as PydanticAgent
    from mandate_agent.pydantic_ai import MandateToolset

    agent = PydanticAgent(model, toolsets=[MandateToolset(task, [search_kb, close_ticket])])

A refused call is a failed tool result (``ToolFailed``) carrying Mandate's reason: the model
reads it and the tool never runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool, WrapperToolset

from ._agent import Task
from ._guard import Refused, ToolGuard

__all__ = ["MandateToolset", "guard"]


@dataclass(init=False)
class MandateToolset(WrapperToolset[Any]):
    """A toolset whose every call is decided by Mandate first and reported after.

    ``tools`` is a toolset, or a list of functions / ``Tool``s (made a ``FunctionToolset``).
    Keyword options are those of :class:`mandate_agent._guard.ToolGuard`: ``target``, ``kind``,
    ``action``, ``report``, ``classify``, ``third_party``, ``approval_wait``.
    """

    guard: ToolGuard = field(repr=False)

    def __init__(
        self,
        task: Task | None = None,
        tools: AbstractToolset[Any] | Sequence[Any] = (),
        *,
        wrapped: AbstractToolset[Any] | None = None,
        guard: ToolGuard | None = None,
        **options: Any,
    ) -> None:
        # `wrapped` and `guard` are how pydantic-ai's own `replace()` rebuilds a copy.
        if wrapped is None:
            wrapped = tools if isinstance(tools, AbstractToolset) else FunctionToolset(list(tools))
        super().__init__(wrapped)
        if guard is None:
            if task is None:
                raise TypeError("MandateToolset needs the task its tools act for")
            guard = ToolGuard(task, **options)
        self.guard = guard

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        try:
            await self.guard.abefore(name, tool_args)
        except Refused as r:
            raise ToolFailed(r.message) from None
        result = await super().call_tool(name, tool_args, ctx, tool)
        try:
            await self.guard.aafter(name, result)
        except Refused as r:
            raise ToolFailed(r.message) from None
        return result


def guard(task: Task, tools: AbstractToolset[Any] | Sequence[Any], **options: Any) -> MandateToolset:
    """``MandateToolset(task, tools, **options)``."""
    return MandateToolset(task, tools, **options)
