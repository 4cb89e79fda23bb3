"""Tests for gradlab.exercises.harness, and for what every checker does through it."""

import math
import re
from pathlib import Path

import pytest
import torch

import gradlab.exercises as exercises
from gradlab.exercises import CheckResult, check_function
from gradlab.exercises.harness import Case, WrongForm, describe, fmt, run

BOOK = Path(__file__).parent.parent / "book"
CHECKERS = [getattr(exercises, name) for name in exercises.__all__ if name.startswith("check_")
            and name != "check_function"]


def _square_cases():
    return [(torch.tensor([1.0, -2.0, 3.0]),), (torch.tensor(0.5),), (torch.arange(4.0).reshape(2, 2),)]


# --- CheckResult -------------------------------------------------------------------------------


def test_check_result_truthiness_str_and_markdown():
    ok, bad = CheckResult(True, 5, "all good"), CheckResult(False, 2, "case 2 is wrong")
    assert bool(ok) and not bool(bad)
    assert str(ok) == "all good" and str(bad) == "case 2 is wrong"
    assert ok._repr_markdown_() == "✅ all good"
    assert bad._repr_markdown_() == "❌ case 2 is wrong"


def test_assert_passed_returns_the_result_or_raises_with_the_message():
    ok = CheckResult(True, 3, "all 3 random cases match.")
    assert ok.assert_passed() is ok
    with pytest.raises(AssertionError, match="case 2 is wrong"):
        CheckResult(False, 2, "demo: case 2 is wrong").assert_passed()


# --- check_function ----------------------------------------------------------------------------


def test_check_function_passes_a_correct_function():
    result = check_function(lambda t: t * t, lambda t: t**2, _square_cases(), name="square")
    assert isinstance(result, CheckResult)
    assert result.passed and bool(result)
    assert result.cases == 3
    assert result.message == "square: all 3 random cases match."
    # plain Python numbers and lists are accepted as return values
    result = check_function(lambda a, b: float(a + b), lambda a, b: a + b, [(1, 2), (0.5, 0.25)], name="add")
    assert result and result.cases == 2


def test_check_function_names_the_failing_case_and_shows_both_values():
    def wrong(t):
        return t * t if t.ndim != 0 else t * 3  # wrong on case 2 only

    result = check_function(wrong, lambda t: t**2, _square_cases(), name="square")
    assert not result and result.passed is False
    assert result.cases == 2
    assert result.message.startswith("square: case 2 (0.5) is wrong")
    assert "largest error 1.25" in result.message
    assert "expected: 0.25" in result.message
    assert "returned: 1.5" in result.message
    long = check_function(lambda t: t + 1, lambda t: t, [(torch.zeros(10),)], name="long")
    assert "case 1 (shape (10,))" in long.message
    assert "expected: [0, 0, 0, 0, 0, 0] ... (10 entries)" in long.message
    assert "returned: [1, 1, 1, 1, 1, 1] ... (10 entries)" in long.message


def test_numbers_are_printed_with_four_significant_digits():
    result = check_function(lambda x: x + 1e-3, lambda x: x, [(1 / 3,)], name="third")
    assert "case 1 (0.3333)" in result.message
    assert "expected: 0.3333\nreturned: 0.3343" in result.message
    assert fmt(123456.0) == "1.235e+05" and fmt(2) == "2" and fmt(-0.000123456) == "-0.0001235"


def test_check_function_tolerances():
    cases = [(1.0,)]
    assert check_function(lambda x: x + 1e-9, lambda x: x, cases, name="f")
    assert not check_function(lambda x: x + 1e-3, lambda x: x, cases, name="f")
    assert check_function(lambda x: x + 1e-3, lambda x: x, cases, name="f", rtol=1e-2)
    assert not check_function(lambda x: float("nan"), lambda x: x, cases, name="f")


def test_check_function_reports_exceptions_of_the_candidate():
    def broken(t):
        raise ZeroDivisionError("oops")

    result = check_function(broken, lambda t: t, _square_cases(), name="square")
    assert not result
    assert result.cases == 1
    assert result.message == "square: case 1 (shape (3,)) raised ZeroDivisionError: oops"


