"""Grouped bar charts as inline SVG, drawn on the server: the page needs no script and no CDN.

Made by ``markup.el`` like the pages, so a slot label from the warehouse is only ever text.
"""

from __future__ import annotations

from include.views.markup import Markup, el

# (series key, label, colour): what a slot's recipients became.
SERIES = (
    ("scheduled", "scheduled", "#4c78a8"),
    ("planned", "planned, not sent", "#bab0ac"),
    ("delivered", "delivered", "#54a24b"),
    ("bounced", "bounced", "#e45756"),
)
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 860, 220, 56, 46, 24


def bar_chart(series: dict[str, dict[str, int]], title: str) -> Markup:
    """One group of bars per slot (``{slot label: {series key: recipients}}``), slots in order."""
    if not series:
        return el("p", f"{title}: nothing planned.", class_="empty")
    peak = max(max(v.values()) for v in series.values()) or 1
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - BOTTOM - TOP
    group_w = plot_w / len(series)
    bar_w = max(1.0, min(18.0, (group_w - 4) / len(SERIES)))
    parts = [
        el("text", title, x=LEFT, y=14, class_="title"),
        el("line", x1=LEFT, y1=TOP + plot_h, x2=WIDTH - 10, y2=TOP + plot_h, stroke="#888"),
        el("text", f"{peak:,}", x=LEFT - 6, y=TOP + 4, text_anchor="end", class_="axis"),
        el("text", "0", x=LEFT - 6, y=TOP + plot_h, text_anchor="end", class_="axis"),
    ]
    label_every = max(1, len(series) // 12)  # at most about a dozen slot labels under the axis
    for i, (slot, values) in enumerate(series.items()):
        x0 = LEFT + i * group_w + 2
        for j, (key, label, colour) in enumerate(SERIES):
            value = values.get(key, 0)
            h = plot_h * value / peak
            parts.append(
                el(
                    "rect",
                    el("title", f"{slot} {label}: {value:,}"),
                    x=f"{x0 + j * bar_w:.1f}",
                    y=f"{TOP + plot_h - h:.1f}",
                    width=f"{bar_w:.1f}",
                    height=f"{h:.1f}",
                    fill=colour,
                )
            )
        if i % label_every == 0:
            parts.append(el("text", slot, x=f"{x0:.1f}", y=TOP + plot_h + 14, class_="axis"))
    for k, (key, label, colour) in enumerate(SERIES):
        x = LEFT + k * 150
        parts.append(el("rect", x=x, y=HEIGHT - 14, width=10, height=10, fill=colour))
        parts.append(el("text", label, x=x + 14, y=HEIGHT - 5, class_="axis", data_series=key))
    return el(
        "svg",
        *parts,
        class_="chart",
        role="img",
        aria_label=title,
        viewBox=f"0 0 {WIDTH} {HEIGHT}",
        width=WIDTH,
        height=HEIGHT,
        xmlns="http://www.w3.org/2000/svg",
    )
