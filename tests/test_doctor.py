"""gl.doctor: the zoo's symptoms found where they are, no false alarm on healthy networks, the
caller's model, optimizer and random state untouched, measurements equal to autograd's, bad
input rejected with the argument named."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradlab as gl
from gradlab.doctor import (
    GROWTH_ERROR,
    GROWTH_INFO,
    GROWTH_WARNING,
    RAIL_SLOPE,
    Finding,
    Report,
    _growth_finding,
    gradient_growth,
)
from gradlab.models import zoo


def _examine(patient: zoo.Patient) -> Report:
    return gl.doctor(patient.model, patient.loss_fn, patient.batch, optimizer=patient.optimizer)


@pytest.fixture(scope="module")
def broken_reports():
    return {p.name: (p, _examine(p)) for p in zoo.broken()}


@pytest.fixture(scope="module")
def healthy_reports():
    return {p.name: (p, _examine(p)) for p in zoo.healthy()}


def _detected(patient: zoo.Patient, report: Report) -> bool:
    return any(f.where == patient.where for f in report.of_kind(patient.expected))


@pytest.mark.parametrize("name", [p.name for p in zoo.broken()])
def test_broken_network_is_diagnosed_where_it_breaks(broken_reports, name):
    patient, report = broken_reports[name]
    found = report.of_kind(patient.expected)
    assert found, f"{name}: no {patient.expected} finding\n{report}"
    assert _detected(patient, report), f"{name}: expected where={patient.where!r}\n{report}"
    assert not report.ok


@pytest.mark.parametrize("name", [p.name for p in zoo.healthy()])
def test_healthy_network_gets_no_warning(healthy_reports, name):
    _, report = healthy_reports[name]
    assert report.ok, f"{name}: false alarm\n{report}"


def test_zoo_counts(broken_reports, healthy_reports, capsys):
    detected = sum(_detected(p, r) for p, r in broken_reports.values())
    false_alarms = sum(not r.ok for _, r in healthy_reports.values())
    with capsys.disabled():
        print(f"\ngl.doctor zoo: {detected}/{len(broken_reports)} broken networks diagnosed "
              f"(kind and module), {false_alarms}/{len(healthy_reports)} false alarms on healthy ones")
    assert detected == len(broken_reports)
    assert false_alarms == 0


def test_the_healthy_rnn_over_twenty_steps_gets_a_vanishing_warning():
    """zoo.healthy's tanh RNN runs 10 steps; over 20 its gradient shrinks back through time past
    the warning threshold, as the zoo's docstring says."""
    with gl.utils.seeded(0):
        model = gl.models.VanillaRNN(2, 32, init="orthogonal")
    x, y = gl.data.adding_problem(64, 20, seed=0)
    report = gl.doctor(model, F.mse_loss, (x, y.reshape(-1, 1)))
    assert [(f.kind, f.where) for f in report.findings if f.level > 0] == [("vanishing_gradient", "(model)")]


def test_kinds_cover_the_issue(broken_reports):
    kinds = {p.expected for p, _ in broken_reports.values()}
    assert kinds >= {"exploding_gradient", "vanishing_gradient", "non_finite", "update_ratio",
                     "saturation", "dead_units"}


# -- the caller's objects are untouched ----------------------------------------------------------

