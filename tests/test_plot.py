"""Tests for gradlab.plot."""

import matplotlib

matplotlib.use("Agg")

import warnings  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from gradlab import plot  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(ax):
    assert isinstance(ax, Axes)
    assert ax.get_xlabel().strip() and ax.get_ylabel().strip()


def _lines(ax, label):
    return [line for line in ax.get_lines() if line.get_label() == label]


def test_use_style_updates_rcparams():
    with matplotlib.rc_context():
        plot.use_style()
        for key, value in plot.STYLE.items():
            got = matplotlib.rcParams[key]
            assert list(got) == list(value) if isinstance(value, tuple) else got == value


# -- layer_norms -------------------------------------------------------------------------------


def test_layer_norms_log_scale_and_data():
    norms = [1e-3, 1e-1, 10.0, 1e4]
    ax = plot.layer_norms(norms)
    _labelled(ax)
    assert ax.get_yscale() == "log"
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(line.get_ydata(), norms)
    assert ax.get_legend() is None
    ax.figure.canvas.draw()


def test_layer_norms_accepts_tensors_and_an_existing_axes_and_a_label():
    fig, ax = plt.subplots()
    out = plot.layer_norms(torch.tensor([1.0, 2.0, 4.0]), ax=ax, label="he", ylabel="‖g‖", color="k")
    assert out is ax
    assert ax.get_ylabel() == "‖g‖"
    assert ax.get_legend() is not None
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["he"]
    plot.layer_norms([1.0, 3.0], ax=ax, label="xavier")
    assert len(ax.get_lines()) == 2


@pytest.mark.parametrize("bad", [[[1.0, 2.0]], 3.0, []])
def test_layer_norms_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="norms"):
        plot.layer_norms(bad)


def test_layer_norms_rejects_non_numbers():
    with pytest.raises(TypeError, match="norms"):
        plot.layer_norms(["a", "b"])


# -- heatmap -----------------------------------------------------------------------------------


def test_heatmap_shows_log10_of_layers_by_steps():
    values = np.array([[1.0, 10.0, 100.0], [1e-2, 1.0, 1e3]])  # 2 steps x 3 layers
    ax = plot.heatmap(values)
    _labelled(ax)
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    np.testing.assert_allclose(image.get_array(), np.log10(values).T)
    assert len(ax.figure.axes) == 2  # the heatmap and its colorbar
    assert ax.figure.axes[1].get_ylabel() == "log$_{10}$ gradient norm"
    ax.figure.canvas.draw()


def test_heatmap_draws_with_nan_inf_and_zero():
    values = np.array([[1.0, np.nan, 3.0], [np.inf, 0.0, 2.0], [-1.0, 5.0, 1e30]])
    ax = plot.heatmap(values, colorbar_label="log$_{10}$ ‖g‖")
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    data = image.get_array()
    # NaN, +inf, log10(0) = -inf and log10(-1) = NaN are masked (drawn in the "bad" red)
    assert data.mask.sum() == 4
    assert data.mask.T[0, 1] and data.mask.T[1, 0] and data.mask.T[1, 1] and data.mask.T[2, 0]
    assert image.get_cmap().get_bad()[:3] == pytest.approx((1.0, 0.0, 0.0))
    ax.figure.canvas.draw()


def test_heatmap_all_nan_still_draws():
    ax = plot.heatmap(np.full((3, 2), np.nan))
    ax.figure.canvas.draw()
    _labelled(ax)


def test_heatmap_layer_names_become_ticks():
    names = [f"{i}.linear" for i in range(20)]
    ax = plot.heatmap(np.ones((5, 20)), layer_names=names)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert 2 <= len(labels) <= 8
    assert labels[0] == "0.linear" and labels[-1] == "19.linear"
    assert set(labels) <= set(names)


@pytest.mark.parametrize("bad", [[1.0, 2.0], np.ones((2, 2, 2)), np.ones((0, 3))])
def test_heatmap_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="values"):
        plot.heatmap(bad)


def test_heatmap_rejects_wrong_number_of_layer_names():
    with pytest.raises(ValueError, match="layer_names"):
        plot.heatmap(np.ones((4, 3)), layer_names=["a", "b"])


# -- loss_curve --------------------------------------------------------------------------------


def test_loss_curve_log_scale_by_default():
    losses = [2.0, 1.0, 0.5, 0.25]
    ax = plot.loss_curve(losses)
    _labelled(ax)
    assert ax.get_yscale() == "log"
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), losses)
    assert ax.get_legend() is None


def test_loss_curve_linear_scale():
    ax = plot.loss_curve([3.0, -1.0, 2.0], log=False, label="run")
    assert ax.get_yscale() == "linear"
    assert ax.get_legend() is not None


