"""The book's standard figures, with one shared style.

Every function draws on an ``ax`` (a new one if none is given), labels its axes with units,
and returns the axes so a chapter can add to it. :func:`panels` makes the book's row of panels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._validate import check_int, check_real

STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "image.cmap": "viridis",
}


def use_style() -> None:
    """Apply the book's matplotlib style (call once at the top of a chapter)."""
    mpl.rcParams.update(STYLE)


PANEL_ROW_WIDTH = 11.0
"""Width in inches of a row of two or more panels: the page's text column at the book's dpi."""

PANEL_HEIGHT = 3.8
"""Default height in inches of a row of panels."""


def panels(
    n: int = 2,
    *,
    width: float | None = None,
    height: float = PANEL_HEIGHT,
    width_ratios: Sequence[float] | None = None,
    **subplots_kw: Any,
) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels side by side: ``fig, (ax_left, ax_right) = panels(2)``.

    The figure is ``width`` by ``height`` inches; ``width`` defaults to :data:`PANEL_ROW_WIDTH`
    for two or more panels and to the style's single-figure width for one. ``width_ratios``
    sets the panels' relative widths; other keywords (``sharey=True``, ``subplot_kw``, ...) go
    to ``plt.subplots``. The figure uses matplotlib's constrained layout, which makes room for
    labels and colorbars by itself: do not call ``fig.tight_layout()`` on it (that switches the
    layout engine, with a warning).

    Returns:
        ``(fig, axes)``, ``axes`` a list of ``n`` Axes from left to right (also for ``n = 1``).
    """
    n = check_int("n", n, minimum=1)
    if width is None:
        width = PANEL_ROW_WIDTH if n > 1 else STYLE["figure.figsize"][0]
    width = check_real("width", width, minimum=0.0, strict=True)
    height = check_real("height", height, minimum=0.0, strict=True)
    if width_ratios is not None:
        ratios = _as_array("width_ratios", width_ratios, 1)
        if len(ratios) != n or not np.all(np.isfinite(ratios) & (ratios > 0)):
            raise ValueError(f"width_ratios must be {n} positive numbers, got {list(width_ratios)}")
        subplots_kw["width_ratios"] = list(ratios)
    fig, axes = plt.subplots(1, n, figsize=(width, height), squeeze=False, layout="constrained",
                             **subplots_kw)
    return fig, list(axes[0])


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _as_array(name: str, values, ndim: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be array-like of numbers") from err
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    return array


def _step_indices(name: str, values) -> np.ndarray:
    """``values`` as a 1-D integer array; a float such as 1.5 is refused rather than truncated."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of step indices, got shape {array.shape}")
    if array.size and (array.dtype.kind not in "iu"):
        raise TypeError(f"{name} must hold integer step indices, got {array.tolist()[:5]} "
                        f"(dtype {array.dtype})")
    return array.astype(np.int64)


def layer_norms(
    norms,
    *,
    ax=None,
    label: str | None = None,
    ylabel: str = "gradient norm",
    marker: str = "o",
    **kwargs,
):
    """Per-layer norms on a log scale, layer 1 (input side) to L (output side)."""
    norms = _as_array("norms", norms, 1)
    ax = _axes(ax)
    layers = np.arange(1, len(norms) + 1)
    ax.semilogy(layers, norms, marker=marker, markersize=3, label=label, **kwargs)
    ax.set_xlabel("layer $l$ (input → output)")
    ax.set_ylabel(ylabel)
    if label is not None:
        ax.legend()
    return ax


def heatmap(
    values,
    *,
    ax=None,
    layer_names: Sequence[str] | None = None,
    colorbar_label: str = "log$_{10}$ gradient norm",
):
    """Layers x steps heatmap of ``log10(values)``; ``values`` is steps x layers.

    Non-finite entries are drawn in red, so the step and layer where a NaN/Inf appeared stand out.
    """
    values = _as_array("values", values, 2)
    ax = _axes(ax)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(values).T
    cmap = mpl.colormaps[mpl.rcParams["image.cmap"]].with_extremes(bad="red")  # a copy
    image = ax.imshow(
        np.ma.masked_invalid(logs), aspect="auto", origin="lower", interpolation="nearest", cmap=cmap
    )
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    if layer_names is not None:
        if len(layer_names) != values.shape[1]:
            raise ValueError(
                f"layer_names has {len(layer_names)} names for {values.shape[1]} layers"
            )
        ticks = np.linspace(0, len(layer_names) - 1, min(len(layer_names), 8)).round().astype(int)
        ax.set_yticks(ticks, [layer_names[t] for t in ticks])
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label)
    return ax


def loss_curve(
    losses,
    *,
    ax=None,
    label: str | None = None,
    log: bool = True,
    spikes: Sequence[int] = (),
    **kwargs,
):
    """Loss per step. Non-finite losses are marked with a red cross at the top of the axes,
    and the steps in ``spikes`` with orange triangles, so an explosion is visible at a glance.

    ``spikes`` holds integer step indices (a list, or an integer array such as
    ``np.flatnonzero(...)``); steps outside ``0 .. len(losses) - 1`` and steps whose loss is not
    finite get no triangle.
    """
    losses = _as_array("losses", losses, 1)
    spikes = _step_indices("spikes", spikes)
    ax = _axes(ax)
    steps = np.arange(len(losses))
    (line,) = ax.plot(steps, losses, label=label, **kwargs)
    if log:
        ax.set_yscale("log")
    bad = steps[~np.isfinite(losses)]
    if len(bad):
        ax.plot(bad, np.ones(len(bad)), "x", color="red", markersize=8, clip_on=False,
                transform=ax.get_xaxis_transform(), label="non-finite loss")
    spikes = [int(s) for s in spikes if 0 <= s < len(losses) and np.isfinite(losses[s])]
    if spikes:
        ax.plot(spikes, losses[spikes], "^", color="tab:orange", markersize=7, label="spike")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if label is not None or len(bad) or spikes:
        ax.legend()
    return ax