def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    state.update({f"grad.{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for i, s in enumerate(opt.state.values()):
        for k, v in s.items():
            state[f"opt.{i}.{k}"] = v.clone() if isinstance(v, torch.Tensor) else v
    return state


def test_callers_model_optimizer_and_rng_are_unchanged():
    with gl.utils.seeded(0):
        model = gl.mlp(3, 16, in_features=4, out_features=1, norm="batch", dropout=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    for _ in range(2):  # give Adam a state to keep
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    model.eval()
    before = _snapshot(model, opt)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    opt_state_ids = {id(v) for s in opt.state.values() for v in s.values()}

    report = gl.doctor(model, F.mse_loss, (x, y), optimizer=opt, steps=3)

    assert len(report.losses) == 3
    after = _snapshot(model, opt)
    assert before.keys() == after.keys()
    for k in before:
        if isinstance(before[k], torch.Tensor):
            assert torch.equal(before[k], after[k]), k
        else:
            assert before[k] == after[k], k
    assert {id(v) for s in opt.state.values() for v in s.values()} == opt_state_ids
    assert all(id(p) in {id(q) for q in model.parameters()} for g in opt.param_groups for p in g["params"])
    assert not model.training  # the mode is the caller's
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_without_optimizer_one_pass_and_no_update_ratio():
    model = gl.mlp(3, 16, in_features=4, out_features=1)
    report = gl.doctor(model, F.mse_loss, (torch.randn(32, 4), torch.randn(32, 1)))
    assert len(report.losses) == 1
    assert report.optimizer is None
    assert not [f for f in report.findings if f.kind == "update_ratio"]


# -- measurements against autograd ---------------------------------------------------------------

def test_output_grad_norms_equal_autograd_in_execution_order():
    with gl.utils.seeded(1):
        model = gl.mlp(5, 16, in_features=4, out_features=2)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    report = gl.doctor(model, F.mse_loss, (x, y))
    outputs = []

    def keep(module, args, output):
        output.retain_grad()
        outputs.append(output)

    hooks = [b.linear.register_forward_hook(keep) for b in model]
    F.mse_loss(model(x), y).backward()
    for h in hooks:
        h.remove()
    expected = [float(o.grad.norm()) for o in outputs]
    assert report.layer_names == [f"{i}.linear" for i in range(5)]
    np.testing.assert_allclose(report.output_grad_norms[0], expected, rtol=1e-5)


def test_update_ratios_equal_a_manual_step():
    with gl.utils.seeded(2):
        model = gl.mlp(3, 16, in_features=4, out_features=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    report = gl.doctor(model, F.mse_loss, (x, y), optimizer=opt, steps=1)
    w = model[0].linear.weight
    old = w.detach().clone()
    F.mse_loss(model(x), y).backward()
    opt.step()
    expected = float((w.detach() - old).norm() / old.norm())
    k = report.param_names.index("0.linear.weight")
    assert math.isclose(report.update_ratios[0, k], expected, rel_tol=1e-5)


def test_trend_fit_is_exact_on_a_geometric_sequence():
    growth, per_step = gradient_growth([1.5 ** (9 - i) for i in range(10)])
    assert math.isclose(per_step, 1.5, rel_tol=1e-9)
    assert math.isclose(growth, 1.5 ** 9, rel_tol=1e-9)
    # zeros and NaN are left out, and the span is that of the usable positions
    growth, _ = gradient_growth([0.0, 8.0, math.nan, 2.0, 1.0, 0.5])
    assert math.isclose(growth, 16.0, rel_tol=1e-9)
    assert gradient_growth([1.0, 2.0]) is None
    with pytest.raises(ValueError, match="norms must be a 1-D"):
        gradient_growth(np.ones((2, 3)))


def test_dead_units_seen_through_an_inplace_relu_and_a_functional_tanh_saturation():
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))
    with torch.no_grad():
        net[0].bias[:16] = -100.0
    report = gl.doctor(net, F.mse_loss, (torch.randn(64, 8), torch.randn(64, 1)))
    (dead,) = report.of_kind("dead_units")
    assert dead.where == "1" and dead.values["dead"] == 0.5 and dead.severity == "warning"

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 32)
            self.out = nn.Linear(32, 1)

        def forward(self, x):
            return self.out(torch.tanh(10 * self.lin(x)))

    report = gl.doctor(Functional(), F.mse_loss, (torch.randn(64, 8), torch.randn(64, 1)))
    site = next(s for s in report.activations if s.function == "tanh")
    assert site.module == "(model)"
    sat = report.of_kind("saturation")
    assert sat and sat[0].where == "(model)"


def test_saturation_fraction_matches_the_rails():
    net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1))
    x, y = torch.randn(256, 4), torch.randn(256, 1)
    report = gl.doctor(net, F.mse_loss, (x, y))
    slope = 1 - torch.tanh(net[0](x)) ** 2
    expected = float((slope < RAIL_SLOPE).float().mean())
    (site,) = report.activations
    assert math.isclose(site.saturated, expected, abs_tol=1e-6)


# -- non-finite values ---------------------------------------------------------------------------

def test_nan_in_the_batch_and_in_the_loss():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(16, 4)
    x[3, 1] = math.nan
    report = gl.doctor(net, F.mse_loss, (x, torch.randn(16, 1)))
    wheres = [f.where for f in report.of_kind("non_finite")]
    assert wheres[:2] == ["batch", "0"]

    report = gl.doctor(net, lambda out, y: torch.log(-(out - y).abs() - 1).mean(),
                       (torch.randn(16, 4), torch.randn(16, 1)))
    (found,) = report.of_kind("non_finite")
    assert found.where == "loss_fn"


