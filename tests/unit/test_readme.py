"""The README's promises stay true: CI runs its test command, and the
framework example it shows is the one that ships."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_quick_start_is_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)


def test_ci_runs_the_readme_test_command():
    test_command = quick_start_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_example_is_the_shipped_hello_framework():
    example = README.split("```python\n", 1)[1].split("```", 1)[0]
    assert "class Hello(Scheduler)" in example
    assert example in (ROOT / "frameworks" / "examples" / "hello.py").read_text()