def test_check_function_reports_wrong_shapes_and_types():
    result = check_function(lambda t: t.reshape(-1), lambda t: t, _square_cases()[2:], name="flat")
    assert not result
    assert result.message == "flat: case 1 (shape (2, 2)) returned shape (4,), expected (2, 2)"
    result = check_function(lambda t: "abc", lambda t: t, _square_cases(), name="str")
    assert not result
    assert "case 1 (shape (3,)) returned str, expected a tensor of shape (3,)" in result.message
    result = check_function(lambda t: None, lambda t: t, _square_cases()[1:], name="none")
    assert not result and "returned NoneType, expected a number" in result.message


def test_a_one_entry_tensor_counts_as_a_number():
    assert check_function(lambda x: torch.tensor([x]), lambda x: x, [(2.0,)], name="one")


def test_check_function_rejects_bad_arguments():
    for candidate in (None, 3, "f"):
        with pytest.raises(TypeError, match="candidate must be callable"):
            check_function(candidate, lambda t: t, _square_cases(), name="x")
    with pytest.raises(TypeError, match="reference must be callable"):
        check_function(lambda t: t, 3, _square_cases(), name="x")
    with pytest.raises(ValueError, match="at least one case"):
        check_function(lambda t: t, lambda t: t, [], name="x")


# --- run: the loop every checker uses ----------------------------------------------------------


def _number_case(g, i):
    x = float(torch.randn((), generator=g, dtype=torch.float64))
    return Case((x,), 2 * x, describe(x=x))


def test_run_draws_n_cases_reproducibly_from_the_seed():
    seen = []

    def record(x):
        seen.append(x)
        return 2 * x

    result = run("double", record, _number_case, 7, 3, rtol=1e-9, atol=0.0)
    assert result.passed and result.cases == 7 and result.message == "double: all 7 random cases match."
    first, seen[:] = list(seen), []
    run("double", record, _number_case, 7, 3, rtol=1e-9, atol=0.0)
    assert seen == first and len(set(first)) == 7
    run("double", record, _number_case, 7, 4, rtol=1e-9, atol=0.0)
    assert seen[7:] != first


@pytest.mark.parametrize(("fn", "n_cases", "seed", "error", "argument"), [
    (3, 5, 0, TypeError, "fn must be callable"),
    (abs, 0, 0, ValueError, "n_cases must be >= 1"),
    (abs, -2, 0, ValueError, "n_cases must be >= 1"),
    (abs, True, 0, TypeError, "n_cases must be an int"),
    (abs, 2.0, 0, TypeError, "n_cases must be an int"),
    (abs, 5, -1, ValueError, "seed must be >= 0"),
    (abs, 5, "0", TypeError, "seed must be an int"),
])
def test_run_refuses_bad_input_naming_the_argument(fn, n_cases, seed, error, argument):
    with pytest.raises(error, match=argument):
        run("double", fn, _number_case, n_cases, seed, rtol=1e-9, atol=0.0)


def test_run_retries_a_rejected_draw_and_gives_up_on_a_broken_generator():
    calls = []

    def every_other(g, i):
        calls.append(i)
        return None if len(calls) % 2 else _number_case(g, i)

    assert run("double", lambda x: 2 * x, every_other, 3, 0, rtol=1e-9, atol=0.0).cases == 3
    assert calls == [0, 0, 1, 1, 2, 2]
    with pytest.raises(RuntimeError, match="rejected"):
        run("double", abs, lambda g, i: None, 1, 0, rtol=1e-9, atol=0.0)


def test_the_reader_cannot_change_a_case_by_modifying_its_arguments():
    def make(g, i):
        x = torch.ones(3, dtype=torch.float64)
        return Case((x,), x.clone(), "ones")

    def clobber(x):
        x.mul_(5.0)
        return x / 5

    # the expected answer and the next call see the original ones
    assert run("copy", clobber, make, 3, 0, rtol=1e-9, atol=0.0)