def test_loss_curve_marks_non_finite_steps():
    losses = [1.0, 2.0, np.inf, 4.0, np.nan]
    ax = plot.loss_curve(losses)
    (marks,) = _lines(ax, "non-finite loss")
    assert isinstance(marks, Line2D)
    np.testing.assert_array_equal(marks.get_xdata(), [2, 4])
    assert marks.get_marker() == "x"
    assert ax.get_legend() is not None
    ax.figure.canvas.draw()


def test_loss_curve_without_non_finite_has_no_marker():
    ax = plot.loss_curve([1.0, 2.0])
    assert _lines(ax, "non-finite loss") == []


def test_loss_curve_all_non_finite_draws():
    ax = plot.loss_curve([np.nan, np.inf])
    (marks,) = _lines(ax, "non-finite loss")
    np.testing.assert_array_equal(marks.get_xdata(), [0, 1])
    ax.figure.canvas.draw()


def test_loss_curve_marks_spikes_in_range_and_finite_only():
    losses = np.array([1.0, 50.0, 1.0, np.nan, 2.0])
    ax = plot.loss_curve(losses, spikes=[1, 3, 4, 99, -1])
    (spikes,) = _lines(ax, "spike")
    np.testing.assert_array_equal(spikes.get_xdata(), [1, 4])
    np.testing.assert_array_equal(spikes.get_ydata(), [50.0, 2.0])


@pytest.mark.parametrize("bad", [[[1.0]], 1.0, []])
def test_loss_curve_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="losses"):
        plot.loss_curve(bad)


@pytest.mark.parametrize("bad", [[1.5], [1, 2.0], ["1"], [True], np.array([0.0, 2.0])])
def test_loss_curve_rejects_non_integer_spikes(bad):
    with pytest.raises(TypeError, match="spikes must hold integer step indices"):
        plot.loss_curve([1.0, 2.0, 3.0], spikes=bad)


def test_loss_curve_rejects_nested_spikes():
    with pytest.raises(ValueError, match="spikes"):
        plot.loss_curve([1.0, 2.0, 3.0], spikes=[[1]])


def test_loss_curve_accepts_integer_arrays_as_spikes():
    losses = np.array([1.0, 9.0, 1.0, 8.0])
    ax = plot.loss_curve(losses, spikes=np.flatnonzero(losses > 5))
    (spikes,) = _lines(ax, "spike")
    np.testing.assert_array_equal(spikes.get_xdata(), [1, 3])
    ax = plot.loss_curve(losses, spikes=np.array([], dtype=np.int64))
    assert _lines(ax, "spike") == []


def test_loss_curve_rejects_non_numbers():
    with pytest.raises(TypeError, match="losses"):
        plot.loss_curve([1.0, "x"])


# -- panels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
def test_panels_makes_a_row_of_axes(n):
    fig, axes = plot.panels(n)
    assert isinstance(axes, list) and len(axes) == n
    assert all(isinstance(ax, Axes) and ax.figure is fig for ax in axes)
    width = plot.PANEL_ROW_WIDTH if n > 1 else plot.STYLE["figure.figsize"][0]
    np.testing.assert_allclose(fig.get_size_inches(), [width, plot.PANEL_HEIGHT])
    # left to right, one row
    lefts = [ax.get_position().x0 for ax in axes]
    assert lefts == sorted(lefts)
    assert len({round(ax.get_position().y0, 6) for ax in axes}) == 1
    assert fig.get_layout_engine() is not None  # constrained layout: no tight_layout needed


def test_panels_size_ratios_and_subplots_keywords():
    fig, (left, right) = plot.panels(2, width=9.0, height=3.0, width_ratios=[2, 1], sharey=True)
    np.testing.assert_allclose(fig.get_size_inches(), [9.0, 3.0])
    fig.canvas.draw()
    assert left.get_position().width > 1.6 * right.get_position().width
    assert left.get_shared_y_axes().joined(left, right)
    plot.layer_norms([1.0, 10.0], ax=left)
    plot.loss_curve([1.0, 0.5], ax=right)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # labels fit without a layout warning
        fig.canvas.draw()


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n": 0}, ValueError, "n"),
        ({"n": 2.0}, TypeError, "n"),
        ({"width": 0.0}, ValueError, "width"),
        ({"width": "11"}, TypeError, "width"),
        ({"height": -1.0}, ValueError, "height"),
        ({"height": float("inf")}, ValueError, "height"),
        ({"n": 2, "width_ratios": [1.0]}, ValueError, "width_ratios"),
        ({"n": 2, "width_ratios": [1.0, 0.0]}, ValueError, "width_ratios"),
        ({"n": 2, "width_ratios": ["a", "b"]}, TypeError, "width_ratios"),
    ],
)
def test_panels_rejects_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        plot.panels(**kwargs)

