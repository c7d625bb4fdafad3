"""Health checks: the agent probes a task (COMMAND, TCP or HTTP) and reports changes.

Mesos runs health checks in the executor; Corral has no executor, so the agent runs
them itself, one asyncio task per checked task, on the agent's own loop. Nothing
here blocks that loop: a COMMAND check is an asyncio subprocess, a TCP check an
`asyncio.open_connection`, an HTTP check a minimal GET over asyncio streams.

The schedule follows Mesos (docs/health-checks.md, src/checks/health_checker.cpp):
wait `delay`, then probe every `interval`, each probe bounded by `timeout`.
Failures inside the grace period (counted from the checker's start) are ignored
until the first success; after that every failure counts. `consecutive_failures`
failures in a row make the checker give up on the task: the agent kills it.

The checker only *reports* changes (healthy -> unhealthy and back, and the first
result); the agent turns them into reliable TASK_RUNNING updates. See
docs/protocol.md, "Health checks".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from corral.v1 import common_pb2

logger = logging.getLogger(__name__)

# Mesos' defaults (include/mesos/mesos.proto, HealthCheck), used for zero fields.
DEFAULT_DELAY: Final = 15.0
DEFAULT_INTERVAL: Final = 10.0
DEFAULT_TIMEOUT: Final = 20.0
DEFAULT_CONSECUTIVE_FAILURES: Final = 3
DEFAULT_GRACE_PERIOD: Final = 10.0

SHELL: Final = "/bin/sh"
HTTP_HOST: Final = "127.0.0.1"
#: The longest status line an HTTP check reads; a longer one fails the check.
MAX_STATUS_LINE: Final = 8192

#: Called with (healthy, why) when the result changes.
OnChange = Callable[[bool, str], None]
#: Called once, with why, when the task failed too often: the agent kills it.
OnUnhealthy = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The check's timing with Mesos' defaults filled in for zero fields."""

    delay: float
    interval: float
    timeout: float
    consecutive_failures: int
    grace_period: float

    @classmethod
    def of(cls, check: common_pb2.HealthCheck) -> HealthPolicy:
        return cls(
            delay=check.delay_seconds or DEFAULT_DELAY,
            interval=check.interval_seconds or DEFAULT_INTERVAL,
            timeout=check.timeout_seconds or DEFAULT_TIMEOUT,
            consecutive_failures=check.consecutive_failures or DEFAULT_CONSECUTIVE_FAILURES,
            grace_period=check.grace_period_seconds or DEFAULT_GRACE_PERIOD,
        )


