"""Collect the book's MyST-markdown chapters and execute them as notebooks inside pytest.

nbmake only collects ``.ipynb`` files, so each ``book/*.md`` chapter that carries a jupytext
header is converted to a notebook under ``_build/test-notebooks`` and run by nbmake's own item,
which keeps nbmake's failure report (the failing cell and its traceback).
"""

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbmake.pytest_items import NotebookItem

ROOT = Path(__file__).parent
BOOK = ROOT / "book"
CONVERTED = ROOT / "_build" / "test-notebooks"


def _is_chapter(path: Path) -> bool:
    if path.suffix != ".md" or path.parent != BOOK:
        return False
    head = path.read_text(encoding="utf-8")[:600]
    return head.startswith("---") and "jupytext:" in head and "kernelspec:" in head


class ChapterFile(pytest.File):
    def collect(self):
        CONVERTED.mkdir(parents=True, exist_ok=True)
        target = CONVERTED / f"{self.path.stem}.ipynb"
        nbformat.write(jupytext.read(self.path), target)
        yield NotebookItem.from_parent(self, filename=str(target))


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if _is_chapter(file_path):
        return ChapterFile.from_parent(parent, path=file_path)
    return None