def test_backward_nan_names_the_module_whose_backward_made_it():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), zoo.Sqrt(), nn.Linear(8, 1))
    report = gl.doctor(net, F.mse_loss, (torch.randn(32, 4), torch.randn(32, 1)))
    (found,) = report.of_kind("non_finite")
    assert found.where == "2" and found.values["phase"] == "backward" and found.values["holder"] == "1"


def test_a_nan_stops_the_run_before_any_step(broken_reports):
    _, report = broken_reports["float16_overflow"]
    assert len(report.losses) == 1
    assert report.update_ratios.shape[0] == 0  # no backward pass, no step


# -- inputs of every form ------------------------------------------------------------------------

class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

    def forward(self, left, right):
        return self.a(left) + self.b(right)


def test_tuple_and_dict_inputs():
    model = TwoInputs()
    y = torch.randn(8, 4)
    left, right = torch.randn(8, 3), torch.randn(8, 2)
    r1 = gl.doctor(model, F.mse_loss, ((left, right), y))
    r2 = gl.doctor(model, F.mse_loss, ({"left": left, "right": right}, y))
    assert r1.losses == r2.losses
    assert set(r1.layer_names) == {"a", "b"}


def test_report_prints_a_table_and_renders_html(broken_reports):
    _, report = broken_reports["dead_relu"]
    text = str(report)
    assert "dead_units" in text and "1.activation" in text and "advice:" in text
    assert text.splitlines()[0].startswith("gl.doctor: MLP, optimizer Adam")
    page = report._repr_html_()
    assert page.count("<tr>") == len(report.findings) + 1 and "<table>" in page
    assert isinstance(report.findings[0], Finding)
    assert gl.doctor.Report is Report and gl.doctor.Finding is Finding
    quiet = gl.doctor(nn.Linear(2, 1), F.mse_loss, (torch.randn(4, 2), torch.randn(4, 1)))
    assert str(quiet).endswith("no finding") and "no finding" in quiet._repr_html_()


def test_findings_are_sorted_worst_first(broken_reports):
    for _, report in broken_reports.values():
        levels = [f.level for f in report.findings]
        assert levels == sorted(levels, reverse=True)


@pytest.mark.parametrize("exploding", [True, False])
def test_growth_classifier_steps_up_one_severity_at_each_threshold(exploding):
    """Exact geometric norms whose growth (or shrinkage) is 1% below and 1% above each threshold:
    below GROWTH_INFO no finding; each threshold crossed raises the severity by exactly one, so
    the thresholds are ordered as the classifier uses them; the finding reports the growth the
    norms have."""
    levels = []
    for threshold in (GROWTH_INFO, GROWTH_WARNING, GROWTH_ERROR):
        for size in (threshold / 1.01, threshold * 1.01):
            growth = size if exploding else 1 / size
            norms = [growth ** ((7 - i) / 7) for i in range(8)]  # norms[0] / norms[-1] = growth
            finding = _growth_finding("layer", norms, "layer", False)
            if finding is None:
                levels.append(-1)
                continue
            assert finding.kind == ("exploding_gradient" if exploding else "vanishing_gradient")
            assert finding.values["growth"] == pytest.approx(growth, rel=1e-9)
            levels.append(finding.level)
    assert levels == [-1, 0, 0, 1, 1, 2]


def test_finding_repr_is_one_line_without_the_values(broken_reports):
    for _, report in broken_reports.values():
        for finding in report.findings:
            text = repr(finding)
            assert "\n" not in text and "values=" not in text and len(text) < 800, text
            assert text.startswith(f"Finding(kind={finding.kind!r}, where={finding.where!r}")
            assert finding.values  # still there, only not in the repr


# -- bad input -----------------------------------------------------------------------------------

