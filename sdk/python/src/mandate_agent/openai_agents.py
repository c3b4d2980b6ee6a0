"""OpenAI Agents SDK adapter (``pip install mandate-agent[openai-agents]``).

Wrap function tools so that Mandate decides every call before it runs and hears what it
returned::

    from agents import Agent as OpenAIAgent
    from mandate_agent.openai_agents import guard_tools

    agent = OpenAIAgent(name="support", tools=guard_tools(task, [search_kb, close_ticket]))

A refused call returns Mandate's reason as the tool's output, which the model reads; the
wrapped function never runs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from agents import FunctionTool
from agents.tool_context import ToolContext

from ._agent import Task
from ._guard import Refused, ToolGuard

__all__ = ["guard_tool", "guard_tools"]

#: Largest tool-call argument string read (the decision's own limit is 16 KiB).
MAX_ARGUMENTS_JSON = 64 * 1024


def guard_tool(task: Task, tool: FunctionTool, **options: Any) -> FunctionTool:
    """A copy of ``tool`` whose every call is decided by Mandate first and reported after.
    Options are those of :class:`mandate_agent._guard.ToolGuard` (``target``, ``kind``,
    ``action``, ``report``, ``classify``, ``third_party``, ``approval_wait``)."""
    if not isinstance(tool, FunctionTool):
        raise TypeError(f"only function tools can be guarded, not {type(tool).__name__}")
    g: ToolGuard = options.pop("_guard", None) or ToolGuard(task, **options)
    inner = tool.on_invoke_tool
    name = tool.name

    async def on_invoke_tool(ctx: ToolContext[Any], input_json: str) -> Any:
        if len(input_json) > MAX_ARGUMENTS_JSON:
            return f"Mandate refused this call: its arguments are longer than {MAX_ARGUMENTS_JSON} characters"
        try:
            args = json.loads(input_json) if input_json.strip() else {}
        except ValueError:
            return "Mandate refused this call: its arguments are not valid JSON"
        if not isinstance(args, dict):
            return "Mandate refused this call: its arguments are not a JSON object"
        try:
            await g.abefore(name, args)
        except Refused as r:
            return r.message
        out = await inner(ctx, input_json)
        try:
            await g.aafter(name, out)
        except Refused as r:
            return r.message
        return out

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)


def guard_tools(task: Task, tools: Sequence[FunctionTool], **options: Any) -> list[FunctionTool]:
    """Every tool of ``tools`` guarded (one set of options for all)."""
    g = ToolGuard(task, **options)
    return [guard_tool(task, t, _guard=g) for t in tools]
