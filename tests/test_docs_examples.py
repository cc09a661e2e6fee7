"""Every Python example of the documentation runs as written, and the API reference is whole.

Each ```python block of each ``docs/*.md`` page runs in order, the blocks of one page
sharing one namespace (a page reads top to bottom). A block fenced ```python no-run
shows code that needs something a test cannot give it (a Flask or Django project); it
must still compile, and every name it imports from coalesce must exist. A block fenced
```python fragment continues an earlier block of its page and runs after it; every
other block also runs on its own (``tests/test_day_one_docs.py``). The README's
examples are run by ``tests/test_readme.py``.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import pkgutil
import re
import sys
import textwrap
import types
from pathlib import Path

import pytest

import coalesce

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Pages whose examples need more than this test has: (test file, test, why).
RUN_ELSEWHERE = {
    "redis.md": (
        "tests/test_redis.py",
        "test_docs_redis_examples_run",
        "needs a real Redis; that test runs these blocks against a redis-server it starts",
    ),
}

# A fence may be indented (inside a list item); its code is then indented as much.
_BLOCK = re.compile(r"^( *)```python([^\n]*)\n(.*?)^\1```", re.DOTALL | re.MULTILINE)


def _blocks(page: Path) -> list[tuple[int, str, str]]:
    """``(line, info, code)`` of every python block of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    return [
        (
            text.count("\n", 0, match.start()) + 1,
            match.group(2).strip(),
            textwrap.dedent(match.group(3)),
        )
        for match in _BLOCK.finditer(text)
    ]


def _pages() -> list[Path]:
    return sorted(page for page in DOCS.glob("*.md") if _blocks(page))


def _check_imports(code: str, where: str) -> None:
    """Every ``from coalesce... import name`` of ``code`` names something that exists."""
    for node in ast.walk(ast.parse(code, where)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("coalesce"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"


@pytest.mark.parametrize(
    "page", [p for p in _pages() if p.name not in RUN_ELSEWHERE], ids=lambda p: p.name
)
def test_docs_page_examples_run(page: Path) -> None:
    """S1: every python block of this docs page runs as written, in order, in one namespace."""
    name = f"docs_example_{page.stem}"
    module = types.ModuleType(name)
    sys.modules[name] = module  # so classes defined in an example have a home module
    try:
        for line, info, code in _blocks(page):
            where = f"docs/{page.name}:{line}"
            compiled = compile(code, where, "exec")
            if info == "no-run":
                _check_imports(code, where)
            else:
                assert info in ("", "fragment"), (
                    f"{where}: unknown fence option {info!r} (only 'no-run' or 'fragment')"
                )
                exec(compiled, module.__dict__)
    finally:
        del sys.modules[name]


def test_docs_pages_run_elsewhere_are_run_there() -> None:
    """R1: the pages skipped here have their examples run by the test named for them."""
    for page, (path, test, _why) in RUN_ELSEWHERE.items():
        assert (DOCS / page).exists(), page
        source = (ROOT / path).read_text(encoding="utf-8")
        assert f"def {test}(" in source, f"{path} has no {test}"
        assert f'"docs" / "{page}"' in source, f"{path}::{test} does not read docs/{page}"


def _documented() -> set[str]:
    """The objects the API reference names in its autodoc and py directives."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    names = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", text, flags=re.MULTILINE))
    # A hand-written entry names its module in a :module: option.
    for name, module in re.findall(
        r"^\.\. py:\w+:: (\w+)\n(?:   :\w+:.*\n)*?   :module: ([\w.]+)", text, flags=re.MULTILINE
    ):
        names.add(f"{module}.{name}")
    return names


def _public_classes(module: types.ModuleType) -> set[str]:
    return {
        f"{module.__name__}.{name}"
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and not name.startswith("_") and obj.__module__ == module.__name__
    }


def test_api_reference_lists_every_public_name() -> None:
    """S1: docs/api.md documents every name of coalesce.__all__ and of the public modules."""
    documented = _documented()
    expected = {f"coalesce.{name}" for name in coalesce.__all__}
    for name in ("coalesce.redis", "coalesce.asgi", "coalesce.wsgi"):
        module = importlib.import_module(name)
        expected |= {f"{name}.{member}" for member in module.__all__}
        expected |= _public_classes(module)
    missing = sorted(expected - documented)
    assert not missing, f"docs/api.md does not document {missing}"
    unknown = sorted(name for name in documented if not _resolves(name))
    assert not unknown, f"docs/api.md documents names that do not exist: {unknown}"


def _resolves(dotted: str) -> bool:
    if dotted in sys.modules:
        return True
    module_name, _, attr = dotted.rpartition(".")
    try:
        return hasattr(importlib.import_module(module_name), attr)
    except (ImportError, ValueError):
        return False


def test_readme_docs_command_is_the_one_ci_runs() -> None:
    """S1: the README's docs command builds strictly, and CI runs the same build."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    docs = [c.strip() for c in commands if "sphinx" in c]
    assert len(docs) == 1, "the README shows one docs command"
    install, _, build = docs[0].partition(" && ")
    assert install == 'python -m pip install -e ".[docs]"'
    assert {"-W", "-n", "--keep-going"} <= set(build.split()), "warnings and broken refs fail"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert build in ci, "CI builds the docs with the README's command"


def test_docstring_examples_run() -> None:
    """S1: the ``>>>`` examples in the docstrings of every coalesce module hold."""
    tried = 0
    for info in pkgutil.iter_modules(coalesce.__path__, "coalesce."):
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"{info.name}: {result.failed} docstring examples failed"
        tried += result.attempted
    assert tried, "the docstrings have examples"
