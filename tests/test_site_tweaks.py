"""Tests for book/_ext/site_tweaks.py: author-year bibliography labels and unique inline scripts."""

from types import SimpleNamespace

import pytest
from pybtex.database import BibliographyData, Entry, Person
from pybtex.plugin import find_plugin

import site_tweaks


def entry(year: str | None = "2013", authors=(), editors=(), title="A title") -> Entry:
    fields = {"title": title, "journal": "A journal"}
    if year is not None:
        fields["year"] = year
    persons = {}
    if authors:
        persons["author"] = [Person(a) for a in authors]
    if editors:
        persons["editor"] = [Person(e) for e in editors]
    return Entry("article", fields=fields, persons=persons)


@pytest.mark.parametrize(
    ("authors", "label"),
    [
        (["Boris Hanin"], "Hanin, 2013"),
        (["Xavier Glorot", "Yoshua Bengio"], "Glorot and Bengio, 2013"),
        (["Razvan Pascanu", "Tomas Mikolov", "Yoshua Bengio"], "Pascanu et al., 2013"),
        (["van Merriënboer, Bart", "Kyunghyun Cho", "Dzmitry Bahdanau", "Yoshua Bengio"],
         "van Merriënboer et al., 2013"),
    ],
)
def test_label_names_authors_as_the_citations_do(authors, label):
    assert site_tweaks.author_year_label(entry(authors=authors)) == label


def test_label_falls_back_on_editors_then_title_and_on_nd_without_year():
    assert site_tweaks.author_year_label(entry(editors=["Ann Editor"])) == "Editor, 2013"
    assert site_tweaks.author_year_label(entry(title="Anonymous work", year=None)) == "Anonymous work, n.d."


def test_equal_labels_are_told_apart_in_list_order():
    style = site_tweaks.AuthorYearLabelStyle()
    entries = [entry(authors=["Kaiming He", "X Zhang", "S Ren"], title=t) for t in ("One", "Two")]
    entries.append(entry(authors=["Boris Hanin"]))
    assert list(style.format_labels(entries)) == ["He et al., 2013a", "He et al., 2013b", "Hanin, 2013"]


def test_style_sorts_by_author_and_uses_author_year_labels():
    site_tweaks.setup(SimpleNamespace(connect=lambda *args, **kwargs: None))
    style = find_plugin("pybtex.style.formatting", "gradlab")()
    data = BibliographyData(entries={
        "zeta": entry(authors=["Zoe Zeta"], year="2001"),
        "alpha": entry(authors=["Al Alpha", "Bo Beta"], year="2020"),
    })
    formatted = list(style.format_entries(data.entries.values()))
    assert [f.key for f in formatted] == ["alpha", "zeta"]
    assert [f.label for f in formatted] == ["Alpha and Beta, 2020", "Zeta, 2001"]


def script(filename, priority=500, **attributes):
    return SimpleNamespace(filename=filename, priority=priority, attributes=attributes)


def test_inline_scripts_added_twice_are_kept_once():
    thebe = 'const THEBE_JS_URL = "x"'
    scripts = [
        script("_static/doctools.js"),
        script(None, body=thebe),  # as registered after the builder started
        script("_static/togglebutton.js"),
        script("", body=thebe),  # the same script, re-added from the registry
        script("", body="var other = 1"),
    ]
    context = {"script_files": scripts}
    site_tweaks._unique_scripts(None, "page", "page.html", context, None)
    assert [s.attributes.get("body", s.filename) for s in context["script_files"]] == [
        "_static/doctools.js", thebe, "_static/togglebutton.js", "var other = 1",
    ]
    assert context["script_files"] is scripts  # changed in place: Sphinx restores it per page


def test_scripts_differing_in_priority_or_attributes_both_stay():
    scripts = [script("a.js"), script("a.js", priority=800), script("a.js", defer="defer")]
    context = {"script_files": list(scripts)}
    site_tweaks._unique_scripts(None, "page", "page.html", context, None)
    assert len(context["script_files"]) == 3
