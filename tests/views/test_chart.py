"""include/views/chart.py: server-drawn SVG, with slot labels only ever as text."""

from __future__ import annotations

from include.views.chart import bar_chart


def test_the_chart_is_svg_with_one_bar_per_series_and_slot_and_no_script():
    svg = bar_chart({"2026-12-01": {"scheduled": 10, "planned": 5, "delivered": 7, "bounced": 1}}, "Per day")
    assert svg.startswith("<svg") and svg.count("<rect") == 4 + 4  # bars + legend
    assert "<script" not in svg and "http://" not in svg.replace("http://www.w3.org/2000/svg", "")
    assert "nothing planned" in bar_chart({}, "Per day")


def test_a_slot_label_is_text():
    svg = bar_chart({'<script>"x"</script>': {"scheduled": 1}}, "Per day")

    assert "<script" not in svg and svg.count("&lt;script&gt;&quot;x&quot;&lt;/script&gt;") == 1 + 4
