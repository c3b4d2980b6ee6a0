import asyncio, os
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mandate_agent import Agent

async def main(task):
    async with httpx2.AsyncClient(auth=task.httpx_auth(), timeout=30) as http:
        async with streamable_http_client(os.environ["MANDATE_URL"] + "/mcp", http_client=http) as (r, w):
            async with ClientSession(r, w) as mcp:
                await mcp.initialize()
                print([t.name for t in (await mcp.list_tools()).tools])
                print((await mcp.call_tool("notes.search", {"query": "printer"})).content[0].text)

agent = Agent.from_key_file(os.environ["MANDATE_URL"], "support-bot", "support-bot.pem")
with agent.task(intent="find the printer runbook", access=["call:notes.search"]) as task:
    asyncio.run(main(task))
