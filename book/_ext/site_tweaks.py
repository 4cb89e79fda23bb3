"""Sphinx extension: three fixes to the HTML site that no configuration value provides.

* Bibliography labels in author-year form ("Pascanu et al., 2013"), built with the same
  person style as sphinxcontrib-bibtex's author-year citations, so that a citation
  "Pascanu et al. [2013]" and its entry in the list read alike (the default labels are pybtex's
  "alpha" ones, such as ``[CvMerrienboerG+14]``). Select it with ``bibtex_default_style: gradlab``.
* Each inline ``<script>`` once: Sphinx 7 adds an inline script that an extension registers
  after the builder started (sphinx-thebe's ``const THEBE_JS_URL``, sphinx-togglebutton's
  selector) twice, and the second ``const`` is a SyntaxError in the browser
  (sphinx-doc/sphinx#13402, fixed in Sphinx 8.2).
* A ``.ipynb`` download next to the ``.md`` one on every chapter: the chapter as a notebook
  with its outputs from the execution cache (sphinx-book-theme offers one only when a launch
  button is configured, and the copy myst-nb writes to ``_build/jupyter_execute`` has no
  outputs in cache mode: it writes the notebook it read, not the one it merged the outputs into).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import nbformat
from jupyter_cache import get_cache
from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinxcontrib.bibtex.style.referencing import PersonStyle

from chapter_cache import read_chapter


def author_year_label(entry, person: PersonStyle | None = None) -> str:
    """``"<authors>, <year>"`` with the authors as the author-year citations print them."""
    person = person or PersonStyle()
    data = {"entry": entry, "style": SimpleNamespace(person=person)}
    authors = person.author_or_editor_or_title(full=False).format_data(data).render_as("text")
    return f"{authors}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    """Author-year labels; equal labels get a, b, ... appended in the list's order."""

    def format_labels(self, sorted_entries):
        person = PersonStyle()
        labels = [author_year_label(entry, person) for entry in sorted_entries]
        counts = Counter(labels)
        used: defaultdict[str, int] = defaultdict(int)
        for label in labels:
            if counts[label] > 1:
                used[label] += 1
                label += "abcdefghijklmnopqrstuvwxyz"[used[label] - 1]
            yield label


class AuthorYearStyle(UnsrtStyle):
    """pybtex's usual entry formatting, sorted by author, year and title, author-year labels."""

    default_label_style = "gradlab_author_year"
    default_sorting_style = "author_year_title"


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = (
            getattr(script, "filename", script) or "",
            getattr(script, "priority", None),
            tuple(sorted(getattr(script, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # Sphinx restores its own list after each page


def _notebook_download(app, pagename, templatename, context, doctree) -> None:
    if "kernelspec" not in app.env.metadata.get(pagename, {}):
        return
    cache_path = getattr(app.env.mystnb_config, "execution_cache_path", None)
    source = Path(app.env.doc2path(pagename))
    if not cache_path or not source.is_file():
        return
    try:
        _, nb = get_cache(cache_path).merge_match_into_notebook(read_chapter(source, app.env.myst_config))
    except KeyError:  # not executed through the cache (another execution mode)
        return
    nb.metadata.pop("source_map", None)  # myst-nb's bookkeeping, not part of the notebook
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    register_plugin("pybtex.style.labels", "gradlab_author_year", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "gradlab", AuthorYearStyle)
    app.connect("html-page-context", _notebook_download, priority=400)  # before the theme's buttons (501)
    app.connect("html-page-context", _unique_scripts, priority=900)  # after every extension added its own
    return {"parallel_read_safe": True, "parallel_write_safe": True}
