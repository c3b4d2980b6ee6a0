"""Mandate for Python agents: open a task, have every action decided, report what came back,
complete the task.

    from mandate_agent import Agent

    agent = Agent.from_key_file("https://mandate.example", "support-bot", "support-bot.pem")
    with agent.task(intent="summarise ticket 42", access=["read:tickets"]) as task:
        task.decide("read", "tickets", kind="resource")

Adapters for agent frameworks live in :mod:`mandate_agent.openai_agents`,
:mod:`mandate_agent.langchain` and :mod:`mandate_agent.pydantic_ai` (each an optional extra).
"""

from ._agent import Agent, Task, TaskOpener
from ._auth import MandateAuth
from ._errors import (
    BadRequest,
    ClientRefused,
    ConfigurationError,
    CredentialRefused,
    Denied,
    MandateError,
    NeedsApproval,
    ProtocolError,
    TaskRefused,
    Unavailable,
)
from ._keys import AgentKey
from ._models import Decision, DownstreamCredential, ReportResult

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentKey",
    "BadRequest",
    "ClientRefused",
    "ConfigurationError",
    "CredentialRefused",
    "Decision",
    "Denied",
    "DownstreamCredential",
    "MandateAuth",
    "MandateError",
    "NeedsApproval",
    "ProtocolError",
    "ReportResult",
    "Task",
    "TaskOpener",
    "TaskRefused",
    "Unavailable",
    "__version__",
]
