"""The agent's configuration: flags over environment over defaults, checked up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ROOT_WORK_DIR, AgentConfig, default_work_dir, load_config
from agent.main import task_environment


def test_defaults_are_complete_after_loading() -> None:
    config = load_config([], {"HOME": "/home/someone"})
    assert config.masters == ("127.0.0.1:5050",)
    assert config.containerizer_names == ("process",)
    assert config.usage_interval == 5.0
    assert config.kill_grace_period == 3.0
    assert config.work_dir  # filled in for this user
    assert config.hostname  # filled in from the machine


def test_flags_override_the_environment_which_overrides_defaults(tmp_path: Path) -> None:
    env = {
        "CORRAL_AGENT_MASTER": "10.0.0.1:5050",
        "CORRAL_AGENT_USAGE_INTERVAL": "2",
        "CORRAL_AGENT_WORK_DIR": str(tmp_path / "from-env"),
    }
    config = load_config(["--master", "a:1, b:2", "--hostname", "h1"], env)
    assert config.masters == ("a:1", "b:2")
    assert config.usage_interval == 2.0
    assert config.work_path == tmp_path / "from-env"
    assert config.hostname == "h1"


def test_default_work_dir_depends_on_who_runs_the_agent() -> None:
    assert default_work_dir(0, {"HOME": "/root"}) == ROOT_WORK_DIR
    assert default_work_dir(1000, {"HOME": "/home/u"}) == Path("/home/u/.local/state/corral/agent")
    assert default_work_dir(1000, {"HOME": "/home/u", "XDG_STATE_HOME": "/state"}) == Path(
        "/state/corral/agent"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--master", "nohostport"], "is not HOST:PORT"),
        (["--master", "h:99999"], "is not HOST:PORT"),
        (["--master", " , "], "give at least one HOST:PORT"),
        (["--containerizers", "process,lxc"], "'lxc' is not a containerizer"),
        (["--usage-interval", "0"], "usage_interval: must be a positive number"),
        (["--kill-grace-period", "-1"], "kill_grace_period: must be a non-negative number"),
        (["--resources", "cpus:lots"], "resources: cpus: 'lots' is not a number"),
        (["--attributes", "rack"], "attributes: 'rack': expected NAME:VALUE"),
        (["--log-level", "LOUD"], "log_level: 'LOUD' is not one of"),
        (["--recover", "maybe"], "recover: 'maybe' is not one of reconnect, cleanup"),
        (["--isolation", "chroot"], "isolation: 'chroot' is not one of cgroups, none"),
    ],
)
def test_bad_settings_are_usage_errors_that_name_the_setting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(argv, {})
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_config_is_frozen() -> None:
    config = AgentConfig()
    with pytest.raises(AttributeError):
        config.master = "x:1"  # type: ignore[misc]


def test_tasks_inherit_only_path_and_lang_from_the_agent() -> None:
    env = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "SECRET": "s", "HOME": "/root"}
    assert task_environment(env) == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}
    assert "PATH" in task_environment({})  # a default PATH when the agent has none
