"""Every port computes what scratch computes: outputs and every gradient, float64 and float32."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.implementations import PORTS, require
from checks.runners import RUNNERS
from checks.strategies import DTYPES, attention_cases, multi_head_cases, softmax_cases
from checks.tolerances import assert_close

pytestmark = pytest.mark.attention

CASES = {"softmax": softmax_cases, "attention": attention_cases, "multi_head": multi_head_cases}


@pytest.mark.parametrize("op", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("impl", PORTS)
@given(data=st.data())
def test_port_matches_scratch(impl, dtype, op, data):
    port, scratch = require(impl, "attention"), require("scratch", "attention")
    case = data.draw(CASES[op](dtype), label="case")
    expected = RUNNERS[op](scratch, case)
    actual = RUNNERS[op](port, case)
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name].dtype == np.dtype(dtype), f"{impl}: {op} {name} is {actual[name].dtype}, input was {np.dtype(dtype)}"
        assert_close(actual[name], value, impl=impl, what=f"{op} {name}")


@pytest.mark.parametrize("op", ["attention", "multi_head"])
@pytest.mark.parametrize("impl", PORTS)
@given(data=st.data())
def test_port_matches_scratch_on_fully_masked_rows(impl, op, data):
    """Rows that may attend to nothing: 0 out, 0 gradient, no NaN, in every implementation."""
    port, scratch = require(impl, "attention"), require("scratch", "attention")
    case = data.draw(CASES[op](np.float64, empty_rows=True), label="case")
    expected = RUNNERS[op](scratch, case)
    actual = RUNNERS[op](port, case)
    for name, value in expected.items():
        assert np.all(np.isfinite(actual[name])), f"{impl}: {op} {name} is not finite"
        assert_close(actual[name], value, impl=impl, what=f"{op} {name}")