class HealthChecker:
    """Runs one task's health check until stopped or until the task is found unhealthy.

    `sandbox` and `environment` are where and with what a COMMAND check runs: the
    task's sandbox and the environment its command got (see `check_environment`).
    """

    def __init__(
        self,
        check: common_pb2.HealthCheck,
        *,
        sandbox: Path | None,
        environment: Mapping[str, str],
        on_change: OnChange,
        on_unhealthy: OnUnhealthy,
        log_context: Mapping[str, str],
    ) -> None:
        self.check = check
        self.policy = HealthPolicy.of(check)
        self._sandbox = sandbox
        self._environment = dict(environment)
        self._on_change = on_change
        self._on_unhealthy = on_unhealthy
        self._log_context = dict(log_context)
        #: The last reported result; None until the first one counts.
        self.healthy: bool | None = None

    async def run(self) -> None:
        """Probe on the policy's schedule; return after reporting the task unhealthy."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        policy = self.policy
        await asyncio.sleep(policy.delay)
        failures = 0
        passed_once = False
        while True:
            problem = await self.probe()
            if problem is None:
                passed_once = True
                failures = 0
                self._result(True, "the health check passed")
            elif not passed_once and loop.time() - started < policy.grace_period:
                logger.debug(
                    "health check failed within the grace period (not counted): %s",
                    problem,
                    extra=self._log_context,
                )
            else:
                failures += 1
                logger.info(
                    "health check failed (%d of %d in a row): %s",
                    failures,
                    policy.consecutive_failures,
                    problem,
                    extra=self._log_context,
                )
                self._result(False, f"the health check failed: {problem}")
                if failures >= policy.consecutive_failures:
                    self._on_unhealthy(
                        f"the task failed its health check {failures} times in a row; last: {problem}"
                    )
                    return
            await asyncio.sleep(policy.interval)

    def _result(self, healthy: bool, why: str) -> None:
        if healthy != self.healthy:
            self.healthy = healthy
            self._on_change(healthy, why)

    async def probe(self) -> str | None:
        """Run the check once: None when healthy, else what went wrong (for a person)."""
        check = self.check
        try:
            async with asyncio.timeout(self.policy.timeout):
                if check.type == common_pb2.HealthCheck.COMMAND:
                    return await self._command()
                if check.type == common_pb2.HealthCheck.TCP:
                    return await _tcp(check.port)
                if check.type == common_pb2.HealthCheck.HTTP:
                    return await _http(check.port, check.path or "/")
        except TimeoutError:
            return f"no result within the {self.policy.timeout:g} s timeout"
        return f"unknown health check type {check.type}"

    async def _command(self) -> str | None:
        command = self.check.command
        if command.shell:
            argv, executable = [SHELL, "-c", command.value], None
        else:
            argv, executable = list(command.arguments) or [command.value], command.value
        env = {**self._environment, **command.environment}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                executable=executable,
                cwd=self._sandbox,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                # Its own process group, so that a timeout kills all of it.
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot run {argv[0]!r}: {exc.strerror or exc}"
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            # Timed out (or the check was stopped): the command must not outlive it.
            _kill_group(proc.pid)
            await asyncio.shield(proc.wait())
            raise
        if code == 0:
            return None
        if code < 0:
            return f"the command was killed by signal {-code}"
        return f"the command exited with code {code}"


def _kill_group(pid: int) -> None:
    # ProcessLookupError: it ended on its own meanwhile.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def _tcp(port: int) -> str | None:
    try:
        _, writer = await asyncio.open_connection(HTTP_HOST, port)
    except OSError as exc:
        return f"cannot connect to {HTTP_HOST}:{port}: {exc.strerror or exc}"
    await _close(writer)
    return None


async def _http(port: int, path: str) -> str | None:
    url = f"http://{HTTP_HOST}:{port}{path}"
    try:
        reader, writer = await asyncio.open_connection(HTTP_HOST, port, limit=MAX_STATUS_LINE)
    except OSError as exc:
        return f"cannot connect to {url}: {exc.strerror or exc}"
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {HTTP_HOST}:{port}\r\nUser-Agent: corral-health-check\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n".encode("ascii")
        )
        await writer.drain()
        line = await reader.readline()
    except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
        return f"GET {url} failed: {exc}"
    finally:
        await _close(writer)
    status = _status_code(line)
    if status is None:
        return f"GET {url} got no HTTP status line (got {line[:80]!r})"
    if 200 <= status < 400:
        return None
    return f"GET {url} answered {status}"


def _status_code(line: bytes) -> int | None:
    """The code of an HTTP/1.x status line such as `HTTP/1.1 200 OK`, else None."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError as exc:
        logger.debug("closing a health check connection: %s", exc)


def check_environment(
    base: Mapping[str, str],
    *,
    task: common_pb2.TaskInfo,
    framework_id: str,
    agent_id: str,
    sandbox: Path | None,
) -> dict[str, str]:
    """The environment a COMMAND check runs with: what the task's command got.

    These are the variables the containerizers give a task (the agent's inherited
    environment, HOME and CORRAL_SANDBOX, the ports, the task's own variables and
    the ids), so a check can reach the task as the task sees itself.
    """
    env = dict(base)
    ports = list(_ports(task.resources))
    if sandbox is not None:
        env["HOME"] = str(sandbox)
        env["CORRAL_SANDBOX"] = str(sandbox)
    env["PORTS"] = ",".join(map(str, ports))
    for index, port in enumerate(ports):
        env[f"PORT{index}"] = str(port)
    env.update(task.command.environment)
    env["CORRAL_TASK_ID"] = task.task_id
    env["CORRAL_FRAMEWORK_ID"] = framework_id
    env["CORRAL_AGENT_ID"] = agent_id
    return env


def _ports(resources: Iterable[common_pb2.Resource]) -> Iterable[int]:
    for resource in resources:
        if resource.name == "ports":
            for span in resource.ranges:
                yield from range(span.begin, span.end + 1)
