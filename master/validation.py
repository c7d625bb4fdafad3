"""Checks on what frameworks send, before anything changes.

`plan_accept` turns an Accept call into a plan (which tasks go to which agent,
charged to which role, and what is left over) or rejects the whole call with
every problem it found. It is pure: the master applies the plan afterwards,
so a rejected call changes no state at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from corral.ids import InvalidId, check_id
from corral.resources import EMPTY, ResourceError, Resources
from corral.v1 import common_pb2, scheduler_pb2

CONTAINERIZERS = frozenset({"", "process", "docker"})
MAX_COMMAND_CHARS = 64 * 1024
MAX_ARGUMENTS = 4096
MAX_ENVIRONMENT = 1024
MAX_NAME_CHARS = 256
MAX_GRACE_SECONDS = 3600.0
MAX_FAILOVER_SECONDS = 365 * 24 * 3600.0
MAX_ROLES = 64
#: Docker's own limit on a reference is 255 characters for the name, plus tag or digest.
MAX_IMAGE_CHARS = 512
MAX_PORT_MAPPINGS = 1024
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")
#: Bounds of a health check's timing: a day, and the consecutive failures of a year
#: of 1 s checks, far beyond any sensible check but small enough to be safe.
MAX_HEALTH_SECONDS = 24 * 3600.0
MAX_HEALTH_FAILURES = 1_000_000
MAX_HEALTH_PATH_CHARS = 2048


class Rejected(Exception):
    """A call refused as a whole, with the gRPC status to answer it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class OfferView:
    """What validation needs to know of one outstanding offer."""

    id: str
    framework_id: str
    agent_id: str
    role: str
    resources: Resources


@dataclass(frozen=True, slots=True)
class PlannedTask:
    info: common_pb2.TaskInfo
    resources: Resources
    role: str


@dataclass
class AcceptPlan:
    offers: list[OfferView]
    tasks_by_agent: dict[str, list[PlannedTask]] = field(default_factory=dict)
    #: What the tasks leave unused, per (agent_id, role): declined with the call's filters.
    leftovers: dict[tuple[str, str], Resources] = field(default_factory=dict)


def check_role(role: str) -> str:
    if role == "*":
        return role
    try:
        return check_id("role", role)
    except InvalidId as exc:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{exc}; or '*' for the default role") from None


def check_framework_info(info: common_pb2.FrameworkInfo) -> list[str]:
    """Validate a subscription's FrameworkInfo; return its roles (['*'] when none)."""
    if info.id:
        try:
            check_id("framework id", info.id)
        except InvalidId as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    if len(info.name) > MAX_NAME_CHARS:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"framework name is longer than {MAX_NAME_CHARS}")
    timeout = info.failover_timeout_seconds
    if not (math.isfinite(timeout) and 0 <= timeout <= MAX_FAILOVER_SECONDS):
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"failover_timeout_seconds must be between 0 and {MAX_FAILOVER_SECONDS:g}, got {timeout}",
        )
    roles = list(info.roles) or ["*"]
    if len(roles) > MAX_ROLES:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_ROLES} roles, got {len(roles)}")
    if len(set(roles)) != len(roles):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"roles are listed twice: {roles}")
    for role in roles:
        check_role(role)
    return roles


def grace_problem(policy: common_pb2.KillPolicy) -> str | None:
    grace = policy.grace_period_seconds
    if math.isfinite(grace) and 0 <= grace <= MAX_GRACE_SECONDS:
        return None
    return f"kill_policy.grace_period_seconds must be between 0 and {MAX_GRACE_SECONDS:g}, got {grace}"