def _ok():
    return nn.Linear(3, 1), F.mse_loss, (torch.randn(4, 3), torch.randn(4, 1))


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("change, error, words", [
    (dict(model="not a model"), TypeError, "model must be a torch.nn.Module"),
    (dict(loss_fn=3), TypeError, "loss_fn must be callable"),
    (dict(batch=torch.randn(4, 3)), TypeError, "batch must be a pair"),
    (dict(batch=(torch.randn(4, 3),)), ValueError, "batch must be a pair"),
    (dict(batch=([1, 2], torch.randn(4, 1))), TypeError, "batch[0] (x)"),
    (dict(batch=(torch.randn(4, 3), "y")), TypeError, "batch[1] (y)"),
    (dict(batch=(torch.randn(4, 5), torch.randn(4, 1))), ValueError, "batch[0] (x) of shape (4, 5)"),
    (dict(batch=(torch.randn(4, 3), torch.randn(2, 7))), ValueError, "batch[1] (y) of shape (2, 7)"),
    (dict(loss_fn=lambda out, y: (out - y) ** 2), ValueError, "loss_fn must return a scalar"),
    (dict(loss_fn=lambda out, y: 1.0), TypeError, "loss_fn must return a tensor"),
    (dict(loss_fn=lambda out, y: y.sum()), ValueError, "does not depend"),
    (dict(optimizer="adam"), TypeError, "optimizer must be"),
    (dict(steps=0), ValueError, "steps must be >= 1"),
    (dict(steps=1.5), TypeError, "steps must be an int"),
])
def test_bad_input_names_the_argument(change, error, words):
    model, loss_fn, batch = _ok()
    args = dict(model=model, loss_fn=loss_fn, batch=batch, optimizer=None, steps=3) | change
    with pytest.raises(error) as info:
        gl.doctor(args["model"], args["loss_fn"], args["batch"], optimizer=args["optimizer"],
                  steps=args["steps"])
    assert words in str(info.value)


def test_a_model_without_trainable_parameters_or_an_optimizer_of_another_model():
    frozen = nn.Linear(3, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="model has no trainable parameter"):
        gl.doctor(frozen, F.mse_loss, (torch.randn(4, 3), torch.randn(4, 1)))
    other = torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer holds none of model's parameters"):
        gl.doctor(nn.Linear(3, 1), F.mse_loss, (torch.randn(4, 3), torch.randn(4, 1)), optimizer=other)


# -- review: frozen layers, the origin of a forward NaN ------------------------------------------

def test_a_frozen_first_layer_does_not_hide_the_trend():
    """A frozen first layer (a frozen embedding or stem) has no output gradient: it is left out of
    the fit instead of switching the depth check off, and the first layer with a gradient is
    named. Its growth is that of the unfrozen network's layers 1 to 9."""
    x, y = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), torch.zeros(64, 1)
    with gl.utils.seeded(0):
        net = gl.mlp(10, 32, in_features=16, out_features=1, init="he", gain=2.0)
    free = gl.doctor(net, F.mse_loss, (x, y))
    net[0].requires_grad_(False)
    frozen = gl.doctor(net, F.mse_loss, (x, y))
    assert math.isnan(frozen.output_grad_norms[0, 0])
    (found,) = frozen.of_kind("exploding_gradient")
    assert found.where == "1.linear" and "fitted over 9" in found.evidence
    np.testing.assert_allclose(frozen.output_grad_norms[0, 1:], free.output_grad_norms[0, 1:], rtol=1e-5)
    expected, _ = gradient_growth(free.output_grad_norms[0, 1:])
    assert found.values["growth"] == pytest.approx(expected, rel=1e-6)


class _LogBetweenChildren(nn.Module):
    """The NaN is made by the model's own torch.log between its two layers; ``b`` is registered
    first but runs last, ``a`` is registered last but runs first."""

    def __init__(self):
        super().__init__()
        self.b = nn.Linear(4, 4)
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.log(self.a(x)))


def test_forward_nan_evidence_says_whether_the_module_made_it():
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    model = _LogBetweenChildren()
    (found,) = gl.doctor(model, F.mse_loss, (x, y)).of_kind("non_finite")
    assert found.where == "b" and found.values["input_finite"] is False
    assert "inputs already did" in found.evidence and "'(model)'" in found.evidence
    with torch.no_grad():
        model.a.weight[0, 0] = math.inf  # now a, registered after b but run before it, makes it
    (found,) = gl.doctor(model, F.mse_loss, (x, y)).of_kind("non_finite")
    assert found.where == "a" and found.values["input_finite"] is True
    assert "it made the NaN/Inf" in found.evidence


