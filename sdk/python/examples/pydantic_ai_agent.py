import os
from pydantic_ai import Agent as PydanticAgent
from mandate_agent import Agent
from mandate_agent.pydantic_ai import MandateToolset

def search_kb(query: str) -> str:
    """Search the knowledge base."""
    return f"KB: unplug the printer ({query})"

def close_ticket(ticket_id: int) -> str:
    """Close a ticket."""
    return f"closed {ticket_id}"

agent = Agent.from_key_file(os.environ["MANDATE_URL"], "support-bot", "support-bot.pem")
with agent.task(intent="answer ticket 42", access=["call:search_kb"]) as task:
    bot = PydanticAgent(os.environ.get("MODEL", "openai:gpt-5"), toolsets=[MandateToolset(task, [search_kb, close_ticket])])
    print(bot.run_sync("Answer ticket 42, then close it.").output)
