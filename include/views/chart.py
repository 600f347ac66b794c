"""Grouped bar charts as inline SVG, drawn on the server: the page needs no script and no CDN."""

from __future__ import annotations

from html import escape

# (series key, label, colour): what a slot's recipients became.
SERIES = (
    ("scheduled", "scheduled", "#4c78a8"),
    ("planned", "planned, not sent", "#bab0ac"),
    ("delivered", "delivered", "#54a24b"),
    ("bounced", "bounced", "#e45756"),
)
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 860, 220, 56, 46, 24


def bar_chart(series: dict[str, dict[str, int]], title: str) -> str:
    """One group of bars per slot (``{slot label: {series key: recipients}}``), slots in order."""
    if not series:
        return f'<p class="empty">{escape(title)}: nothing planned.</p>'
    peak = max(max(v.values()) for v in series.values()) or 1
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - BOTTOM - TOP
    group_w = plot_w / len(series)
    bar_w = max(1.0, min(18.0, (group_w - 4) / len(SERIES)))
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{LEFT}" y="14" class="title">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 10}" y2="{TOP + plot_h}" stroke="#888"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end" class="axis">{peak:,}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" class="axis">0</text>',
    ]
    label_every = max(1, len(series) // 12)  # at most about a dozen slot labels under the axis
    for i, (slot, values) in enumerate(series.items()):
        x0 = LEFT + i * group_w + 2
        for j, (key, label, colour) in enumerate(SERIES):
            value = values.get(key, 0)
            h = plot_h * value / peak
            parts.append(
                f'<rect x="{x0 + j * bar_w:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(slot)} {label}: {value:,}</title></rect>'
            )
        if i % label_every == 0:
            parts.append(f'<text x="{x0:.1f}" y="{TOP + plot_h + 14}" class="axis">{escape(slot)}</text>')
    legend_x = LEFT
    for key, label, colour in SERIES:
        parts.append(
            f'<rect x="{legend_x}" y="{HEIGHT - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{HEIGHT - 5}" class="axis" data-series="{key}">{label}</text>'
        )
        legend_x += 150
    parts.append("</svg>")
    return "".join(parts)
