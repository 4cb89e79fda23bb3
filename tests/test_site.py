"""Tests of the built site in _build/html (``make book``; ``make test`` builds it first).

Static checks read the HTML; the browser checks open every page in headless Chromium at a
desktop and a phone width (tests/chromium.py). Without a built site, or without Chromium, the
tests are skipped and say why.
"""

import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

import chapter_cache
from chromium import DESKTOP, PHONE, Chromium, find_browser, site_pages

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "_build" / "html"
BUILT = (SITE / "index.html").is_file()
NOT_BUILT = pytest.mark.skip(reason="no built site in _build/html: run `make book` first")
PAGES = [p.relative_to(SITE).as_posix() for p in site_pages(SITE)] if BUILT else []
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("*.md") if chapter_cache.is_chapter(p))


def each(values):
    return values if values else [pytest.param(None, marks=NOT_BUILT)]


class _Page(HTMLParser):
    """Inline scripts, links, bibliography labels and citations of one page."""

    def __init__(self):
        super().__init__()
        self.inline_scripts, self.links = [], []
        self.labels: dict[str, str] = {}  # bibliography entry id -> label
        self.citations: list[tuple[str, list[tuple[str, str]]]] = []  # (text, [(href, link text)])
        self._stack = []
        self._script = self._entry = self._label = self._cite = self._link = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "script" and "src" not in attrs:
            self._script = []
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
            if self._cite is not None:
                self._link = [attrs["href"], ""]
        if tag == "div" and "citation" in classes:
            self._entry = attrs.get("id")
        if tag == "span" and "label" in classes and self._entry:
            self._label = ""
        if tag == "span" and "bibtex-citation" in classes:
            self._cite = ["", []]
        self._stack.append((tag, classes))

    def handle_endtag(self, tag):
        if not self._stack:
            return
        open_tag, classes = self._stack.pop()
        if tag == "script" and self._script is not None:
            self.inline_scripts.append("".join(self._script).strip())
            self._script = None
        if tag == "a" and self._link is not None:
            self._cite[1].append(tuple(self._link))
            self._link = None
        if open_tag == "span" and "label" in classes and self._label is not None:
            self.labels[self._entry] = self._label.strip("[]")
            self._label, self._entry = None, None
        if open_tag == "span" and "bibtex-citation" in classes and self._cite is not None:
            self.citations.append((self._cite[0], self._cite[1]))
            self._cite = None

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)
        if self._label is not None:
            self._label += data
        if self._cite is not None:
            self._cite[0] += data
        if self._link is not None:
            self._link[1] += data


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed((SITE / page).read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("page", each(PAGES))
def test_inline_scripts_appear_once(page):
    scripts = [s for s in parse(page).inline_scripts if s]
    repeated = sorted({s[:80] for s in scripts if scripts.count(s) > 1})
    assert not repeated, f"{page}: inline scripts repeated (a second `const` is a SyntaxError): {repeated}"


@pytest.mark.skipif(not BUILT, reason="no built site in _build/html: run `make book` first")
def test_bibliography_labels_match_the_author_year_citations():
    labels = parse("book/references.html").labels
    assert len(labels) >= 10
    assert all(re.fullmatch(r".+, (\d{4}[a-z]?|n\.d\.)", v) for v in labels.values()), labels
    checked = 0
    for page in PAGES:
        for text, links in parse(page).citations:
            for href, link_text in links:
                if "references.html#" not in href:
                    continue
                # A citation joins a name's parts with no-break spaces ("Van\xa0Loan"), the list
                # with plain ones: they print the same.
                text, link_text = text.replace("\xa0", " "), link_text.replace("\xa0", " ")
                label = labels[href.split("#")[1]].replace("\xa0", " ")
                authors, year = label.rsplit(", ", 1)
                # textual "Pascanu et al. [2013]" links the year; parenthetical links "Pascanu et al., 2013"
                assert link_text == label or (link_text == year and f"{authors} [{year}" in text), (
                    f"{page}: citation {text!r} links {link_text!r}, bibliography label {label!r}")
                checked += 1
    assert checked >= 20


@pytest.mark.parametrize("name", CHAPTERS)
@pytest.mark.skipif(not BUILT, reason="no built site in _build/html: run `make book` first")
def test_chapter_page_offers_the_executed_notebook(name):
    page = parse(f"book/{name}.html")
    assert f"../_sources/book/{name}.md" in page.links
    assert f"../_sources/book/{name}.ipynb" in page.links
    nb = nbformat.read(SITE / "_sources" / "book" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    chapter = chapter_cache.read_chapter(ROOT / "book" / f"{name}.md")
    source = [c.source for c in chapter.cells if c.cell_type == "code"]
    assert [c.source for c in code] == source
    assert all(c.execution_count for c in code), "the download holds the executed notebook"
    assert any(c.outputs for c in code)


@pytest.fixture(scope="module")
def browser():
    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium found: install Debian's `chromium` package (apt-get install chromium), "
                    "or set CHROMIUM to a Chromium-family browser, to run the browser tests")
    with Chromium(binary) as chromium:
        yield chromium


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
@pytest.mark.parametrize("page", each(PAGES))
def test_page_in_chromium(browser, page, size):
    """No console error, nothing loaded from another host, every formula rendered by MathJax and
    none cut off, every image loaded."""
    report = browser.inspect(SITE / page, SITE, *size)
    assert report.problems() == [], "\n".join([f"{page} at {size[0]} px:"] + report.problems())
    # The browser saw the page's content: every <img> of the HTML (the chapters' figures; a page
    # such as the one-page checklist may have none) and, on a chapter, its formulas.
    assert report.images == (SITE / page).read_text(encoding="utf-8").count("<img"), page
    if page.startswith("book/") and Path(page).stem in CHAPTERS:
        assert report.math_elements > 0
        source = (ROOT / page).with_suffix(".md").read_text(encoding="utf-8")
        code = "".join(re.findall(r"```\{code-cell\}.*?\n```", source, flags=re.S))
        if "plt." in code or "gl.plot." in code:  # a chapter that draws shows its figures
            assert report.images > 0