def test_parameters_arrive_with_their_gradients_and_modules_as_copies():
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    p.grad = torch.full((2,), 3.0, dtype=torch.float64)
    module = torch.nn.Linear(2, 1).double()
    seen = {}

    def look(params, m):
        seen.update(grad=params[0].grad.clone(), same_param=params[0] is p, same_module=m is module)
        params[0].grad.zero_()
        return 0.0

    run("look", look, lambda g, i: Case(([p], module), 0.0), 1, 0, rtol=0.0, atol=0.0)
    assert torch.equal(seen["grad"], torch.full((2,), 3.0, dtype=torch.float64))
    assert not seen["same_param"] and not seen["same_module"]
    assert torch.equal(p.grad, torch.full((2,), 3.0, dtype=torch.float64))  # the case is untouched


def _parts_case(g, i):
    return Case((), {"the norm": 2.0, "the gradient": torch.ones(2), "the missing grad": None}, "parts")


def test_a_dict_answer_is_compared_part_by_part_in_order():
    def answer(norm=2.0, grad=None, missing=None):
        return lambda: {"the norm": norm, "the gradient": torch.ones(2) if grad is None else grad,
                        "the missing grad": missing}

    assert run("parts", answer(), _parts_case, 1, 0, rtol=1e-9, atol=0.0)
    cases = [
        (answer(norm=2.5), "parts: case 1 (parts): the norm is wrong (largest error 0.5).\nexpected: 2\n"
                           "returned: 2.5"),
        (answer(grad=torch.zeros(3)), "parts: case 1 (parts): the gradient has shape (3,), expected (2,)"),
        (answer(grad="g"), "parts: case 1 (parts): the gradient is str, expected a tensor of shape (2,)"),
        (answer(missing=torch.zeros(2)), "parts: case 1 (parts): the missing grad is Tensor, expected None"),
    ]
    for fn, message in cases:
        result = run("parts", fn, _parts_case, 1, 0, rtol=1e-9, atol=0.0)
        assert not result and result.message == message


def test_part_atol_overrides_atol_for_its_part():
    def make(g, i):
        return Case((), {"tiny": torch.tensor([1e-20]), "step": torch.tensor([1e-12])})

    off = {"tiny": torch.tensor([1e-20]), "step": torch.tensor([1.5e-12])}
    assert not run("tol", lambda: off, make, 1, 0, rtol=1e-6, atol=0.0)
    assert run("tol", lambda: off, make, 1, 0, rtol=1e-6, atol=0.0, part_atol={"step": 1e-12})
    tiny_off = {"tiny": torch.tensor([2e-20]), "step": torch.tensor([1e-12])}
    assert not run("tol", lambda: tiny_off, make, 1, 0, rtol=1e-6, atol=0.0, part_atol={"step": 1e-12})


def test_observe_may_refuse_an_answer_with_a_message():
    def observe(returned, called, case):
        if not isinstance(returned, tuple):
            raise WrongForm("return a tuple")
        return returned[0]

    result = run("obs", lambda x: 2 * x, _number_case, 1, 0, rtol=1e-9, atol=0.0, observe=observe)
    assert not result and result.message.startswith("obs: case 1 (x=")
    assert result.message.endswith(": return a tuple")
    assert run("obs", lambda x: (2 * x,), _number_case, 1, 0, rtol=1e-9, atol=0.0, observe=observe)


def test_an_exception_of_the_reader_is_reported_with_its_hint():
    def broken(x):
        raise RuntimeError("element 0 does not require grad")

    hints = {"require grad": "call requires_grad_()", "unrelated": "never shown"}
    result = run("hint", broken, _number_case, 3, 0, rtol=1e-9, atol=0.0, error_hints=hints)
    assert not result and result.cases == 1
    assert result.message.endswith("raised RuntimeError: element 0 does not require grad\n"
                                   "Hint: call requires_grad_()")


SLIPS = {
    "triple instead of double": lambda c: 3 * c.args[0],
    "the negative": lambda c: -2 * c.args[0],
    "also the negative": lambda c: -2 * c.args[0],
    "the right answer itself, which is no slip": lambda c: c.expected,
    "does not apply": lambda c: None,
}


