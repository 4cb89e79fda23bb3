"""Collect the book's chapters as pytest items: a chapter passes when it executes without error.

Executions go through the same jupyter-cache as the site build (``book/_ext/chapter_cache.py``):
a chapter whose code, package source and pinned environment are unchanged since it last
executed without error is taken from the cache (the cache holds successful executions only);
every other collected chapter is executed once, all of them together in a process pool, when
the first chapter item runs. So after ``make book`` or the site build of ``make test``, pytest
executes no chapter again; on its own, ``pytest book/<chapter>.md`` executes that chapter if
it changed. A failure names the chapter, the code cell, its line in the ``.md`` file and the
traceback.
"""

from pathlib import Path

import pytest
import torch

import chapter_cache  # book/_ext, on the path through [tool.pytest.ini_options] pythonpath

BOOK = Path(__file__).parent / "book"
_RESULTS = pytest.StashKey[dict]()


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs PyTorch on one thread, the book's thread policy (CONTRIBUTING.md, "Thread
    policy"): the tests' tensors are small, a second thread costs more than it gives on a shared
    2-core CPU, and the chapters whose numbers the tests recompute ran on one thread, which
    fixes the rounding of chaotic runs. Session-wide, so that module-scoped fixtures (which run
    before any function-scoped one) get it too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _back_to_one_thread():
    """A test that sets another thread count does not pass it on to the next one."""
    yield
    torch.set_num_threads(1)


class ChapterFailed(Exception):
    """A chapter raised while executing; the message is the whole report."""


def _results(session: pytest.Session) -> dict:
    """Execute every stale collected chapter once (in parallel) and return the results by path."""
    if _RESULTS not in session.stash:
        plugins = session.config.pluginmanager
        reporter = plugins.get_plugin("terminalreporter")
        paths = [item.path for item in session.items if isinstance(item, ChapterItem)]
        # Show the progress of executions (minutes, when the cache is cold) as it happens.
        with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
            results = chapter_cache.ensure_executed(
                paths, progress=(lambda line: reporter.write_line(line)) if reporter else (lambda line: None)
            )
        session.stash[_RESULTS] = {result.path: result for result in results}
    return session.stash[_RESULTS]


class ChapterItem(pytest.Item):
    def runtest(self) -> None:
        result = _results(self.session)[self.path.resolve()]
        if not result.ok:
            raise ChapterFailed(result.error)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ChapterFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.path.name} executes"


class ChapterFile(pytest.File):
    def collect(self):
        yield ChapterItem.from_parent(self, name="executes")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.parent == BOOK and chapter_cache.is_chapter(file_path):
        return ChapterFile.from_parent(parent, path=file_path)
    return None
