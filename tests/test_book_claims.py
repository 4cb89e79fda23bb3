"""Checks of the chapters "Popular claims, tested" and "A one-page checklist" against the
package: the verdict each section states is the one gl.claims computes, it links the chapter the
verdict names, and every gradlab call the checklist recommends exists."""

import re
from pathlib import Path

import pytest
import torch

import gradlab as gl
from gradlab import claims

BOOK = Path(__file__).parent.parent / "book"
STATED = {  # the verdict each section of book/claims.md states (tests/test_claims.py: the same)
    1: "conditional", 2: "conditional", 3: "false", 4: "false", 5: "conditional", 6: "false",
    7: "false", 8: "false", 9: "false", 10: "false", 11: "conditional", 12: "false", 13: "false",
}


def _sections():
    text = (BOOK / "claims.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (\d+)\. ", text, flags=re.M)
    return {int(n): body for n, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_thirteen_sections_each_with_its_stated_verdict():
    sections = _sections()
    assert sorted(sections) == list(range(1, 14))
    for n, body in sections.items():
        stated = re.findall(r"\*\*Verdict: (\w+)\.\*\*", body)
        assert stated == [STATED[n]], (n, stated)
        assert "**The claim.**" in body and "**The experiment.**" in body
        assert f"claims.{claims.CLAIMS[n - 1].__name__}()" in body


@pytest.mark.parametrize("number", [n for n in STATED if n != 12])  # 12 starts processes: test_claims
def test_each_section_links_the_chapter_of_its_computed_verdict(number):
    torch.set_num_threads(1)
    v = claims.CLAIMS[number - 1]()
    assert v.verdict == STATED[number]
    assert f"{{doc}}`{v.chapter}`" in _sections()[number]
    text = (BOOK / "claims.md").read_text(encoding="utf-8")
    (row,) = re.findall(rf"^\| {number} \|.*$", text, flags=re.M)  # the summary table's row
    assert f"{{glue:md}}`verdict_{number}`" in row and row.endswith(f"{{doc}}`{v.chapter}` |"), row


def test_the_summary_table_is_built_from_the_verdicts():
    text = (BOOK / "claims.md").read_text(encoding="utf-8")
    summary = text[text.index("## Summary"):text.index("## Exercises")]
    assert "for v in verdicts:" in summary and "{glue:text}`n_false`" in summary
    assert len(re.findall(r"^\| \d+ \|", summary, flags=re.M)) == 13


def _checklist():
    return (BOOK / "checklist.md").read_text(encoding="utf-8")


def test_every_checklist_step_links_a_chapter_and_the_calls_exist():
    steps = re.findall(r"^\s*\d+\. \*\*(.+?)(?=^\s*\d+\. \*\*|^\S)", _checklist(), flags=re.M | re.S)
    assert len(steps) >= 8
    for step in steps:
        assert "{doc}`" in step, step[:40]
    calls = set(re.findall(r"`[^`]*?\b(gl(?:\.\w+)+)", _checklist()))
    assert len(calls) >= 10
    for call in calls:
        obj = gl
        for name in call.split(".")[1:]:
            obj = getattr(obj, name, None)
            if obj is None and call.startswith(("gl.fit", "gl.doctor")):
                break  # a keyword or an attribute of the result, e.g. gl.fit(...).summary
            assert obj is not None, f"{call} does not exist"


def test_checklist_links_only_existing_chapters():
    for name in re.findall(r"\{doc\}`(\w+)`", _checklist()) + re.findall(
            r"\{doc\}`(\w+)`", (BOOK / "claims.md").read_text(encoding="utf-8")):
        assert (BOOK / f"{name}.md").exists(), name