def test_a_matching_slip_is_named_and_only_a_matching_one():
    triple = run("double", lambda x: 3 * x, _number_case, 5, 0, rtol=1e-9, atol=0.0, slips=SLIPS)
    assert not triple and triple.message.endswith("\nKnown slip: triple instead of double.")
    negative = run("double", lambda x: -2 * x, _number_case, 5, 0, rtol=1e-9, atol=0.0, slips=SLIPS)
    assert negative.message.endswith("\nKnown slips that give this answer here: the negative; or also the "
                                     "negative.")
    other = run("double", lambda x: 4 * x, _number_case, 5, 0, rtol=1e-9, atol=0.0, slips=SLIPS)
    assert not other and "slip" not in other.message


def test_a_slip_with_a_wrong_shape_is_named_and_a_partial_slip_gives_only_its_parts():
    def make(g, i):
        w = torch.arange(6.0).reshape(2, 3)
        return Case((w,), {"m": w, "v": torch.ones(2)})

    slips = {"the transpose of m": lambda c: {"m": c.args[0].T},
             "v doubled": lambda c: {"v": 2 * torch.ones(2)}}
    result = run("shape", lambda w: {"m": w.T, "v": torch.ones(2)}, make, 1, 0, rtol=1e-9, atol=0.0,
                 slips=slips, observe=lambda r, a, c: r)
    assert "m has shape (3, 2), expected (2, 3)\nKnown slip: the transpose of m." in result.message
    result = run("shape", lambda w: {"m": w, "v": 2 * torch.ones(2)}, make, 1, 0, rtol=1e-9, atol=0.0,
                 slips=slips, observe=lambda r, a, c: r)
    assert result.message.endswith("Known slip: v doubled.")


def test_slips_may_be_matched_more_loosely_than_the_answer():
    close = run("double", lambda x: 3 * x * (1 + 1e-6), _number_case, 1, 0, rtol=1e-9, atol=0.0,
                slips=SLIPS)
    assert "Known slip" not in close.message
    loose = run("double", lambda x: 3 * x * (1 + 1e-6), _number_case, 1, 0, rtol=1e-9, atol=0.0,
                slips=SLIPS, slip_rtol=1e-4)
    assert "Known slip: triple" in loose.message


def test_describe_names_parameters_and_shapes():
    label = describe("tanh", t=2, sigma_w=1.23456, W=torch.zeros(3, 3), b=torch.tensor(0.5),
                     shapes=[(3,), ()], weights=[0.5, 1 / 3], shape=(2, 4))
    assert label == ("tanh, t=2, sigma_w=1.235, W of shape (3, 3), b=0.5, shapes=[(3,), ()], "
                     "weights=[0.5, 0.3333], shape=(2, 4)")


# --- every checker -----------------------------------------------------------------------------


def test_every_checker_of_the_book_is_exported():
    used = set()
    for chapter in BOOK.glob("*.md"):
        used |= set(re.findall(r"exercises\.(check_\w+)\(", chapter.read_text(encoding="utf-8")))
    assert len(used) >= 9
    assert used <= set(exercises.__all__)
    assert {c.__name__ for c in CHECKERS} == {n for n in exercises.__all__ if n.startswith("check_")} - {
        "check_function"}


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("kwargs", "error", "argument"), [
    ({"fn": "not a function"}, TypeError, "fn must be callable"),
    ({"n_cases": 0}, ValueError, "n_cases must be >= 1"),
    ({"n_cases": True}, TypeError, "n_cases must be an int"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
])
def test_every_checker_refuses_bad_input_naming_the_argument(checker, kwargs, error, argument):
    arguments = {"fn": lambda *args: 0.0, "n_cases": 2, "seed": 0} | kwargs
    with pytest.raises(error, match=argument):
        checker(arguments.pop("fn"), **arguments)


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_every_checker_reports_an_exception_of_the_reader(checker):
    def broken(*args):
        return math.log(-1.0)

    result = checker(broken)
    assert not result.passed and result.cases == 1
    assert "case 1 (" in result.message and "raised ValueError: math domain error" in result.message
