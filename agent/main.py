"""The `agent` command: read the configuration, set up logging, run until a signal.

SIGTERM and SIGINT stop the agent cleanly: the session to the master closes and
the tasks keep running (a restarted agent will adopt them in a later issue).
Exit status: 0 after a signal, 1 when the master refuses the agent or it cannot
start, 2 for a usage error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence

from agent.agent import Agent, AgentError
from agent.config import AgentConfig, load_config
from corral import logs

logger = logging.getLogger(__name__)

#: What tasks inherit from the agent's own environment; everything else is set per task.
INHERITED_ENV = ("PATH", "LANG")


def task_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The part of the agent's environment every task starts from."""
    inherited = {name: env[name] for name in INHERITED_ENV if name in env}
    inherited.setdefault("PATH", os.defpath)
    return inherited


async def _serve(config: AgentConfig, environment: Mapping[str, str]) -> int:
    agent = Agent(config, environment=environment)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, agent, signum)
    return await agent.run()


def _on_signal(agent: Agent, signum: signal.Signals) -> None:
    logger.info("%s received: stopping; tasks keep running", signum.name)
    agent.stop()


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv, os.environ)
    logs.setup(config.log_level, json_lines=config.log_json, name="agent")
    try:
        return asyncio.run(_serve(config, task_environment(os.environ)))
    except AgentError as exc:
        logger.error("cannot start: %s", exc)
        return 1
