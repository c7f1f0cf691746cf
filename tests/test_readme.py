"""The README starts with the two commands (demo, tests), and CI runs the second one verbatim."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0].startswith("# "), "README must start with its title"
    start = lines.index("```bash")
    end = lines.index("```", start + 1)
    assert start <= 3, "the two commands must come first"
    return lines[start + 1 : end]


def test_readme_starts_with_exactly_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    demo, tests = commands
    for command in commands:
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install")
        assert "-c constraints.txt" in command
    assert demo.endswith(".venv/bin/detcurate demo")
    assert tests.endswith(".venv/bin/pytest -q")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci
