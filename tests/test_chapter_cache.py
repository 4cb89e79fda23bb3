"""Tests for book/_ext/chapter_cache.py: what the chapter cache keys on, and how it executes."""

import textwrap
from pathlib import Path

import pytest
import yaml
from myst_parser.config.main import MdParserConfig

import chapter_cache

ROOT = Path(__file__).resolve().parent.parent
HEADER = textwrap.dedent("""\
    ---
    jupytext:
      text_representation:
        extension: .md
        format_name: myst
        format_version: 0.13
    kernelspec:
      display_name: Python 3
      language: python
      name: python3
    ---
    """)


def chapter(folder: Path, name: str, *cells: str, prose: str = "Some prose.") -> Path:
    """A small MyST-markdown chapter with the book's header and the given code cells."""
    body = "".join(f"\n{prose}\n\n```{{code-cell}} ipython3\n{code}\n```\n" for code in cells)
    path = folder / f"{name}.md"
    path.write_text(HEADER + "\n# A chapter\n" + body, encoding="utf-8")
    return path


def fake_repository(folder: Path) -> Path:
    (folder / "gradlab").mkdir(parents=True)
    (folder / "gradlab" / "core.py").write_text("X = 1\n")
    return folder


def test_is_chapter_needs_the_notebook_header(tmp_path):
    assert chapter_cache.is_chapter(chapter(tmp_path, "a", "1 + 1"))
    plain = tmp_path / "plain.md"
    plain.write_text("# Just a page\n\n```python\n1 + 1\n```\n")
    assert not chapter_cache.is_chapter(plain)
    notes = tmp_path / "notes.txt"
    notes.write_text(HEADER)
    assert not chapter_cache.is_chapter(notes)


def test_every_book_chapter_is_recognised():
    names = {p.stem for p in (ROOT / "book").glob("*.md") if chapter_cache.is_chapter(p)}
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = {Path(c["file"]).stem for part in toc["parts"] for c in part["chapters"]}
    assert names == listed - {"references"}


def test_the_key_is_the_code_not_the_prose(tmp_path):
    cache = chapter_cache.open_cache(tmp_path / "cache", fake_repository(tmp_path / "repo"))
    _, key = cache.create_hashed_notebook(chapter_cache.read_chapter(chapter(tmp_path, "a", "x = 1")))
    _, same = cache.create_hashed_notebook(
        chapter_cache.read_chapter(chapter(tmp_path, "b", "x = 1", prose="Other prose, same code."))
    )
    _, other = cache.create_hashed_notebook(chapter_cache.read_chapter(chapter(tmp_path, "c", "x = 2")))
    assert key == same
    assert key != other


def test_reading_with_the_sites_markdown_settings_gives_the_same_key(tmp_path):
    """pytest reads chapters with default settings, the site build with _config.yml's: the cache
    is shared only if both produce the same code cells."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    site = MdParserConfig(enable_extensions=set(config["parse"]["myst_enable_extensions"]))
    cache = chapter_cache.get_cache(tmp_path)
    for path in (ROOT / "book").glob("*.md"):
        if chapter_cache.is_chapter(path):
            plain = cache.create_hashed_notebook(chapter_cache.read_chapter(path))[1]
            assert plain == cache.create_hashed_notebook(chapter_cache.read_chapter(path, site))[1], path.name


def test_fingerprint_follows_the_package_source(tmp_path):
    repo = fake_repository(tmp_path)
    before = chapter_cache.fingerprint(repo)
    assert chapter_cache.fingerprint(repo) == before
    (repo / "gradlab" / "core.py").write_text("X = 2\n")
    assert chapter_cache.fingerprint(repo) != before
    (repo / "gradlab" / "core.py").write_text("X = 1\n")
    assert chapter_cache.fingerprint(repo) == before
    (repo / "gradlab" / "new.py").write_text("")
    assert chapter_cache.fingerprint(repo) != before


def test_a_package_change_empties_the_cache(tmp_path):
    repo = fake_repository(tmp_path / "repo")
    path = chapter(tmp_path, "a", "1 + 1")
    cache = chapter_cache.open_cache(tmp_path / "cache", repo)
    nb = chapter_cache.read_chapter(path)
    nb.cells[-1].outputs = []
    nb.cells[-1].execution_count = 1
    cache.cache_notebook_bundle(chapter_cache.CacheBundleIn(nb, str(path)), check_validity=False)
    assert chapter_cache.cached(chapter_cache.open_cache(tmp_path / "cache", repo), nb) is not None
    (repo / "gradlab" / "core.py").write_text("X = 3\n")
    assert chapter_cache.cached(chapter_cache.open_cache(tmp_path / "cache", repo), nb) is None


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """One good and one failing chapter, executed together (two kernels in parallel)."""
    folder = tmp_path_factory.mktemp("chapters")
    good = chapter(folder, "good", "x = 6 * 7", "print(x)")
    bad = chapter(folder, "bad", "y = 1", "import math\n\nz = math.sqrt(-y)")
    cache_path = folder / "cache"
    lines = []
    results = chapter_cache.ensure_executed([good, bad], cache_path=cache_path, jobs=2, progress=lines.append)
    return {"good": good, "bad": bad, "cache": cache_path, "results": results, "lines": lines}


def test_execution_runs_stale_chapters_in_parallel(executed):
    good, bad = executed["results"]
    assert good.ok and good.seconds is not None
    assert not bad.ok
    assert executed["lines"][0].startswith("executing 2 chapter(s) in 2 process(es)")


def test_a_failure_names_the_chapter_the_cell_its_line_and_the_error(executed):
    report = executed["results"][1].error
    text = executed["bad"].read_text().splitlines()
    line = next(i for i, row in enumerate(text, start=1) if row.startswith("```{code-cell}") and
                "math" in text[i])
    headline = f"{executed['bad'].resolve()}: code cell 2 (line {line}): ValueError: math domain error\n"
    assert report.startswith(headline)
    assert "z = math.sqrt(-y)" in report
    assert "\x1b[" not in report  # no ANSI colours


def test_only_successes_are_cached_and_reused(executed):
    cache = chapter_cache.open_cache(executed["cache"])
    good = chapter_cache.cached(cache, chapter_cache.read_chapter(executed["good"].resolve()))
    assert good is not None
    assert good.cells[-1].outputs[0]["text"] == "42\n"
    assert chapter_cache.cached(cache, chapter_cache.read_chapter(executed["bad"].resolve())) is None
    lines = []
    again = chapter_cache.ensure_executed(
        [executed["good"]], cache_path=executed["cache"], progress=lines.append
    )
    assert again[0].ok and again[0].seconds is None  # from the cache: nothing executed
    assert lines == []


def test_a_changed_chapter_is_executed_and_its_old_version_stays_cached(executed, tmp_path):
    folder = tmp_path / "book"
    folder.mkdir()
    path = folder / "good.md"
    original = executed["good"].read_text()
    path.write_text(original)
    cache_path = tmp_path / "cache"
    quiet = {"cache_path": cache_path, "progress": lambda line: None}
    assert chapter_cache.ensure_executed([path], **quiet)[0].seconds is not None
    path.write_text(original.replace("6 * 7", "6 * 8"))
    assert chapter_cache.ensure_executed([path], **quiet)[0].seconds is not None
    path.write_text(original)  # e.g. back on the previous branch: nothing to execute
    assert chapter_cache.ensure_executed([path], **quiet)[0].seconds is None
    cache = chapter_cache.open_cache(cache_path)
    assert len(cache.list_cache_records()) == 2
    assert cache.get_cache_limit() == chapter_cache.CACHE_LIMIT
