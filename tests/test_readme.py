"""The README's example runs as written, and its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_examples_run() -> None:
    """Every python block of the README executes without error (its asserts included)."""
    blocks = _blocks(README, "python")
    assert blocks, "the README has a python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    """The first two commands are the demo and the test suite, and CI runs the latter."""
    commands = [block.strip() for block in _blocks(README, "bash")]
    assert "python -m coalesce demo" in commands[0]
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
