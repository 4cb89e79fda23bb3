"""Check that a built site loads nothing from other hosts and that every local resource exists.

Usage: python tests/check_offline.py _build/html

Links a reader clicks (``<a href="https://...">``) are fine; what a page *loads* (scripts,
styles, fonts, images, frames, and ``url(...)``/``@import`` inside CSS) must be local.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

# (tag, attribute) pairs whose URL the browser fetches while rendering the page.
_LOADED = {
    ("script", "src"),
    ("img", "src"),
    ("iframe", "src"),
    ("source", "src"),
    ("video", "src"),
    ("audio", "src"),
    ("embed", "src"),
    ("object", "data"),
}
_LINK_RELS_LOADED = {"stylesheet", "preload", "modulepreload", "icon", "shortcut", "manifest", "prefetch"}
_CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""")


def is_remote(url: str) -> bool:
    """True for a URL that points at another host (``http:``, ``https:`` or ``//host``)."""
    parsed = urlparse(url.strip())
    return parsed.scheme in ("http", "https") or url.strip().startswith("//")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for t, attr in _LOADED:
            if tag == t and attrs.get(attr):
                self.loaded.append(attrs[attr])
        if tag == "link" and attrs.get("href"):
            rels = set((attrs.get("rel") or "").lower().split())
            if rels & _LINK_RELS_LOADED:
                self.loaded.append(attrs["href"])
        if attrs.get("style"):
            self.loaded.extend(_CSS_URL.findall(attrs["style"]))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.loaded.extend(_CSS_URL.findall(data))


def loaded_urls(html: str) -> list[str]:
    """Every URL that rendering ``html`` fetches (scripts, styles, images, frames, CSS urls)."""
    collector = _Collector()
    collector.feed(html)
    return collector.loaded


def _pages(site: Path) -> list[Path]:
    # Themes copy their Jinja templates (*.html) into _static/: those are not pages.
    return [p for p in sorted(site.rglob("*.html")) if "_static" not in p.relative_to(site).parts]


def problems(site: Path) -> list[str]:
    """Remote loads and missing local files, one message each."""
    found = []
    for page in _pages(site):
        for url in loaded_urls(page.read_text(encoding="utf-8", errors="replace")):
            if is_remote(url):
                found.append(f"{page.relative_to(site)}: loads {url}")
                continue
            parsed = urlparse(url)
            if parsed.scheme or not parsed.path:  # data:, blob:, javascript:, or a pure anchor
                continue
            target = (page.parent / unquote(parsed.path)).resolve()
            if not target.exists():
                found.append(f"{page.relative_to(site)}: missing local file {url}")
    for sheet in sorted(site.rglob("*.css")):
        for url in _CSS_URL.findall(sheet.read_text(encoding="utf-8", errors="replace")):
            if is_remote(url):
                found.append(f"{sheet.relative_to(site)}: loads {url}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    site = Path(argv[1])
    if not (site / "index.html").exists():
        print(f"no index.html in {site}: build the site first")
        return 2
    found = problems(site)
    for line in found:
        print(line)
    pages = len(_pages(site))
    print(f"offline check: {pages} pages, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