def health_check_problems(check: common_pb2.HealthCheck) -> Iterable[str]:
    """What is wrong with a task's health check (zero timings mean Mesos' defaults)."""
    kinds = common_pb2.HealthCheck
    for name in ("delay_seconds", "interval_seconds", "timeout_seconds", "grace_period_seconds"):
        value = getattr(check, name)
        if not (math.isfinite(value) and 0 <= value <= MAX_HEALTH_SECONDS):
            yield f"health_check.{name} must be between 0 and {MAX_HEALTH_SECONDS:g}, got {value}"
    if check.consecutive_failures > MAX_HEALTH_FAILURES:
        yield f"health_check.consecutive_failures must be at most {MAX_HEALTH_FAILURES}"
    if check.type == kinds.COMMAND:
        command = check.command
        if not command.value:
            yield "health_check.command.value is empty: a COMMAND check needs a command"
        yield from _command_problems(command, "health_check.command")
    elif check.type in (kinds.TCP, kinds.HTTP):
        if not 1 <= check.port <= 65535:
            yield f"health_check.port must be between 1 and 65535, got {check.port}"
        if check.type == kinds.HTTP:
            path = check.path or "/"
            if not path.startswith("/"):
                yield f"health_check.path must start with '/', got {path[:MAX_NAME_CHARS]!r}"
            elif len(path) > MAX_HEALTH_PATH_CHARS:
                yield f"health_check.path is longer than {MAX_HEALTH_PATH_CHARS} characters"
            elif not path.isascii() or any(c.isspace() or not c.isprintable() for c in path):
                yield "health_check.path may hold only printable ASCII, no spaces (percent-encode others)"
    else:
        yield "health_check.type must be COMMAND, TCP or HTTP"


def _command_problems(command: common_pb2.CommandInfo, where: str) -> Iterable[str]:
    """Size and character limits of a command (a task's, or a COMMAND health check's)."""
    if len(command.value) > MAX_COMMAND_CHARS:
        yield f"{where}.value is longer than {MAX_COMMAND_CHARS} characters"
    if len(command.arguments) > MAX_ARGUMENTS:
        yield f"{where} has more than {MAX_ARGUMENTS} arguments"
    if len(command.environment) > MAX_ENVIRONMENT:
        yield f"{where} has more than {MAX_ENVIRONMENT} environment variables"
    for name in command.environment:
        if not name or "=" in name or "\0" in name:
            yield f"{where} environment variable name {name!r} is not allowed"
    if any("\0" in arg for arg in (command.value, *command.arguments, *command.environment.values())):
        yield f"{where} contains a NUL character"


def _task_problems(task: common_pb2.TaskInfo) -> Iterable[str]:
    command = task.command
    if not command.value and not (task.containerizer == "docker" and not command.shell):
        # A docker task may leave it empty: its image's own command runs.
        yield "command.value is empty: give a shell command or an executable"
    yield from _command_problems(command, "command")
    if task.containerizer not in CONTAINERIZERS:
        yield f"containerizer {task.containerizer!r} is unknown; use 'process' or 'docker'"
    if len(task.name) > MAX_NAME_CHARS:
        yield f"name is longer than {MAX_NAME_CHARS} characters"
    grace = grace_problem(task.kill_policy)
    if grace:
        yield grace
    if task.HasField("health_check"):
        yield from health_check_problems(task.health_check)


def container_problems(task: common_pb2.TaskInfo, resources: Resources) -> Iterable[str]:
    """What is wrong with a docker task's container (docs/protocol.md, "Docker tasks").

    The image name and command are handed to the engine as data (argv, never a
    shell line); an image name is still held to the characters image references
    use, so that a name like `busybox; rm -rf /` is refused here, by name.
    """
    container = task.container
    if task.containerizer != "docker":
        if task.HasField("container"):
            yield "container is only for tasks with containerizer 'docker'"
        return
    image = container.image
    if not image:
        yield "a docker task needs container.image (a local image, or one a registry can give)"
    elif len(image) > MAX_IMAGE_CHARS:
        yield f"container.image is longer than {MAX_IMAGE_CHARS} characters"
    elif not _IMAGE_RE.fullmatch(image):
        yield (
            f"container.image {image[:MAX_NAME_CHARS]!r} is not an image reference: use letters, digits "
            "and '.', '_', '-', '/', ':', '@' (e.g. 'busybox:1.36' or 'registry:5000/team/app')"
        )
    if len(container.port_mappings) > MAX_PORT_MAPPINGS:
        yield f"more than {MAX_PORT_MAPPINGS} port mappings"
        return
    own = resources.ranges("ports")
    seen: set[tuple[int, str]] = set()
    for mapping in container.port_mappings:
        protocol = mapping.protocol or "tcp"
        if protocol not in ("tcp", "udp"):
            yield f"port mapping protocol {mapping.protocol[:16]!r} is not 'tcp' or 'udp'"
        if not 1 <= mapping.container_port <= 65535:
            yield f"port mapping container_port {mapping.container_port} is not between 1 and 65535"
        if not any(begin <= mapping.host_port <= end for begin, end in own):
            yield (
                f"port mapping host_port {mapping.host_port} is not one of the task's ports resources "
                "(take host ports from the offer's ports and list them in the task's resources)"
            )
        if (mapping.host_port, protocol) in seen:
            yield f"host port {mapping.host_port}/{protocol} is mapped twice"
        seen.add((mapping.host_port, protocol))


