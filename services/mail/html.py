"""HTML mail bodies to readable plain text, with the standard library's `html.parser`.

Why not a library: the well-known converter (html2text) is GPL-3.0, which this Apache-2.0 project
cannot ship as a dependency, and mail HTML needs only a small part of a converter: drop scripts,
styles and the head, turn blocks and `<br>` into line breaks, list items into `- ` lines, keep link
targets, and decode entities. `html.parser` is tolerant of broken markup and never raises on it.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCKS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "table",
        "tr",
        "ul",
        "ol",
        "blockquote",
        "pre",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "address",
        "center",
        "form",
        "dl",
        "dt",
        "dd",
    }
)
_SKIP = frozenset({"script", "style", "head", "title", "noscript", "template"})


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.quote_depth = 0
        self.href: str | None = None
        self.link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a":
            self.href = dict(attrs).get("href")
            self.link_text = []
        elif tag in _BLOCKS:
            self.out.append("\n\n" if tag in ("p", "h1", "h2", "h3", "table") else "\n")
            if tag == "blockquote":
                self.quote_depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "hr"):
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "a":
            text = "".join(self.link_text).strip()
            href = self.href or ""
            if href and href.startswith(("http:", "https:")) and href != text:
                self.out.append(f" ({href})")
            self.href = None
        elif tag in _BLOCKS:
            if tag == "blockquote":
                self.quote_depth = max(0, self.quote_depth - 1)
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.href is not None:
            self.link_text.append(data)
        if self.quote_depth:
            data = data.replace("\n", " ")
            self.out.append("> " * self.quote_depth + data if data.strip() else data)
            return
        self.out.append(data)


def html_to_text(html: str) -> str:
    """Readable text of an HTML document or fragment (best effort; never raises on bad markup)."""
    collector = _TextCollector()
    try:
        collector.feed(html)
        collector.close()
    except Exception:  # html.parser is lenient; this is a last resort for pathological input
        return re.sub(r"<[^>]*>", " ", html)
    text = "".join(collector.out).replace("\xa0", " ")
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
