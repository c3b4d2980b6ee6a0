import os
from mandate_agent import Agent, Denied

agent = Agent.from_key_file(os.environ["MANDATE_URL"], "support-bot", "support-bot.pem")
with agent.task(intent="summarise ticket 42", access=["read:tickets", "call:search_kb"]) as task:
    task.decide("read", "tickets", {"id": 42}, kind="resource")
    ticket = {"id": 42, "from": "bob@example.com", "text": "the printer is on fire"}  # your tool
    task.report("tickets", ["pii"], output=str(ticket), kind="resource")
    print(task.decide("call", "search_kb", {"query": ticket["text"]}).reason)
    try:
        task.decide("call", "send_email", {"to": ticket["from"]})
    except Denied as e:
        print("refused:", e.reason, e.policies)
