"""What a user needs on day one: docs examples that run as copied, and the freezegun fixture."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from test_docs_examples import RUN_ELSEWHERE, _blocks, _pages

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")


@pytest.mark.parametrize(
    "page", [p for p in _pages() if p.name not in RUN_ELSEWHERE], ids=lambda p: p.name
)
def test_docs_blocks_run_on_their_own(page: Path) -> None:
    """S1: every python block not fenced as a fragment (or no-run) runs alone, as copied."""
    for line, info, code in _blocks(page):
        if info:
            continue  # "fragment" continues the page; "no-run" needs a framework project
        name = f"docs_alone_{page.stem}_{line}"
        module = types.ModuleType(name)
        sys.modules[name] = module
        try:
            exec(compile(code, f"docs/{page.name}:{line}", "exec"), module.__dict__)
        finally:
            del sys.modules[name]


def _frozen_fixture_block() -> str:
    """The block of docs/testing.md with the fixture that freezes time and clears after."""
    blocks = [code for _, _, code in _blocks(ROOT / "docs" / "testing.md") if "def frozen(" in code]
    assert len(blocks) == 1, "docs/testing.md shows the frozen-clock fixture once"
    return blocks[0]


def _pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a test module under a pytest of its own, with freezegun alone."""
    module = tmp_path / "test_frozen_fixture.py"
    module.write_text(source, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        # time-machine's plugin would make coalesce read the wall clock too: without it
        # the run sees what a freezegun-only project sees.
        [*PYTEST, "-p", "no:time_machine", str(module)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(240)
def test_frozen_clock_fixture_keeps_frozen_results_out_of_later_tests(tmp_path: Path) -> None:
    """S13: the testing page's fixture clears what was stored under freezegun; without it,
    the next test gets the result the frozen test stored."""
    block = _frozen_fixture_block()
    as_documented = _pytest(tmp_path, block)
    assert as_documented.returncode == 0, as_documented.stdout + as_documented.stderr
    assert "2 passed" in as_documented.stdout

    clearing = [line for line in block.splitlines() if "cache_clear()" in line]
    assert len(clearing) == 1
    without_clearing = _pytest(tmp_path, block.replace(clearing[0], "").rstrip() + "\n")
    assert without_clearing.returncode == 1, without_clearing.stdout
    assert "test_menu_after_the_freeze" in without_clearing.stdout
    assert "1 failed, 1 passed" in without_clearing.stdout


def _third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names} - {"coalesce"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_say_what_they_need_installed(example: Path) -> None:
    """V1: each example's docstring has the install command naming every package it imports."""
    docstring = ast.get_docstring(ast.parse(example.read_text(encoding="utf-8"))) or ""
    installs = [line for line in docstring.splitlines() if "pip install python-coalesce" in line]
    assert installs, f"{example.name}: no 'pip install python-coalesce ...' in its docstring"
    words = set(installs[0].replace("``", " ").split())
    missing = sorted(_third_party_imports(example) - words)
    assert not missing, f"{example.name} imports {missing}, which its install line omits"
