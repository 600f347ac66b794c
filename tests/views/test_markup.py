"""include/views/markup.py: what it escapes, what it refuses, and the links it can make."""

from __future__ import annotations

import pytest

from include.views.markup import Markup, Path, document, el, join, path, text


class TestEl:
    def test_text_children_and_attribute_values_are_escaped_markup_children_are_not(self):
        cell = el("td", "<b>&", el("span", "ok", class_="badge x"), None, 3, data_day='"><img src=x>')

        assert cell == (
            '<td data-day="&quot;&gt;&lt;img src=x&gt;">&lt;b&gt;&amp;<span class="badge x">ok</span>3</td>'
        )
        assert isinstance(cell, Markup) and join(["<", cell]) == "&lt;" + cell

    def test_a_none_attribute_is_left_out_and_names_are_spelled_as_html_and_svg_spell_them(self):
        assert el("text", "t", class_=None, text_anchor="end", viewBox="0 0 1 1") == (
            '<text text-anchor="end" viewBox="0 0 1 1">t</text>'
        )
        assert el("meta", charset="utf-8") == '<meta charset="utf-8">'

    @pytest.mark.parametrize(
        "tag, attributes",
        [("td onclick", {}), ("script>", {}), ("td", {"on click": "x"}), ("td", {"x=y": "1"})],
    )
    def test_a_tag_or_attribute_name_that_is_not_a_name_is_refused(self, tag, attributes):
        with pytest.raises(ValueError):
            el(tag, **attributes)

    def test_an_href_must_come_from_path(self):
        with pytest.raises(TypeError):
            el("a", "x", href="//other.example/x")
        assert el("a", "x", href=path("a b")) == '<a href="a%20b">x</a>'

    def test_a_str_that_only_looks_like_markup_is_escaped(self):
        assert text("<i>") == "&lt;i&gt;" and text(None) == "" and text(Markup("<i>")) == "<i>"


class TestPath:
    @pytest.mark.parametrize(
        "segment, encoded",
        [
            ("//other.example/x", "%2F%2Fother.example%2Fx"),
            ("javascript:alert(1)", "javascript%3Aalert%281%29"),
            ("\\\\other.example", "%5C%5Cother.example"),
            ("\t//x", "%09%2F%2Fx"),
            ("%2e%2e", "%252e%252e"),
            ("a.b_c-d~e", "a.b_c-d~e"),
        ],
    )
    def test_everything_but_unreserved_characters_is_percent_encoded(self, segment, encoded):
        assert path(segment) == encoded and isinstance(path(segment), Path)

    @pytest.mark.parametrize("segment", ["", ".", ".."])
    def test_a_segment_that_a_browser_resolves_as_a_step_makes_no_path(self, segment):
        assert path(segment) is None and path("a", segment, prefix="/dags/") is None

    def test_prefix_and_suffix_are_the_codes_own(self):
        assert path("a/b", 3, prefix="/dags/", suffix="/rejected.csv") == "/dags/a%2Fb/3/rejected.csv"
        assert path(prefix="./") == "./"


def test_a_document_has_its_stylesheet_and_refuses_one_that_could_close_its_element():
    page = document("<T>", "b { x: 1 }", el("p", "hi"))

    assert page.startswith('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>&lt;T&gt;')
    assert "<style>b { x: 1 }</style></head><body><p>hi</p></body></html>" in page
    with pytest.raises(ValueError):
        document("t", "</style><script>")
