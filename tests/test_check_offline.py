"""Tests for tests/check_offline.py, the site's offline check."""

from pathlib import Path

from check_offline import is_remote, loaded_urls, main, problems


def test_is_remote():
    assert is_remote("https://cdn.example.org/x.js")
    assert is_remote("//cdn.example.org/x.js")
    assert not is_remote("_static/mathjax/tex-svg-full.js")
    assert not is_remote("../index.html#top")


def test_loaded_urls_sees_scripts_styles_images_and_css_urls_but_not_links():
    html = """
    <html><head>
      <script src="https://cdn.example.org/mathjax.js"></script>
      <link rel="stylesheet" href="https://fonts.example.org/font.css">
      <link rel="canonical" href="https://example.org/page.html">
      <style>@import "https://fonts.example.org/more.css"; body {background: url(img/bg.png)}</style>
    </head><body>
      <img src="_images/fig.png"><a href="https://example.org">a link is not a load</a>
      <div style="background-image: url('https://img.example.org/x.png')"></div>
    </body></html>"""
    urls = loaded_urls(html)
    assert "https://cdn.example.org/mathjax.js" in urls
    assert "https://fonts.example.org/font.css" in urls
    assert "https://fonts.example.org/more.css" in urls
    assert "https://img.example.org/x.png" in urls
    assert "img/bg.png" in urls and "_images/fig.png" in urls
    assert "https://example.org" not in urls
    assert "https://example.org/page.html" not in urls


def _site(tmp_path: Path, body: str) -> Path:
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "ok.png").write_bytes(b"png")
    (tmp_path / "index.html").write_text(f"<html><body>{body}</body></html>")
    return tmp_path


def test_problems_reports_remote_and_missing(tmp_path):
    site = _site(tmp_path, '<img src="_images/ok.png"><img src="_images/gone.png">'
                           '<script src="https://cdn.example.org/x.js"></script>')
    found = problems(site)
    assert any("missing local file _images/gone.png" in p for p in found)
    assert any("loads https://cdn.example.org/x.js" in p for p in found)
    assert not any("ok.png" in p for p in found)


def test_main_exit_codes(tmp_path, capsys):
    clean = _site(tmp_path, '<img src="_images/ok.png">')
    assert main(["check_offline.py", str(clean)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    (clean / "index.html").write_text('<link rel="stylesheet" href="http://x.org/a.css">')
    assert main(["check_offline.py", str(clean)]) == 1
    assert main(["check_offline.py", str(tmp_path / "nowhere")]) == 2
