"""Execute the book's chapters once, in parallel, into the Jupyter Book cache (jupyter-cache).

The site build (``execute_notebooks: cache``) and pytest both take a chapter's outputs from the
cache in ``_build/.jupyter_cache``, so a chapter is executed only when

* its code changed: jupyter-cache keys a record by the hash of the code cells, their metadata
  and the kernelspec (prose edits do not count);
* the package or the environment changed: a fingerprint of ``gradlab/**/*.py``, the Python
  version and every installed distribution's version is stored next to the cache, and a
  different one empties the cache, because any chapter may call the changed code;
* or the cache is gone (a fresh clone, ``make clean``, ``make book FORCE=1``).

Stale chapters are executed in a pool of processes (one kernel each, one thread per kernel;
``GRADLAB_JOBS`` sets the pool size, default: the number of CPUs), and only the parent process
writes to the cache.

As a Sphinx extension (listed in ``_config.yml``) it marks chapters without a valid cache
record as outdated, so Sphinx re-reads them, and executes them before Sphinx reads them;
myst-nb then finds every chapter in the cache. ``conftest.py`` uses the same functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import multiprocessing
import os
import re
import sys
import sysconfig
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nbformat
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn, JupyterCacheAbstract
from jupyter_cache.executors.utils import single_nb_execution
from myst_nb.core.read import is_myst_markdown_notebook, read_myst_markdown_notebook
from myst_parser.config.main import MdParserConfig

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "_build" / ".jupyter_cache"
FINGERPRINT_FILE = "gradlab-fingerprint.txt"
TIMEOUT = 300  # seconds per cell, as execute.timeout in _config.yml
CACHE_LIMIT = 100  # executed notebooks kept (about 100 kB to 1 MB each)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def fingerprint(root: Path = ROOT) -> str:
    """SHA-256 over the package source and the installed environment (Python and every
    distribution's name and version), the two things besides its own code that a chapter's
    outputs depend on."""
    digest = hashlib.sha256(sys.version.encode() + b"\0")
    for path in sorted((root / "gradlab").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    # Only the environment's own site-packages: sys.path differs between Sphinx and pytest (the
    # repository root, with gradlab's .egg-info, is on it under pytest), the environment does not.
    paths = list(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    installed = sorted(
        f"{d.metadata['Name']}=={d.version}".lower() for d in importlib.metadata.distributions(path=paths)
    )
    digest.update("\n".join(installed).encode())
    return digest.hexdigest()


def open_cache(path: Path = CACHE, root: Path = ROOT) -> JupyterCacheAbstract:
    """The jupyter-cache at ``path``, emptied first if the package fingerprint changed."""
    path = Path(path)
    stamp = path / FINGERPRINT_FILE
    current = fingerprint(root)
    cache = get_cache(path)
    if not stamp.is_file() or stamp.read_text().strip() != current:
        if path.exists():
            cache.clear_cache()
        cache = get_cache(path)
        cache.change_cache_limit(CACHE_LIMIT)  # also creates the folder and the database
        stamp.write_text(current + "\n")
    return cache


def is_chapter(path: Path) -> bool:
    """True for a MyST-markdown notebook (a ``.md`` file with a jupytext/kernelspec header)."""
    return path.suffix == ".md" and is_myst_markdown_notebook(path.read_text(encoding="utf-8"))


def read_chapter(path: Path, md_config: MdParserConfig | None = None) -> nbformat.NotebookNode:
    """The chapter as a notebook, read exactly as myst-nb reads it (so the cache hashes match)."""
    return read_myst_markdown_notebook(
        Path(path).read_text(encoding="utf-8"),
        config=md_config or MdParserConfig(),
        add_source_map=True,
        path=str(path),
    )


def is_cached(cache: JupyterCacheAbstract, nb: nbformat.NotebookNode) -> bool:
    """True when the cache holds a successful execution of this code (a database look-up)."""
    try:
        cache.match_cache_notebook(nb)
    except KeyError:
        return False
    return True


def cached(cache: JupyterCacheAbstract, nb: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """The executed notebook stored for this code, or None."""
    try:
        record = cache.match_cache_notebook(nb)
    except KeyError:
        return None
    return cache.get_cache_bundle(record.pk).nb


@dataclasses.dataclass
class Result:
    """What happened to one chapter: executed now, or found in the cache."""

    path: Path
    seconds: float | None = None  # None: taken from the cache
    error: str | None = None  # the failure report, None on success

    @property
    def ok(self) -> bool:
        return self.error is None


def _shown(path: Path) -> Path:
    """``book/x.md`` for a chapter of this repository, the full path otherwise."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _failure_report(path: Path, nb: nbformat.NotebookNode, err: BaseException) -> str:
    """``<chapter>: code cell <n> (line <l>): <exception>: <message>``, then the cell and its
    traceback (the line is that of the cell's opening fence in the ``.md`` file)."""
    source_map = nb.metadata.get("source_map") or []
    where = "execution stopped"  # no cell recorded an error (a timeout): the message shows the cell
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            number = sum(c.cell_type == "code" for c in nb.cells[: index + 1])
            # myst-nb records the 1-based line of each cell's opening fence.
            line = f" (line {source_map[index]})" if index < len(source_map) else ""
            where = f"code cell {number}{line}"
            break
    name = _shown(path)
    # nbclient's CellExecutionError carries the exception raised in the kernel as ename/evalue.
    error = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', '')}".rstrip(": ")
    return f"{name}: {where}: {error}\n{_ANSI.sub('', str(err)).strip()}"


def _execute_one(
    path: str, nb: nbformat.NotebookNode, timeout: int
) -> tuple[nbformat.NotebookNode, float, str | None]:
    # Runs in a worker process. The kernel inherits this environment: kernels side by side must
    # share the CPUs (OpenMP threads that outnumber the cores spin and slow everything down
    # several-fold), and one thread per kernel, however many chapters run, keeps a chapter's
    # numbers independent of how many others were stale (a chapter may still set its own).
    # A thread count set in the caller's environment wins. The kernel's working directory is
    # the chapter's folder, as in myst-nb (execute.run_in_temp is false).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout, allow_errors=False)
    error = _failure_report(Path(path), result.nb, result.err) if result.err is not None else None
    return result.nb, result.time, error


def execute(
    notebooks: dict[Path, nbformat.NotebookNode],
    cache: JupyterCacheAbstract,
    *,
    jobs: int | None = None,
    timeout: int = TIMEOUT,
    progress=print,
) -> list[Result]:
    """Execute ``notebooks`` (path -> notebook) in a process pool and cache each success.

    Older records of a chapter stay (switching back to a branch re-executes nothing) until the
    cache holds more than CACHE_LIMIT records; jupyter-cache then drops the least recently used.
    """
    if not notebooks:
        return []
    jobs = jobs or int(os.environ.get("GRADLAB_JOBS", 0)) or os.cpu_count() or 1
    jobs = max(1, min(jobs, len(notebooks)))
    progress(f"executing {len(notebooks)} chapter(s) in {jobs} process(es): "
             + ", ".join(p.stem for p in notebooks))
    results = []
    start = time.perf_counter()
    # spawn, not fork: the parent (Sphinx, pytest) may hold threads and ZeroMQ state.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            pool.submit(_execute_one, str(path), nb, timeout): path for path, nb in notebooks.items()
        }
        for future in as_completed(futures):
            path = futures[future]
            try:
                executed, seconds, error = future.result()
            except Exception as exc:  # a worker that died (out of memory, a kernel that did not start)
                executed, seconds, error = None, None, f"{_shown(path)}: {type(exc).__name__}: {exc}"
            if error is None:
                cache.cache_notebook_bundle(
                    CacheBundleIn(executed, str(path), data={"execution_seconds": seconds}),
                    check_validity=False,
                    overwrite=True,
                )
                progress(f"  {path.stem}: executed in {seconds:.1f} s")
            else:
                progress(f"  {path.stem}: FAILED")
            results.append(Result(path, seconds, error))
    progress(f"executed {len(notebooks)} chapter(s) in {time.perf_counter() - start:.1f} s")
    return results