def test_update_ratio_reports_every_step_and_notes_a_zero_initialized_weight():
    """The finding's per-step ratios are those of manual Adam steps (the first one, 5.6, an error
    on its own, is not hidden behind the median); a zero-initialized read-out, a healthy
    practice, has no ratio in its first steps (inf, then about 1) and gets a note, not an error."""
    patient = next(p for p in zoo.broken() if p.name == "layer_lr_too_high")
    report = _examine(patient)
    (found,) = [f for f in report.of_kind("update_ratio") if f.where == "1.linear.weight"]
    model, opt = patient.model, patient.optimizer
    w, manual = model[1].linear.weight, []
    for _ in range(3):
        old = w.detach().clone()
        opt.zero_grad()
        patient.loss_fn(model(patient.batch[0]), patient.batch[1]).backward()
        opt.step()
        manual.append(float((w.detach() - old).norm() / old.norm()))
    np.testing.assert_allclose(found.values["per_step"], manual, rtol=1e-4)
    assert manual[0] > 1 and "steps: " + f"{manual[0]:.3g}" in found.evidence

    with gl.utils.seeded(0):
        net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    nn.init.zeros_(net[4].weight)
    batch = (torch.randn(64, 16), torch.randn(64, 1))
    report = gl.doctor(net, F.mse_loss, batch, optimizer=torch.optim.Adam(net.parameters(), lr=1e-3))
    assert report.ok, str(report)
    k = report.param_names.index("4.weight")
    # what it used to be judged on: inf at the first step, then about 1
    assert math.isinf(report.update_ratios[0, k]) and report.update_ratios[1, k] > 0.5
    (note,) = [f for f in report.findings if f.where == "4.weight"]
    assert note.severity == "info" and note.values["zero_start"] == ["4.weight"]


def test_dead_channels_of_a_conv1d_and_inactive_leaky_units():
    """A Conv1d's output is (batch, channels, length): its units are the channels, not the
    positions (8 of 16 channels with bias -100 are half the units dead, a warning). A leaky ReLU
    unit that is never positive still passes a gradient: a note, not a warning."""

    class Conv1dNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 16, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Linear(16, 1)

        def forward(self, x):
            return self.head(self.act(self.conv(x)).mean(-1))

    net = Conv1dNet()
    with torch.no_grad():
        net.conv.bias[:8] = -100.0
    report = gl.doctor(net, F.mse_loss, (torch.randn(64, 4, 20), torch.randn(64, 1)))
    (dead,) = report.of_kind("dead_units")
    assert dead.where == "act" and dead.values["dead"] == 0.5 and dead.values["units"] == 16
    assert dead.values["samples"] == 64 * 20

    net = nn.Sequential(nn.Linear(8, 32), nn.LeakyReLU(0.1), nn.Linear(32, 1))
    with torch.no_grad():
        net[0].bias[:24] = -100.0
    report = gl.doctor(net, F.mse_loss, (torch.randn(64, 8), torch.randn(64, 1)))
    assert report.ok
    (note,) = report.of_kind("dead_units", at_least="info")
    assert note.values["dead"] == 0.75 and "not dead" in note.evidence and "leaky ReLU" not in note.advice


def test_backward_nan_maker_is_a_consumer_of_the_output_not_the_last_module_seen():
    """Branch ``b`` runs its backward between the square root's and the ReLU's (its node was made
    between them): the gradient at the ReLU's output is made by the square root, which took that
    output as its input, not by ``b``, the last module whose gradient arrived finite."""

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.relu, self.b = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)
            self.sqrt, self.out = zoo.Sqrt(), nn.Linear(8, 1)

        def forward(self, x):
            h = self.relu(self.a(x))
            hb = self.b(x)
            return self.out(hb + self.sqrt(h))

    with gl.utils.seeded(0):
        model = Branch()
    report = gl.doctor(model, F.mse_loss, (torch.randn(32, 8), torch.randn(32, 1)))
    (found,) = report.of_kind("non_finite")
    assert found.where == "sqrt" and found.values["holder"] == "relu"


def test_a_functional_relu_applied_after_each_layer_is_depth_not_time():
    """A feed-forward network that applies F.relu in a loop over its layers calls one activation
    12 times in one module, each time after a different nn.Linear: those calls are layers, so
    the doctor reports the layers' trend only, not a second one "through time" with the RNN
    cliff's advice. A written-out RNN cell (no layer module between its calls) still gets one."""

    class FunctionalMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(16 if i == 0 else 32, 32) for i in range(12)])
            self.out = nn.Linear(32, 1)
            for layer in self.layers:
                nn.init.normal_(layer.weight, std=1.5 * (2 / layer.in_features) ** 0.5)
                nn.init.zeros_(layer.bias)

        def forward(self, x):
            for layer in self.layers:
                x = F.relu(layer(x))
            return self.out(x)

    with gl.utils.seeded(0):
        model = FunctionalMLP()
    report = gl.doctor(model, F.mse_loss, (torch.randn(64, 16), torch.randn(64, 1)))
    (site,) = report.activations
    assert site.calls == 12 and site.across_layers
    found = report.of_kind("exploding_gradient")
    assert [(f.where, f.chapter) for f in found] == [("layers.0", "initialization")]
    cliff = next(p for p in zoo.broken() if p.name == "cliff_rnn")
    assert not any(s.across_layers for s in _examine(cliff).activations)
