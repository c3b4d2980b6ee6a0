"""Each framework adapter with the framework's own test models: the allowed tool runs (and its
output is reported), the denied one never runs and the model reads Mandate's reason."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

RAN: list[str] = []


def search_kb(query: str) -> str:
    """Search the knowledge base."""
    RAN.append("search_kb")
    return f"KB article for {query}: contact helpdesk@example.com"


def close_ticket(ticket_id: int) -> str:
    """Close a ticket."""
    RAN.append("close_ticket")
    return f"closed {ticket_id}"


@pytest.fixture
def support(register):
    RAN.clear()
    r = register("call:search_kb call:close_ticket")
    with r.agent.task(intent="answer ticket 42", access=["call:search_kb"]) as task:
        yield task


def assert_reported(server, task, calls: int = 1) -> None:
    t = server.task_state(task.task_id)
    assert t["flow"]["calls"] == calls and t["flow"]["denied"] == 1
    # The reported output fed the task's provenance (a trusted value).
    assert "e:helpdesk@example.com" in t["provenance"]["trusted"]


def test_pydantic_ai(server, support):
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from mandate_agent.pydantic_ai import MandateToolset

    seen: list[ToolReturnPart] = []

    def model(messages: list[Any], info: AgentInfo) -> ModelResponse:
        seen.extend(p for p in messages[-1].parts if isinstance(p, ToolReturnPart))
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("search_kb", {"query": "printer"}),
                                        ToolCallPart("close_ticket", {"ticket_id": 42})])  # fmt: skip
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(FunctionModel(model), toolsets=[MandateToolset(support, [search_kb, close_ticket])])
    assert agent.run_sync("help with ticket 42").output == "done"
    assert RAN == ["search_kb"]
    by_tool = {p.tool_name: p for p in seen}
    assert by_tool["search_kb"].outcome == "success" and "KB article" in by_tool["search_kb"].content
    assert by_tool["close_ticket"].outcome == "failed"
    assert "Mandate denied this call" in by_tool["close_ticket"].content
    assert "mandate:task-scope" in by_tool["close_ticket"].content
    assert_reported(server, support)

    # TestModel calls every tool, asynchronously this time.
    from pydantic_ai.models.test import TestModel

    RAN.clear()
    out = asyncio.run(Agent(TestModel(), toolsets=[MandateToolset(support, [search_kb, close_ticket])]).run("go"))
    assert RAN == ["search_kb"] and "Mandate denied this call" in json.loads(out.output)["close_ticket"]


def test_langchain_langgraph(server, support):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    from mandate_agent.langchain import guard_tools

    class FakeModel(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kw: Any) -> Any:
            return self

    def script() -> FakeModel:
        return FakeModel(messages=iter([
            AIMessage(content="", tool_calls=[
                {"name": "search_kb", "args": {"query": "printer"}, "id": "c1"},
                {"name": "close_ticket", "args": {"ticket_id": 42}, "id": "c2"}]),
            AIMessage(content="done")]))  # fmt: skip

    holder: dict[str, FakeModel] = {}

    def call_model(state: MessagesState) -> dict:
        return {"messages": [holder["m"].invoke(state["messages"])]}

    tools = guard_tools(support, [tool(search_kb), tool(close_ticket)])
    assert [t.name for t in tools] == ["search_kb", "close_ticket"]
    assert tools[1].tool_call_schema.model_json_schema()["required"] == ["ticket_id"]
    g = StateGraph(MessagesState)
    g.add_node("agent", call_model)
    g.add_node("tools", ToolNode(tools))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    app = g.compile()

    for run in ("sync", "async"):
        RAN.clear()
        holder["m"] = script()
        inp = {"messages": [HumanMessage("help with ticket 42")]}
        out = app.invoke(inp) if run == "sync" else asyncio.run(app.ainvoke(inp))
        msgs = {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}
        assert RAN == ["search_kb"], run
        assert msgs["c1"].status == "success" and "KB article" in msgs["c1"].content
        assert msgs["c2"].status == "error" and "Mandate denied this call" in msgs["c2"].content
        assert out["messages"][-1].content == "done"
    t = server.task_state(support.task_id)
    assert t["flow"]["calls"] == 2 and t["flow"]["denied"] == 2


def test_openai_agents(server, support):
    from agents import Agent, ModelResponse, Runner, Usage, function_tool, set_tracing_disabled
    from agents.models.interface import Model
    from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

    from mandate_agent.openai_agents import guard_tools

    set_tracing_disabled(True)

    class Scripted(Model):
        """A model that answers from a script: tool calls first, then text."""

        def __init__(self) -> None:
            self.inputs: list[Any] = []

        async def get_response(self, system_instructions, input, model_settings, tools, output_schema,
                               handoffs, tracing, **kw):  # fmt: skip
            self.inputs.append(input)
            if len(self.inputs) == 1:
                calls = [("search_kb", {"query": "printer"}, "c1"), ("close_ticket", {"ticket_id": 42}, "c2")]
                out = [ResponseFunctionToolCall(type="function_call", name=n, arguments=json.dumps(a),
                                                call_id=c, id=f"fc_{c}") for n, a, c in calls]  # fmt: skip
            else:
                out = [ResponseOutputMessage(type="message", id="m1", role="assistant", status="completed",
                       content=[ResponseOutputText(type="output_text", text="done", annotations=[])])]  # fmt: skip
            return ModelResponse(output=out, usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    model = Scripted()
    tools = guard_tools(support, [function_tool(search_kb), function_tool(close_ticket)])
    result = asyncio.run(Runner.run(Agent(name="support", model=model, tools=tools), "help with ticket 42"))
    assert result.final_output == "done"
    assert RAN == ["search_kb"]
    outputs = {i["call_id"]: i["output"] for i in model.inputs[-1]
               if isinstance(i, dict) and i.get("type") == "function_call_output"}  # fmt: skip
    assert "KB article" in outputs["c1"]
    assert outputs["c2"].startswith("Mandate denied this call") and "mandate:task-scope" in outputs["c2"]
    assert_reported(server, support)


def test_needs_approval_is_told_to_the_model(server, register):
    from langchain_core.tools import tool

    from mandate_agent.langchain import guard_tool

    @tool
    def pay(amount: int, to: str) -> str:
        """Pay someone."""
        return f"paid {amount} to {to}"

    r = register("call:pay", tier="high")
    with r.agent.task(intent="pay the invoice", access=["call:pay"]) as task:
        guarded = guard_tool(task, pay)
        assert guarded.invoke({"amount": 20, "to": "acct-1"}) == "paid 20 to acct-1"
        msg = guarded.invoke({"amount": 500, "to": "acct-1"})
        assert "needs a person's approval" in msg and "apr_" in msg
        approval_id = msg.split("(approval ")[1].split(")")[0]
        server.admin("POST", f"/admin/v1/approvals/{approval_id}/grant", token=server.owner_token())
        # The same call again goes through once, with the grant.
        assert guarded.invoke({"amount": 500, "to": "acct-1"}) == "paid 500 to acct-1"
        assert "needs a person's approval" in guarded.invoke({"amount": 500, "to": "acct-1"})


def test_pydantic_ai_toolset_survives_replace(support):
    import dataclasses

    from pydantic_ai.toolsets import FunctionToolset

    from mandate_agent.pydantic_ai import MandateToolset

    ts = MandateToolset(support, [search_kb])
    copy = dataclasses.replace(ts, wrapped=FunctionToolset([close_ticket]))
    assert copy.guard is ts.guard and isinstance(copy, MandateToolset)
    assert ts.visit_and_replace(lambda t: t).guard is ts.guard