def ensure_executed(
    paths: list[Path],
    *,
    cache_path: Path = CACHE,
    md_config: MdParserConfig | None = None,
    jobs: int | None = None,
    timeout: int = TIMEOUT,
    progress=print,
) -> list[Result]:
    """Execute those of ``paths`` that have no valid cache record; report on all of them."""
    cache = open_cache(cache_path)
    stale = {}
    results = {}
    for path in paths:
        path = Path(path).resolve()
        nb = read_chapter(path, md_config)
        if is_cached(cache, nb):
            results[path] = Result(path)
        else:
            stale[path] = nb
    for result in execute(stale, cache, jobs=jobs, timeout=timeout, progress=progress):
        results[result.path] = result
    return [results[Path(p).resolve()] for p in paths]


# --- Sphinx extension -------------------------------------------------------------------------


def _sphinx_logger():
    from sphinx.util import logging

    return logging.getLogger(__name__)


def _use_cache(app) -> bool:
    config = getattr(app.env, "mystnb_config", None)
    return config is not None and config.execution_mode == "cache"


def _chapter_docs(app, env, docnames) -> dict[str, Path]:
    chapters = {}
    for docname in docnames:
        path = Path(env.doc2path(docname))
        if path.is_file() and is_chapter(path):
            chapters[docname] = path.resolve()
    return chapters


