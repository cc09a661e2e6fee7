"""Draw docs/_static/fleet-timeline.svg: four processes sharing one Redis around an expiry.

Plain SVG text, no dependencies: ``python docs/_static/make_fleet_timeline.py``
rewrites the picture next to this file (or at the path given as the one argument).
The example is ``@singleflight(ttl=60, stale=30, backend=RedisBackend(...))`` called
by four worker processes; times are seconds after the value was stored.
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import escape

TTL, STALE = 60, 30
START, END = 40, 100  # seconds shown on the axis
REFRESH = (62, 70)  # the one refresh: starts at the first stale call, lands at 70 s

WIDTH, LEFT, RIGHT = 1000, 200, 30
ROW, TOP, BAR = 58, 90, 30

GREEN, AMBER, BLUE, GREY = "#4caf50", "#ffb300", "#1e88e5", "#9e9e9e"
INK, FAINT = "#212121", "#616161"

# Per process: (the times it is called, what it does at each call).
CALLS = {
    "process A": [(45, "hit"), (62, "stale+lease"), (75, "hit")],
    "process B": [(50, "hit"), (64, "stale"), (72, "hit")],
    "process C": [(63, "stale"), (66, "stale"), (80, "hit")],
    "process D": [(55, "hit"), (68, "stale"), (90, "hit")],
}


def x(seconds: float) -> float:
    """Where ``seconds`` after the value was stored falls on the picture."""
    return LEFT + (WIDTH - LEFT - RIGHT) * (seconds - START) / (END - START)


def text(
    px: float, py: float, words: str, *, size: int = 13, anchor: str = "start", **style: str
) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in style.items())
    return (
        f'<text x="{px:.1f}" y="{py:.1f}" font-size="{size}" text-anchor="{anchor}"'
        f"{extra}>{escape(words)}</text>"
    )


def rect(start: float, end: float, top: float, height: float, colour: str) -> str:
    left, right = x(start), x(end)
    return (
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" height="{height}" '
        f'rx="4" fill="{colour}"/>'
    )


def marker(seconds: float, label: str, bottom: float) -> str:
    px = x(seconds)
    return "\n".join(
        [
            f'<line x1="{px:.1f}" y1="{TOP - 40}" x2="{px:.1f}" y2="{bottom}" '
            f'stroke="{INK}" stroke-width="1.5" stroke-dasharray="5 4"/>',
            text(px, TOP - 46, label, anchor="middle", font_weight="bold"),
        ]
    )


def build() -> str:
    rows = len(CALLS) + 1
    height = TOP + rows * ROW + 90
    bottom = TOP + rows * ROW - (ROW - BAR) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" '
        f'role="img" aria-labelledby="title">',
        '<title id="title">Four processes around an expiry with ttl=60, stale=30</title>',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    parts.append(marker(TTL, "ttl: stale from here", bottom))
    parts.append(marker(REFRESH[1], "refresh lands", bottom))
    parts.append(marker(TTL + STALE, "ttl + stale", bottom))
    # Row 0: what Redis holds.
    parts.append(text(LEFT - 12, TOP + 20, "Redis", size=14, anchor="end", font_weight="bold"))
    parts.append(rect(START, TTL, TOP, BAR, GREEN))
    parts.append(rect(TTL, REFRESH[1], TOP, BAR, AMBER))
    parts.append(rect(REFRESH[1], END, TOP, BAR, GREEN))
    parts.append(text(x(50), TOP + 20, "value v1 (stored at 0 s)", anchor="middle"))
    parts.append(text(x(66), TOP + 20, "v1, stale", anchor="middle"))
    parts.append(text(x(85), TOP + 20, "value v2 (stored at 70 s)", anchor="middle"))
    for row, (name, calls) in enumerate(CALLS.items(), 1):
        top = TOP + row * ROW
        parts.append(text(LEFT - 12, top + 20, name, size=14, anchor="end", font_weight="bold"))
        parts.append(
            f'<line x1="{LEFT}" y1="{top + BAR / 2}" x2="{WIDTH - RIGHT}" y2="{top + BAR / 2}" '
            f'stroke="{GREY}" stroke-width="1"/>'
        )
        for at, what in calls:
            if what == "stale+lease":
                parts.append(rect(REFRESH[0], REFRESH[1], top + 4, BAR - 8, BLUE))
                parts.append(
                    text(
                        x(66),
                        top + BAR / 2 + 4,
                        "the ONE refresh",
                        size=11,
                        anchor="middle",
                        fill="#ffffff",
                    )
                )
            colour = GREEN if what == "hit" else AMBER
            parts.append(
                f'<circle cx="{x(at):.1f}" cy="{top + BAR / 2}" r="7" fill="{colour}" '
                f'stroke="{INK}" stroke-width="1"/>'
            )
    legend_y = TOP + rows * ROW + 20
    parts.append(f'<circle cx="{LEFT + 8}" cy="{legend_y}" r="7" fill="{GREEN}" stroke="{INK}"/>')
    parts.append(text(LEFT + 22, legend_y + 5, "fresh value, at once (a hit)", size=12))
    parts.append(f'<circle cx="{LEFT + 260}" cy="{legend_y}" r="7" fill="{AMBER}" stroke="{INK}"/>')
    parts.append(
        text(LEFT + 274, legend_y + 5, "stale value, at once: no wait on the refresh", size=12)
    )
    parts.append(rect(START + 37.5, START + 40, legend_y - 7, 14, BLUE))
    parts.append(
        text(x(START + 40) + 8, legend_y + 5, "refresh: the key's lease, one in the fleet", size=12)
    )
    axis_y = legend_y + 30
    parts.append(
        f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - RIGHT}" y2="{axis_y}" '
        f'stroke="{INK}" stroke-width="1.5"/>'
    )
    for second in range(START, END + 1, 10):
        px = x(second)
        parts.append(
            f'<line x1="{px:.1f}" y1="{axis_y - 4}" x2="{px:.1f}" y2="{axis_y + 4}" '
            f'stroke="{INK}"/>'
        )
        parts.append(text(px, axis_y + 18, f"{second} s", size=11, anchor="middle", fill=FAINT))
    parts.append(text(LEFT - 12, axis_y + 18, "since stored", size=11, anchor="end", fill=FAINT))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("fleet-timeline.svg")
    out.write_text(build(), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv)
