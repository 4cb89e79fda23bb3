"""Tests of the JupyterLab set-up behind `make lab`: saving a chapter there rewrites nothing.

JupyterLab saves a chapter through jupytext, with the jupytext configuration it finds in the
folder it serves (book/) and the notebook metadata the running kernel sets (its kernelspec).
"""

import os
import subprocess
from pathlib import Path

import jupytext
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupytext.config import find_jupytext_configuration_file, load_jupytext_config

import chapter_cache

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CHAPTERS = sorted(p for p in BOOK.glob("*.md") if chapter_cache.is_chapter(p))


def save_as_jupyterlab_does(text: str, kernelspec: dict) -> str:
    """The text jupytext writes when JupyterLab saves the chapter unchanged: the kernel has set
    the kernelspec and language_info, code cells have run. JupyterLab replaces the kernelspec
    only when it differs from the notebook's (then with the keys in its own order)."""
    config = load_jupytext_config(str(BOOK))
    nb = jupytext.reads(text, fmt="md:myst")
    if dict(nb.metadata.get("kernelspec", {})) != kernelspec:
        nb.metadata["kernelspec"] = kernelspec
    nb.metadata["language_info"] = {"name": "python", "version": "3.11", "file_extension": ".py"}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count, cell.outputs = 1, []
    return jupytext.writes(nb, fmt="md:myst", config=config)


def test_jupytext_configuration_is_inside_the_served_folder():
    # `make lab` serves book/: jupytext does not look above the folder it serves.
    assert Path(find_jupytext_configuration_file(str(BOOK))) == BOOK / "jupytext.toml"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_round_trips_through_jupytext_byte_for_byte(path):
    text = path.read_text(encoding="utf-8")
    written = jupytext.writes(jupytext.reads(text, fmt="md:myst"), fmt="md:myst",
                              config=load_jupytext_config(str(BOOK)))
    assert written == text, (
        f"{path.name}: saving it from JupyterLab would rewrite it; write it as jupytext does "
        "(e.g. a blank line after a code cell's `:tags:` line)")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_saving_with_the_environments_kernel_rewrites_nothing(path):
    spec = KernelSpecManager().get_kernel_spec("python3")
    # JupyterLab orders the keys name, display_name, language when it sets them.
    kernelspec = {"name": "python3", "display_name": spec.display_name, "language": spec.language}
    text = path.read_text(encoding="utf-8")
    assert save_as_jupyterlab_does(text, kernelspec) == text, (
        f"the python3 kernel is named {spec.display_name!r} in {spec.resource_dir}; "
        "the chapter headers say 'Python 3' (make installs that kernelspec into .venv)")


def test_a_different_kernel_name_would_rewrite_the_header():
    """The check above can fail: ipykernel's own display name changes the header."""
    text = CHAPTERS[0].read_text(encoding="utf-8")
    kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    assert save_as_jupyterlab_does(text, kernelspec) != text


def test_make_lab_adds_allow_root_only_for_root():
    out = subprocess.run(["make", "-n", "-W", ".venv/.gradlab-installed", "lab"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    lab_line = next(line for line in out.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in lab_line) == (os.geteuid() == 0)


def test_jupyterlab_myst_is_installed_and_enabled():
    out = subprocess.run([str(Path(os.sys.executable).parent / "jupyter"), "labextension", "list"],
                         capture_output=True, text=True, check=True)
    listing = out.stdout + out.stderr
    assert "jupyterlab-myst" in listing
    assert "enabled" in listing.split("jupyterlab-myst", 1)[1].splitlines()[0]