def _set_cache_path(app, config) -> None:
    # One cache per repository, whatever --path-output says, so that subset builds, the full
    # build and pytest share it.
    if not config.nb_execution_cache_path:
        config.nb_execution_cache_path = str(Path(app.srcdir) / "_build" / ".jupyter_cache")


def _outdated(app, env, added, changed, removed) -> list[str]:
    """Chapters whose cached outputs are missing or stale must be read again."""
    if not _use_cache(app):
        return []
    cache = open_cache(Path(env.mystnb_config.execution_cache_path), Path(app.srcdir))
    return [
        docname
        for docname, path in _chapter_docs(app, env, env.found_docs - added - changed).items()
        if not is_cached(cache, read_chapter(path, env.myst_config))
    ]


def _execute_before_reading(app, env, docnames) -> None:
    if not _use_cache(app):
        return
    from sphinx.errors import ExtensionError

    chapters = _chapter_docs(app, env, docnames)
    if not chapters:
        return
    cache = open_cache(Path(env.mystnb_config.execution_cache_path), Path(app.srcdir))
    stale = {}
    for path in chapters.values():
        nb = read_chapter(path, env.myst_config)
        if not is_cached(cache, nb):
            stale[path] = nb
    results = execute(stale, cache, timeout=env.mystnb_config.execution_timeout or TIMEOUT,
                      progress=_sphinx_logger().info)
    failed = [r for r in results if not r.ok]
    if failed:
        raise ExtensionError(
            f"{len(failed)} chapter(s) failed to execute:\n\n" + "\n\n".join(r.error for r in failed)
        )


def setup(app):
    app.connect("config-inited", _set_cache_path)
    app.connect("env-get-outdated", _outdated)
    app.connect("env-before-read-docs", _execute_before_reading)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    """``python book/_ext/chapter_cache.py [chapter.md ...]``: execute stale chapters now."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("chapters", nargs="*", type=Path, help="default: every chapter in book/")
    args = parser.parse_args(argv)
    paths = args.chapters or [p for p in sorted((ROOT / "book").glob("*.md")) if is_chapter(p)]
    results = ensure_executed(paths)
    for result in results:
        if not result.ok:
            print("\n" + result.error)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
