"""Docker tasks without an engine: the master's checks on their container, and how the
containerizer turns a TaskInfo into what the engine is given (pure functions)."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given, strategies as st

from agent.containerizer import LaunchError, LaunchSpec
from agent.containerizer.docker import PUBLISH_ADDRESS, _command, _create_arguments, _split_tag
from corral.resources import Resources
from corral.v1 import common_pb2, scheduler_pb2
from master.validation import OfferView, Rejected, container_problems, plan_accept

FW = "fw-1"
OFFERS = {"o1": OfferView("o1", FW, "a1", "*", Resources.parse("cpus:2;mem:1024;ports:[31000-31009]"))}


def docker_task(
    image: str = "corral-test/busybox:latest",
    ports: str = "",
    mappings: tuple[tuple[int, int, str], ...] = (),
    command: common_pb2.CommandInfo | None = None,
) -> common_pb2.TaskInfo:
    resources = Resources.parse("cpus:0.5;mem:64" + (f";ports:{ports}" if ports else ""))
    info = common_pb2.TaskInfo(
        task_id="t1",
        agent_id="a1",
        resources=resources.to_proto(),
        command=command if command is not None else common_pb2.CommandInfo(value="true", shell=True),
        containerizer="docker",
    )
    info.container.image = image
    for container_port, host_port, protocol in mappings:
        info.container.port_mappings.add(
            container_port=container_port, host_port=host_port, protocol=protocol
        )
    return info


def accept(task: common_pb2.TaskInfo) -> None:
    operation = scheduler_pb2.Operation(launch=scheduler_pb2.Operation.Launch(task_infos=[task]))
    plan_accept(FW, ["o1"], [operation], OFFERS, set())


def problems(task: common_pb2.TaskInfo) -> list[str]:
    return list(container_problems(task, Resources.from_proto(task.resources)))


def test_a_well_formed_docker_task_is_accepted() -> None:
    accept(docker_task(ports="[31000-31001]", mappings=((80, 31000, ""), (53, 31001, "udp"))))


def test_a_docker_task_may_leave_its_command_to_the_image() -> None:
    accept(docker_task(command=common_pb2.CommandInfo()))
    with pytest.raises(Rejected, match=r"command.value is empty"):
        accept(docker_task(command=common_pb2.CommandInfo(shell=True)))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("", "needs container.image"),
        ("busybox; rm -rf /", "is not an image reference"),
        ("$(touch /tmp/x)", "is not an image reference"),
        ("busy\0box", "is not an image reference"),
        ("a" * 513, "longer than 512"),
    ],
)
def test_bad_image_names_are_refused_by_name(image: str, expected: str) -> None:
    with pytest.raises(Rejected, match=expected) as refused:
        accept(docker_task(image=image))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("mappings", "expected"),
    [
        (((80, 32000, ""),), "host_port 32000 is not one of the task's ports"),
        (((80, 31001, ""),), "host_port 31001 is not one of the task's ports"),
        (((0, 31000, ""),), "container_port 0 is not between 1 and 65535"),
        (((70000, 31000, ""),), "container_port 70000"),
        (((80, 31000, "sctp"),), "'sctp' is not 'tcp' or 'udp'"),
        (((80, 31000, ""), (81, 31000, "tcp")), "host port 31000/tcp is mapped twice"),
    ],
)
def test_bad_port_mappings_are_refused(mappings: tuple[tuple[int, int, str], ...], expected: str) -> None:
    assert any(expected in p for p in problems(docker_task(ports="[31000-31000]", mappings=mappings)))


def test_a_container_on_a_process_task_is_refused() -> None:
    task = docker_task()
    task.containerizer = ""
    assert problems(task) == ["container is only for tasks with containerizer 'docker'"]


def test_commands_become_entrypoint_and_cmd_as_data() -> None:
    shell = common_pb2.CommandInfo(value="echo $(id)", shell=True)
    assert _command(shell) == (["/bin/sh", "-c", "echo $(id)"], [])
    argv = common_pb2.CommandInfo(value="/bin/echo", arguments=["echo", "$(touch x)", "; ls"])
    assert _command(argv) == (["/bin/echo"], ["$(touch x)", "; ls"])
    image_entrypoint = common_pb2.CommandInfo(arguments=["--flag", "x"])
    assert _command(image_entrypoint) == (None, ["--flag", "x"])
    assert _command(common_pb2.CommandInfo()) == (None, None)


@pytest.mark.parametrize(
    ("image", "split"),
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("registry:5000/team/app", ("registry:5000/team/app", "latest")),
        ("registry:5000/team/app:v2", ("registry:5000/team/app", "v2")),
        ("app@sha256:abc", ("app@sha256:abc", None)),
    ],
)
def test_image_tags_are_split_where_docker_splits_them(image: str, split: tuple[str, str | None]) -> None:
    assert _split_tag(image) == split


def test_create_arguments_carry_limits_ports_labels_and_identity() -> None:
    task = docker_task(ports="[31000-31000]", mappings=((8080, 31000, ""),))
    task.command.environment["GREETING"] = "hi"
    created = _create_arguments(LaunchSpec("fw-1", "agent-1", task))
    host = created["host_config"]
    assert host["nano_cpus"] == 500_000_000
    assert host["mem_limit"] == host["memswap_limit"] == 64 * 1024 * 1024
    assert host["port_bindings"] == {"8080/tcp": (PUBLISH_ADDRESS, 31000)}
    assert created["labels"] == {
        "corral.task_id": "t1",
        "corral.framework_id": "fw-1",
        "corral.agent_id": "agent-1",
    }
    env = created["environment"]
    assert env["GREETING"] == "hi" and env["PORT0"] == "31000" and env["CORRAL_AGENT_ID"] == "agent-1"


def test_the_agent_refuses_what_the_master_would_have_refused() -> None:
    """Defence in depth: the agent re-checks the ports and the identity variables."""
    with pytest.raises(LaunchError, match="host port 31005 is not one of the task's ports"):
        _create_arguments(LaunchSpec("fw-1", "a", docker_task(mappings=((80, 31005, ""),))))
    task = docker_task()
    task.command.environment["CORRAL_TASK_ID"] = "spoofed"
    with pytest.raises(LaunchError, match="set by the agent"):
        _create_arguments(LaunchSpec("fw-1", "a", task))


@given(st.text(max_size=80))
def test_any_image_name_is_either_refused_or_plain_reference_characters(image: str) -> None:
    found = problems(docker_task(image=image))
    if not found:
        assert image and all(c.isascii() and (c.isalnum() or c in "._/:@-") for c in image)
