"""The public checks of your homework: one pytest marker per function.

    python -m pytest -m softmax_forward        # only the function in hand
    python -m pytest                           # everything

test_expected_values: your function on a few fixed inputs against the reference's outputs.
test_gradients: your backward against central differences of your own forward.
Passing these is a good sign, not a grade: the grader draws many more inputs, and shrinks a
failing one to the smallest it can find.
"""

import pytest

from homework_support import gradient_check, load_cases, run_case

CASES = load_cases()
GRADCHECK_RTOL = 1e-6


def marked(cases):
    return [pytest.param(c, id=c.id, marks=getattr(pytest.mark, c.spec["marker"])) for c in cases]


@pytest.mark.parametrize("case", marked(CASES))
def test_expected_values(case):
    run_case(case)


@pytest.mark.parametrize("case", marked([c for c in CASES if c.case.get("gradcheck")]))
def test_gradients(case):
    error = gradient_check(case)
    assert error < GRADCHECK_RTOL, (
        f"{case.spec['module']}.{case.spec['function']}: relative error {error:.3g} against central differences "
        f"of your {case.spec['forward']} (should be below {GRADCHECK_RTOL:g})"
    )
