"""Draw docs/_static/freshness-timeline.svg: what a caller gets, by the age of a result.

Plain SVG text, no dependencies: ``python docs/_static/make_freshness_timeline.py``
rewrites the picture next to this file (or at the path given as the one argument).
The example numbers are ``ttl=60, stale=30, stale_if_error=120, early=1``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import escape

TTL, STALE, STALE_IF_ERROR = 60, 30, 120
END = TTL + STALE_IF_ERROR + 45  # seconds shown on the axis

WIDTH, LEFT, RIGHT = 1000, 240, 30
ROW, TOP, BAR = 64, 70, 34

GREEN, AMBER, ORANGE, GREY, RED = "#4caf50", "#ffb300", "#fb8c00", "#9e9e9e", "#e53935"
INK, FAINT = "#212121", "#616161"


def x(seconds: float) -> float:
    """Where ``seconds`` after the result was stored falls on the picture."""
    return LEFT + (WIDTH - LEFT - RIGHT) * seconds / END


def text(
    px: float, py: float, words: str, *, size: int = 13, anchor: str = "start", **style: str
) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in style.items())
    return (
        f'<text x="{px:.1f}" y="{py:.1f}" font-size="{size}" text-anchor="{anchor}"'
        f"{extra}>{escape(words)}</text>"
    )


def band(start: float, end: float, row: int, colour: str, label: str, *, dark: bool = False) -> str:
    """A bar from ``start`` to ``end`` seconds on ``row``, with its label inside."""
    top = TOP + row * ROW
    left, right = x(start), x(end)
    fill = "#ffffff" if dark else INK
    return "\n".join(
        [
            f'<rect x="{left:.1f}" y="{top}" width="{right - left:.1f}" height="{BAR}" '
            f'rx="4" fill="{colour}"/>',
            text((left + right) / 2, top + BAR / 2 + 5, label, anchor="middle", fill=fill),
        ]
    )


def row_title(row: int, title: str, note: str) -> str:
    top = TOP + row * ROW
    return "\n".join(
        [
            text(LEFT - 12, top + 15, title, size=14, anchor="end", font_weight="bold"),
            text(LEFT - 12, top + 31, note, size=11, anchor="end", fill=FAINT),
        ]
    )


def marker(seconds: float, label: str, rows: int) -> str:
    px = x(seconds)
    bottom = TOP + rows * ROW - (ROW - BAR) + 8
    return "\n".join(
        [
            f'<line x1="{px:.1f}" y1="{TOP - 18}" x2="{px:.1f}" y2="{bottom}" '
            f'stroke="{INK}" stroke-width="1.5" stroke-dasharray="5 4"/>',
            text(px, TOP - 24, label, anchor="middle", font_weight="bold"),
        ]
    )


def build() -> str:
    rows = 3
    height = TOP + rows * ROW + 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" '
        f'role="img" aria-labelledby="title">',
        '<title id="title">What a caller gets, by the age of the cached result</title>',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        # early=: a ramp at the end of the fresh part, drawn under the rows.
        '<defs><linearGradient id="early" x1="0" x2="1" y1="0" y2="0">'
        f'<stop offset="0" stop-color="{GREEN}"/>'
        f'<stop offset="1" stop-color="{AMBER}"/></linearGradient></defs>',
    ]
    # Markers first: the bars cover them.
    parts.append(marker(0, "stored", rows))
    parts.append(marker(TTL, "ttl", rows))
    parts.append(marker(TTL + STALE, "ttl + stale", rows))
    parts.append(marker(TTL + STALE_IF_ERROR, "ttl + stale_if_error", rows))
    # Row 0: ttl alone, and early=.
    parts.append(row_title(0, "ttl=60", "with early=1: a hit may refresh sooner"))
    parts.append(band(0, TTL - 18, 0, GREEN, "fresh: at once"))
    parts.append(band(TTL - 18, TTL, 0, "url(#early)", "early?"))
    parts.append(band(TTL, END, 0, GREY, "expired: callers wait for ONE new execution", dark=True))
    # Row 1: stale=.
    parts.append(row_title(1, "ttl=60, stale=30", "stale-while-revalidate"))
    parts.append(band(0, TTL, 1, GREEN, "fresh: returned at once"))
    parts.append(band(TTL, TTL + STALE, 1, AMBER, "old, at once"))
    parts.append(band(TTL + STALE, END, 1, GREY, "callers wait for ONE new execution", dark=True))
    parts.append(
        text(
            x(TTL + STALE / 2),
            TOP + ROW + BAR + 16,
            "+ 1 refresh",
            size=11,
            anchor="middle",
            fill=FAINT,
        )
    )
    # Row 2: stale_if_error=.
    parts.append(row_title(2, "ttl=60, stale_if_error=120", "when the recomputation fails"))
    parts.append(band(0, TTL, 2, GREEN, "fresh: returned at once"))
    parts.append(
        band(
            TTL,
            TTL + STALE_IF_ERROR,
            2,
            ORANGE,
            "failed? old result served; error logged + counted",
        )
    )
    parts.append(band(TTL + STALE_IF_ERROR, END, 2, RED, "error raised", dark=True))
    axis_y = TOP + rows * ROW - (ROW - BAR) + 30
    parts.append(
        f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - RIGHT}" y2="{axis_y}" '
        f'stroke="{INK}" stroke-width="1.5"/>'
    )
    for second in range(0, END + 1, 30):
        px = x(second)
        parts.append(
            f'<line x1="{px:.1f}" y1="{axis_y - 4}" x2="{px:.1f}" y2="{axis_y + 4}" '
            f'stroke="{INK}"/>'
        )
        parts.append(text(px, axis_y + 18, f"{second} s", size=11, anchor="middle", fill=FAINT))
    parts.append(
        text(LEFT - 30, axis_y + 18, "age of the result", size=11, anchor="end", fill=FAINT)
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("freshness-timeline.svg")
    out.write_text(build(), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv)
