"""The run's output: markdown tables (terminal and docs/benchmarks.md) and a chart."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

from benchmarks import _peers
from benchmarks._bars import Check
from benchmarks._method import Table, is_ours

START = "<!-- benchmark results start: written by `python -m benchmarks`, do not edit -->"
END = "<!-- benchmark results end -->"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _commit(root: Path) -> str:
    """The commit measured, and whether the package itself had uncommitted changes."""
    commit = _git(root, "rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    changed = _git(root, "status", "--porcelain", "--", "coalesce")
    return f"{commit} with uncommitted changes to coalesce/" if changed else commit


def machine(root: Path, command: str) -> list[str]:
    """Markdown lines that say where, when and with what the numbers were taken."""
    versions = ", ".join(f"{name} {_peers.version(name)}" for name in _peers.DISTRIBUTIONS)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- Command: `{command}` ({now}, coalesce at `{_commit(root)}`)",
        f"- Machine: {_cpu()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        f"- Versions: {versions}",
    ]


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(table: Table, overhead_base: str | None = None) -> list[str]:
    """One scenario as a markdown table, sorted fastest first, with notes and errors below."""
    lines = [f"### {table.title}", ""]
    header = ["contender"]
    if table.unit:
        header += [f"median {table.unit}", "spread"]
    if table.baseline and table.samples.get(table.baseline):
        header.append(f"÷ {table.baseline}")
    if overhead_base and table.samples.get(overhead_base):
        header.append(f"over {overhead_base}")
    header += list(table.extra_columns)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
    names = sorted(table.samples, key=table.median) if table.unit else list(table.extra)
    for name in names:
        cells = [f"**{name}**" if is_ours(name) else name]
        if table.unit:
            cells += [_fmt(table.median(name)), f"±{table.spread(name) * 100:.0f}%"]
        if table.baseline and table.samples.get(table.baseline):
            cells.append(f"{table.ratio(name, table.baseline):.3f}x")
        if overhead_base and table.samples.get(overhead_base):
            cells.append(f"{table.overhead(name, overhead_base):.0f}")
        row = table.extra.get(name, {})
        cells += [row.get(column, "") for column in table.extra_columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    notes = [*table.notes, *(f"{n}: error, {e}" for n, e in table.errors.items())]
    if notes:
        lines += [f"- {note}" for note in notes] + [""]
    return lines


def render_checks(checks: list[Check]) -> list[str]:
    lines = ["| bar | what | measured | limit | result |", "| --- | --- | --- | --- | --- |"]
    for c in checks:
        limit = f"{c.limit} (stretch)" if c.stretch else c.limit
        lines.append(f"| {c.bar} | {c.what} | {c.measured} | {limit} | {c.status} |")
    return [*lines, ""]


OVERHEAD_BASES = {
    "sync_hit": "plain function",
    "sync_hit_kw": "plain function",
    "async_hit": "plain coroutine",
    "sync_dedup": "plain function",
    "async_dedup": "plain coroutine",
    "sync_hit_anatomy": "plain function",
    "async_hit_anatomy": "plain coroutine",
}


def render(tables: list[Table], checks: list[Check], header: list[str], chart: str | None) -> str:
    """The whole results block, as markdown."""
    lines = [*header, "", "### The bars (SPEC section 7)", "", *render_checks(checks)]
    if chart:
        lines += [f"![Benchmark results: medians per contender]({chart})", ""]
    for table in tables:
        lines += render_table(table, OVERHEAD_BASES.get(table.key))
    return "\n".join(lines).rstrip() + "\n"


def write_docs(page: Path, block: str) -> None:
    """Put ``block`` between the markers of ``page``, keeping the text around them."""
    text = page.read_text() if page.exists() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
    else:
        before = text or "# Benchmarks\n\n"
        after = "\n"
    page.write_text(f"{before}{START}\n\n{block}\n{END}{after}")


_CHARTED = (
    "sync_hit",
    "sync_hit_kw",
    "async_hit",
    "sync_dedup",
    "async_dedup",
    "async_stampede_1x10000",
    "async_stampede_100x100",
    "thread_stampede_1x32",
)


def chart(tables: dict[str, Table], path: Path) -> bool:
    """Draw one horizontal bar panel per timed scenario into ``path`` (PNG or SVG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [tables[k] for k in _CHARTED if k in tables and tables[k].samples]
    if not shown:
        return False
    cols = 2
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.9 * rows), squeeze=False)
    for ax, table in zip(axes.flat, shown, strict=False):
        names = sorted(table.samples, key=table.median, reverse=True)
        values = [table.median(n) for n in names]
        colours = [
            "#d1495b"
            if is_ours(n)
            else ("#8d99ae" if n.startswith(("plain", "bare")) else "#2e86ab")
            for n in names
        ]
        ax.barh(names, values, color=colours)
        if max(values) / max(min(values), 1e-9) > 30:
            ax.set_xscale("log")
        ax.set_title(table.title.replace("`", ""), fontsize=10)
        ax.set_xlabel(table.unit, fontsize=8)
        ax.tick_params(labelsize=8)
        for y, value in enumerate(values):
            ax.text(value, y, f" {_fmt(value)}", va="center", fontsize=7)
        ax.margins(x=0.18)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle("coalesce beside its peers (median; shorter is better)", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
