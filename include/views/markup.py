"""HTML by construction, for the Campaigns view: the only way its pages and charts make markup.

``el`` escapes every child that is not already ``Markup`` and every attribute value, so a value
from the warehouse can only ever be text: it cannot open an element or an attribute. Tag and
attribute names come from the code (checked), and an ``href`` must be a ``Path`` from ``path``,
whose segments are percent-encoded: a value cannot make a link that leaves the view.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any
from urllib.parse import quote

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*")
_VOID = frozenset({"meta"})
# A segment a browser resolves as a directory step (WHATWG URL: also %2e and %2E): no link to it.
_DOT_SEGMENTS = frozenset({"", ".", ".."})


class Markup(str):
    """Markup that ``el``, ``join`` or ``document`` made: every value in it is escaped."""

    __slots__ = ()


class Path(str):
    """A link target that ``path`` made: code's own prefix and suffix, values percent-encoded."""

    __slots__ = ()


def path(*segments: Any, prefix: str = "", suffix: str = "") -> Path | None:
    """``prefix`` + the segments percent-encoded (everything but RFC 3986's unreserved characters,
    ``/`` included) and joined by ``/`` + ``suffix``; None if a segment is empty, ``.`` or ``..``,
    which no encoding keeps in place."""
    texts = [str(s) for s in segments]
    if any(t in _DOT_SEGMENTS for t in texts):
        return None
    return Path(prefix + "/".join(quote(t, safe="") for t in texts) + suffix)


def text(value: Any) -> Markup:
    """A value as text (None as nothing)."""
    if isinstance(value, Markup):
        return value
    return Markup(escape("" if value is None else str(value)))


def join(children: Any) -> Markup:
    return Markup("".join(text(c) for c in children))


def el(tag: str, *children: Any, **attributes: Any) -> Markup:
    """``<tag attributes>children</tag>``. An attribute named ``class_`` is ``class``, ``_`` is ``-``
    (``data_day`` is ``data-day``); one that is None is left out."""
    if not _NAME.fullmatch(tag):
        raise ValueError(f"not a tag name: {tag!r}")
    attrs = []
    for key, value in attributes.items():
        name = key.rstrip("_").replace("_", "-")
        if not _NAME.fullmatch(name):
            raise ValueError(f"not an attribute name: {key!r}")
        if value is None:
            continue
        if name == "href" and not isinstance(value, Path):
            raise TypeError("an href is made by markup.path")
        attrs.append(f' {name}="{escape(str(value))}"')
    start = f"<{tag}{''.join(attrs)}>"
    if tag in _VOID:
        return Markup(start)
    return Markup(f"{start}{join(children)}</{tag}>")


def document(title: Any, style: str, *body: Any) -> Markup:
    """A whole page. ``style`` is the code's stylesheet (a constant: the CSP names its hash)."""
    if "<" in style:
        raise ValueError("a stylesheet with '<' could close its <style> element")
    head = Markup(f"<head>{el('meta', charset='utf-8')}{el('title', title)}<style>{style}</style></head>")
    return Markup(f'<!doctype html><html lang="en">{head}{el("body", *body)}</html>')
