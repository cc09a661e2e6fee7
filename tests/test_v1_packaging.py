"""SPEC V1: the distribution is publishable by its own name, with its licence, and its
README reads well on PyPI."""

from __future__ import annotations

import configparser
import email.parser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = configparser.ConfigParser()
SETUP.read(ROOT / "setup.cfg", encoding="utf-8")
NAME = SETUP["metadata"]["name"]


def _pip_installs() -> list[tuple[str, str]]:
    """``(file, command)`` for every ``pip install`` the README, docs and examples show."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found += [(path.name, m) for m in re.findall(r"pip install [^\n`]*", path.read_text())]
    for path in sorted((ROOT / "examples").glob("*.py")):
        found += [(path.name, m) for m in re.findall(r"pip install [^\n`]*", path.read_text())]
    return found


def test_the_distribution_name_is_not_the_import_name_taken_on_pypi() -> None:
    """V1: the distribution is not called "coalesce" (an unrelated project on PyPI)."""
    assert NAME == "python-coalesce"
    assert "the import name is `coalesce`" in (ROOT / "README.md").read_text()


def _targets(command: str) -> list[str]:
    """What ``pip install ...`` installs: its arguments up to a comment or &&, options dropped."""
    words = command.split("#")[0].split("&&")[0].split()[2:]
    return [word.strip("\"'") for word in words if not word.startswith("-")]


def test_every_install_command_names_the_distribution() -> None:
    """V1: each pip install in the docs installs this distribution by name or from a clone."""
    installs = _pip_installs()
    assert len(installs) >= 5
    wrong = []
    for where, command in installs:
        packages = {target.split("[")[0] for target in _targets(command)}
        if "coalesce" in packages or not packages & {NAME, "."}:
            wrong.append(f"{where}: {command}")
    assert not wrong, f"install commands that do not install {NAME}: {wrong}"


def test_readme_has_no_links_that_break_on_pypi() -> None:
    """V1: the README links nowhere relative (PyPI shows it without the repository)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)]*)\)|<a\s[^>]*href=\"([^\"]*)\"|^\[[^\]]+\]:\s*(\S+)", readme)
    relative = [t for link in links for t in link if t and "://" not in t]
    assert not relative, f"relative links in the README: {relative}"


def test_license_file_is_mit_and_named_in_the_metadata() -> None:
    """V1: LICENSE is the MIT licence the metadata declares, and setup.cfg ships it."""
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the coalesce authors" in text
    assert SETUP["metadata"]["license_expression"] == "MIT"
    assert SETUP["metadata"]["license_files"].split() == ["LICENSE"]


@pytest.mark.timeout(300)
def test_the_wheel_carries_license_and_py_typed(tmp_path: Path) -> None:
    """V1: a wheel built from the sources holds LICENSE, py.typed and the right metadata."""
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "_build"
        ),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("python_coalesce-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    assert "coalesce/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]
    assert metadata["Name"] == NAME
    assert metadata["License-Expression"] == "MIT"
    assert "](docs/" not in metadata.get_payload()
