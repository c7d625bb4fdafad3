"""`corral run`: shell versus argv, --env parsing and flag checks."""

from __future__ import annotations

import pytest

from corral.cli import run
from corral.cli.main import build_parser


def test_several_words_run_as_argv_without_a_shell() -> None:
    spec = run.command_spec(["echo", "hi there"])
    assert spec == run.CommandSpec(shell=False, argv=("echo", "hi there"))
    assert spec.command == ["echo", "hi there"]


def test_one_word_runs_with_the_shell() -> None:
    spec = run.command_spec(["echo hi | wc -c"])
    assert spec.shell
    assert spec.command == "echo hi | wc -c"


@pytest.mark.parametrize("words", [[], [""]])
def test_no_command_is_an_error(words: list[str]) -> None:
    with pytest.raises(ValueError, match="command"):
        run.command_spec(words)


def test_env_pairs() -> None:
    assert run.parse_env(["A=1", "B=", "C=x=y", "A=2"]) == {"A": "2", "B": "", "C": "x=y"}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("NOVALUE", "expected NAME=VALUE"),
        ("=x", "not a valid variable name"),
        ("1A=x", "not a valid"),
        ("A-B=x", "not a valid"),
    ],
)
def test_bad_env_pairs_are_refused(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run.parse_env([item])


def test_parser_keeps_everything_after_the_double_dash() -> None:
    args = build_parser({}).parse_args(["run", "--cpus", "0.5", "--env", "A=1", "--", "ls", "--cpus", "-l"])
    assert args.cpus == 0.5
    assert args.mem == run.DEFAULT_MEM
    assert args.env == ["A=1"]
    assert args.command == ["--", "ls", "--cpus", "-l"]


def test_master_comes_from_the_environment_unless_given() -> None:
    assert build_parser({}).parse_args(["run", "--", "true"]).master == "127.0.0.1:5050"
    env = {"CORRAL_MASTER": "10.0.0.1:6000"}
    assert build_parser(env).parse_args(["run", "--", "true"]).master == "10.0.0.1:6000"
    assert build_parser(env).parse_args(["run", "--master", "h:1", "--", "true"]).master == "h:1"


@pytest.mark.parametrize("flag", [["--cpus", "0"], ["--cpus", "nan"], ["--mem", "-1"], ["--mem", "lots"]])
def test_amounts_must_be_positive_numbers(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser({}).parse_args(["run", *flag, "--", "true"])
    assert exit_info.value.code == 2
    assert flag[1] in capsys.readouterr().err


def test_bad_env_ends_the_command_with_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser({}).parse_args(["run", "--env", "oops", "--", "true"])
    with pytest.raises(SystemExit) as exit_info:
        args.handler(args)
    assert exit_info.value.code == 2
    assert "--env 'oops': expected NAME=VALUE" in capsys.readouterr().err


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser({}).parse_args(["run"])
    with pytest.raises(SystemExit):
        args.handler(args)
    assert "corral run -- echo hi" in capsys.readouterr().err
