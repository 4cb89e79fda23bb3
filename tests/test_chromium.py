"""Tests for tests/chromium.py: the page inspection finds each kind of defect it reports, and
nothing on a clean page. Pages are written to a temporary folder; MathJax is the vendored copy."""

import os
from pathlib import Path

import pytest

from chromium import Chromium, PageReport, find_browser, site_pages

ROOT = Path(__file__).resolve().parent.parent
MATHJAX = (ROOT / "book" / "_vendor" / "mathjax" / "tex-svg-full.js").as_uri()
# As on the site: MathJax typesets elements of class "math"; myst marks the text around them
# "mathjax_ignore", so TeX delimiters left in the prose stay raw.
HEAD = (
    '<head><meta charset="utf-8"><script>window.MathJax = {options: {processHtmlClass: "math"}};</script>'
    f'<script defer src="{MATHJAX}"></script></head>'
)


@pytest.fixture(scope="module")
def browser():
    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium found: install Debian's `chromium` package (apt-get install chromium)")
    with Chromium(binary) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "dot.png").write_bytes(bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e226055e0000000049454e44ae426082"
    ))
    (site / "clean.html").write_text(
        f"<html>{HEAD}<body class='mathjax_ignore'>"
        "<p>Text with <span class='math'>\\(x^2 + 1\\)</span> and a "
        "<code>$$not math$$</code>.</p><img src='dot.png'></body></html>"
    )
    (site / "broken.html").write_text(
        f"<html>{HEAD}<body class='mathjax_ignore'>"
        "<script>const TWICE = 1;</script><script>const TWICE = 2;</script>"
        "<script>console.error('something failed')</script>"
        "<p>Raw $$x = 1$$ and <span class='nomath'>\\(y\\)</span>.</p>"
        "<p><span class='math'>\\(\\undefinedmacro{x}\\)</span></p>"
        "<div style='width: 120px; overflow: hidden'><span class='math' style='display: inline-block'>"
        "\\(a_1 + a_2 + a_3 + a_4 + a_5 + a_6 + a_7 + a_8 + a_9 + a_{10} + a_{11} + a_{12}\\)</span></div>"
        "<img src='missing.png'><img src='http://127.0.0.1:9/remote.png'>"
        "</body></html>"
    )
    (site / "redirect.html").write_text(
        '<html><head><meta http-equiv="Refresh" content="0; url=clean.html"></head></html>'
    )
    os.makedirs(site / "_static")
    (site / "_static" / "template.html").write_text("{{ not a page }}")
    return site


def test_site_pages_skips_theme_templates(pages):
    assert [p.name for p in site_pages(pages)] == ["broken.html", "clean.html", "redirect.html"]


def test_a_clean_page_has_no_problem(browser, pages):
    report = browser.inspect(pages / "clean.html", pages, 1280, 900)
    assert isinstance(report, PageReport)
    assert report.problems() == []
    assert (report.math_elements, report.images) == (1, 1)


def test_a_redirect_is_followed_before_inspecting(browser, pages):
    report = browser.inspect(pages / "redirect.html", pages, 1280, 900)
    assert report.problems() == [] and report.math_elements == 1


def test_each_defect_is_reported(browser, pages):
    report = browser.inspect(pages / "broken.html", pages, 1280, 900)
    assert any("Identifier 'TWICE' has already been declared" in e for e in report.errors), report.errors
    assert any("something failed" in e for e in report.errors)
    assert report.remote == ["http://127.0.0.1:9/remote.png"]
    assert any("$$x = 1$$" in t for t in report.raw_tex) and any("\\(y\\)" in t for t in report.raw_tex)
    assert any("undefinedmacro" in t for t in report.math_errors), report.math_errors
    assert sorted(report.broken_images) == ["http://127.0.0.1:9/remote.png", "missing.png"]
    assert len(report.cut_formulas) == 1 and "beyond div: a1+a2" in report.cut_formulas[0]
    problems = report.problems()
    assert any(p.startswith("console:") for p in problems)
    assert any(p.startswith("formula cut off at 1280 px") for p in problems)