def plan_accept(
    framework_id: str,
    offer_ids: Sequence[str],
    operations: Sequence[scheduler_pb2.Operation],
    outstanding: Mapping[str, OfferView],
    live_task_ids: Container[str],
) -> AcceptPlan:
    """Validate an Accept against the framework's outstanding offers; see docs/protocol.md."""
    if not offer_ids:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "no offer ids given")
    if len(set(offer_ids)) != len(offer_ids):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "an offer id is given more than once")
    missing = [
        oid for oid in offer_ids if oid not in outstanding or outstanding[oid].framework_id != framework_id
    ]
    if missing:
        shown = ", ".join(repr(m[:MAX_NAME_CHARS]) for m in missing[:10])
        raise Rejected(
            grpc.StatusCode.NOT_FOUND,
            f"offers {shown} are not outstanding for framework {framework_id} "
            "(expired, rescinded, already used, or not yours)",
        )
    offers = [outstanding[oid] for oid in offer_ids]

    # Offers on one agent in one role are pooled, in the order given.
    pools: dict[str, dict[str, Resources]] = {}
    for offer in offers:
        roles = pools.setdefault(offer.agent_id, {})
        roles[offer.role] = roles.get(offer.role, EMPTY) + offer.resources

    plan = AcceptPlan(offers=offers)
    problems: list[str] = []
    duplicate_code = grpc.StatusCode.INVALID_ARGUMENT
    seen: set[str] = set()
    for op_index, operation in enumerate(operations):
        if not operation.HasField("launch"):
            problems.append(f"operation {op_index}: no operation set (only LAUNCH is supported)")
            continue
        for task in operation.launch.task_infos:
            label = f"task {task.task_id[:MAX_NAME_CHARS]!r}"
            try:
                check_id("task id", task.task_id)
            except InvalidId as exc:
                problems.append(f"{label}: {exc}")
                continue
            if task.task_id in seen:
                problems.append(f"{label}: the id is used twice in this call")
                continue
            seen.add(task.task_id)
            if task.task_id in live_task_ids:
                problems.append(
                    f"{label}: the framework already has a task with this id "
                    "(running, or its final update not yet acknowledged)"
                )
                duplicate_code = grpc.StatusCode.ALREADY_EXISTS
                continue
            task_problems = list(_task_problems(task))
            try:
                resources = Resources.from_proto(task.resources)
            except ResourceError as exc:
                task_problems.append(str(exc))
                resources = EMPTY
            task_problems.extend(container_problems(task, resources))
            if task.agent_id not in pools:
                task_problems.append(
                    f"agent {task.agent_id[:MAX_NAME_CHARS]!r} is not the agent of any accepted offer"
                )
            if task_problems:
                problems.extend(f"{label}: {p}" for p in task_problems)
                continue
            role_pools = pools[task.agent_id]
            for role, available in role_pools.items():
                if available.contains(resources):
                    role_pools[role] = available - resources
                    plan.tasks_by_agent.setdefault(task.agent_id, []).append(
                        PlannedTask(info=task, resources=resources, role=role)
                    )
                    break
            else:
                left = "; ".join(f"{role}: {res}" for role, res in role_pools.items())
                problems.append(
                    f"{label}: asks for {resources} on agent {task.agent_id}, more than its accepted "
                    f"offers have left ({left})"
                )
    if problems:
        only_duplicates = all("already has a task" in p for p in problems)
        code = duplicate_code if only_duplicates else grpc.StatusCode.INVALID_ARGUMENT
        raise Rejected(code, "; ".join(problems))
    for agent_id, role_pools in pools.items():
        for role, unused in role_pools.items():
            if unused:
                plan.leftovers[(agent_id, role)] = unused
    return plan
