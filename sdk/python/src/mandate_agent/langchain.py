"""LangChain / LangGraph adapter (``pip install mandate-agent[langchain]``).

Wrap tools so that Mandate decides every call before it runs and hears what it returned::

    from mandate_agent.langchain import guard_tools

    tools = guard_tools(task, [search_kb, close_ticket])
    graph.add_node("tools", ToolNode(tools))      # or any agent that takes LangChain tools

A refused call becomes a ``ToolMessage`` with ``status="error"`` whose content is Mandate's
reason; the wrapped tool never runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException

from ._agent import Task
from ._guard import Refused, ToolGuard

__all__ = ["MandateTool", "guard_tool", "guard_tools"]


class MandateTool(BaseTool):
    """A tool whose calls are decided by Mandate, then run by ``inner``, then reported."""

    inner: BaseTool
    guard: Any  # ToolGuard; Any so pydantic does not try to validate it
    handle_tool_error: Any = True

    def _config(self, run_manager: Any) -> RunnableConfig:
        return {"callbacks": run_manager.get_child()} if run_manager is not None else {}

    def _run(self, *args: Any, run_manager: CallbackManagerForToolRun | None = None, **kwargs: Any) -> Any:
        g: ToolGuard = self.guard
        try:
            g.before(self.name, kwargs)
        except Refused as r:
            raise ToolException(r.message) from None
        out = self.inner.invoke(kwargs, config=self._config(run_manager))
        try:
            g.after(self.name, out)
        except Refused as r:
            raise ToolException(r.message) from None
        return out

    async def _arun(
        self, *args: Any, run_manager: AsyncCallbackManagerForToolRun | None = None, **kwargs: Any
    ) -> Any:
        g: ToolGuard = self.guard
        try:
            await g.abefore(self.name, kwargs)
        except Refused as r:
            raise ToolException(r.message) from None
        out = await self.inner.ainvoke(kwargs, config=self._config(run_manager))
        try:
            await g.aafter(self.name, out)
        except Refused as r:
            raise ToolException(r.message) from None
        return out


def guard_tool(task: Task, tool: BaseTool, **options: Any) -> MandateTool:
    """``tool`` with every call decided by Mandate. Options are those of
    :class:`mandate_agent._guard.ToolGuard` (``target``, ``kind``, ``action``, ``report``,
    ``classify``, ``third_party``, ``approval_wait``)."""
    g = options.pop("_guard", None) or ToolGuard(task, **options)
    return MandateTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        return_direct=tool.return_direct,
        inner=tool,
        guard=g,
    )


def guard_tools(task: Task, tools: Sequence[BaseTool], **options: Any) -> list[MandateTool]:
    """Every tool of ``tools`` guarded (one set of options for all)."""
    g = ToolGuard(task, **options)
    return [guard_tool(task, t, _guard=g) for t in tools]
