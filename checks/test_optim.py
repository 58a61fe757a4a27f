"""scratch/optim.py: SGD and Adam against torch.optim step for step, exact resumption, schedules."""

import io
import math
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from checks.strategies import DTYPES, floats
from checks.tolerances import assert_close
from scratch import optim

pytestmark = pytest.mark.optim

DTYPE_IDS = [np.dtype(d).name for d in DTYPES]
NAMES = ("W", "b", "attn.W_q")  # a dotted name, as the models' flat dicts have


# ----------------------------------------------------------------------------------------------
# Cases: parameters and 20+ steps of gradients, all drawn by Hypothesis
# ----------------------------------------------------------------------------------------------


def gradients(dtype, shape):
    """floats() with |g| < 1e-6 set to 0 (0 itself stays: an unused embedding row has g = 0).

    A gradient of 1e-160 squares to a subnormal, whose rounding is no longer relative: two
    correct Adams then disagree through v alone. That is floating point, not the optimiser.
    """
    return floats(dtype, shape).map(lambda a: np.where(np.abs(a) < 1e-6, 0.0, a).astype(dtype))


class OptimCase(NamedTuple):
    params: dict  # name → array (P)
    grads: list  # one dict per step, name → array (P)


@st.composite
def optim_cases(draw, dtype, min_steps=20, max_steps=24):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    shapes = {name: draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=3)) for name in names}
    params = {name: draw(floats(dtype, shape)) for name, shape in shapes.items()}
    steps = draw(st.integers(min_steps, max_steps))
    grads = [{name: draw(gradients(dtype, shape)) for name, shape in shapes.items()} for _ in range(steps)]
    return OptimCase(params, grads)


learning_rates = st.floats(1e-4, 1.0)
adam_settings = st.one_of(
    st.just({}),  # torch's defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8
    st.fixed_dictionaries({
        "lr": learning_rates,
        "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.9999)),
        "eps": st.sampled_from([1e-8, 1e-6, 1e-3]),
    }),
)
sgd_settings = st.fixed_dictionaries({"lr": learning_rates, "momentum": st.one_of(st.just(0.0), st.floats(0.0, 0.99))})


# ----------------------------------------------------------------------------------------------
# The reference: torch.optim on copies of the same arrays, fed the same gradients
# ----------------------------------------------------------------------------------------------

TORCH_STATE = {"m": "exp_avg", "v": "exp_avg_sq", "momentum_buffer": "momentum_buffer"}


def run_both(make_ours, make_torch, case, scheduler=None):
    """Step scratch and torch side by side; yield (t, ours, theirs, our state, torch's state) after each step."""
    torch = pytest.importorskip("torch")
    ours = {name: p.copy() for name, p in case.params.items()}
    tensors = {name: torch.tensor(p.copy(), requires_grad=True) for name, p in case.params.items()}
    opt, reference = make_ours(), make_torch(torch, list(tensors.values()))
    sched = scheduler(torch, reference) if scheduler else None
    for t, grads in enumerate(case.grads, start=1):
        opt.step(ours, grads)
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[name])
        reference.step()
        if sched is not None:
            sched.step()
        theirs = {name: tensor.detach().numpy() for name, tensor in tensors.items()}
        torch_state = {name: reference.state[tensor] for name, tensor in tensors.items()}
        yield t, ours, theirs, opt.state_dict(), torch_state


def assert_matches_torch(impl, steps):
    for t, ours, theirs, state, torch_state in steps:
        for name in ours:
            assert ours[name].dtype == theirs[name].dtype, f"{impl}: params[{name!r}] became {ours[name].dtype}"
            assert_close(ours[name], theirs[name], impl=impl, what=f"params[{name!r}] after step {t}")
    assert int(state["t"]) == t, f"{impl}: state['t'] is {int(state['t'])} after {t} steps"
    for key, value in state.items():  # the buffers after the last step, against torch's own state
        if key != "t":
            kind, _, name = key.partition(".")
            assert_close(value, torch_state[name][TORCH_STATE[kind]].numpy(), impl=impl, what=f"state[{key!r}] after step {t}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@given(data=st.data())
def test_adam_matches_torch(dtype, data):
    case, settings = data.draw(optim_cases(dtype)), data.draw(adam_settings)
    steps = run_both(lambda: optim.Adam(**settings), lambda torch, ps: torch.optim.Adam(ps, **settings), case)
    assert_matches_torch(f"torch.optim.Adam({settings})", steps)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@given(data=st.data())
def test_sgd_matches_torch(dtype, data):
    case, settings = data.draw(optim_cases(dtype)), data.draw(sgd_settings)
    steps = run_both(lambda: optim.SGD(**settings), lambda torch, ps: torch.optim.SGD(ps, **settings), case)
    assert_matches_torch(f"torch.optim.SGD({settings})", steps)


@pytest.mark.parametrize("kind", ["Adam", "SGD"])
@given(case=optim_cases(np.float64), d_model=st.integers(1, 64), warmup=st.integers(1, 30))
def test_schedule_matches_torch_lambda_lr(kind, case, d_model, warmup):
    """A schedule as lr equals torch's LambdaLR around a base lr of 1, which counts from 0."""
    schedule = optim.transformer_schedule(d_model, warmup)
    ours = {"Adam": lambda: optim.Adam(schedule), "SGD": lambda: optim.SGD(schedule, momentum=0.9)}[kind]
    theirs = {"Adam": lambda torch, ps: torch.optim.Adam(ps, lr=1.0),
              "SGD": lambda torch, ps: torch.optim.SGD(ps, lr=1.0, momentum=0.9)}[kind]
    lambda_lr = lambda torch, opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: schedule(epoch + 1))  # noqa: E731
    assert_matches_torch(f"torch.optim.{kind} with LambdaLR", run_both(ours, theirs, case, lambda_lr))


def test_adam_first_step_is_lr_times_the_sign_of_g():
    """At t = 1 the bias corrections give m̂ = g and v̂ = g², so θ moves by α·g / (|g| + ε)."""
    p = np.array([0.5, -1.0, 2.0, 0.0])
    g = np.array([3.0, -1e-3, 0.0, 1e-6])
    params = {"p": p.copy()}
    optim.Adam(lr=0.1, eps=1e-8).step(params, {"p": g})
    np.testing.assert_allclose(params["p"], p - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------------------------
# In place, dtype in = dtype out
# ----------------------------------------------------------------------------------------------

OPTIMIZERS = {  # id → a fresh optimiser
    "sgd": lambda: optim.SGD(0.1),
    "sgd_momentum": lambda: optim.SGD(0.1, momentum=0.9),
    "adam": lambda: optim.Adam(0.01),
    "adam_schedule": lambda: optim.Adam(optim.transformer_schedule(16, 5), betas=(0.9, 0.98), eps=1e-9),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_float32_stays_float32_and_updates_in_place(make):
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}
    before = {name: p.copy() for name, p in params.items()}
    arrays, view = dict(params), params["W"][0]  # the same objects, and a view into W
    # A schedule returning a NumPy float64 must not promote the update to float64 either.
    opt = make()
    if callable(opt.lr):
        schedule = opt.lr
        opt.lr = lambda t: np.float64(schedule(t))
    for _ in range(5):
        opt.step(params, {name: rng.standard_normal(p.shape).astype(np.float32) for name, p in params.items()})
    for name, p in params.items():
        assert p is arrays[name], f"params[{name!r}] was replaced, not updated in place"
        assert p.dtype == np.float32, f"params[{name!r}] became {p.dtype}"
        assert not np.array_equal(p, before[name]), f"params[{name!r}] did not move"
    assert np.array_equal(view, params["W"][0]), "a view into params['W'] does not see the update"
    for key, value in opt.state_dict().items():
        assert value.dtype == (np.int64 if key == "t" else np.float32), f"state[{key!r}] is {value.dtype}"


# ----------------------------------------------------------------------------------------------
# Checkpoints: state_dict → .npz → load_state_dict continues bit for bit
# ----------------------------------------------------------------------------------------------


def through_npz(arrays):
    """What a checkpoint does: np.savez, then np.load with allow_pickle=False."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        return {key: loaded[key] for key in loaded.files}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
@given(data=st.data())
def test_resumed_run_continues_bit_for_bit(make, dtype, data):
    case = data.draw(optim_cases(dtype))
    stop = data.draw(st.integers(1, len(case.grads) - 1), label="stop after step")
    straight, opt = {name: p.copy() for name, p in case.params.items()}, make()
    for grads in case.grads:
        opt.step(straight, grads)

    first, first_opt = {name: p.copy() for name, p in case.params.items()}, make()
    for grads in case.grads[:stop]:
        first_opt.step(first, grads)
    params, state = through_npz(first), through_npz(first_opt.state_dict())
    resumed = make()
    resumed.load_state_dict(state)
    for grads in case.grads[stop:]:
        resumed.step(params, grads)

    for name in straight:
        assert params[name].dtype == straight[name].dtype
        assert np.array_equal(params[name], straight[name]), f"params[{name!r}] differs after resuming at step {stop}"
    final, expected = resumed.state_dict(), opt.state_dict()
    assert final.keys() == expected.keys()
    for key in expected:
        assert final[key].dtype == expected[key].dtype and np.array_equal(final[key], expected[key]), f"state[{key!r}] differs"


@pytest.mark.parametrize("name", ["sgd_momentum", "adam", "adam_schedule"])
def test_resuming_without_the_state_would_differ(name):
    """The round trip above is not vacuous: a fresh optimiser (t = 0, zero buffers) takes other steps."""
    rng = np.random.default_rng(1)
    grads = [{"W": rng.standard_normal((2, 3))} for _ in range(6)]
    straight, opt = {"W": np.ones((2, 3))}, OPTIMIZERS[name]()
    for g in grads:
        opt.step(straight, g)
    resumed, first_opt = {"W": np.ones((2, 3))}, OPTIMIZERS[name]()
    for g in grads[:3]:
        first_opt.step(resumed, g)
    fresh = OPTIMIZERS[name]()
    for g in grads[3:]:
        fresh.step(resumed, g)
    assert not np.allclose(resumed["W"], straight["W"])


def test_state_dict_keys_and_copies():
    params = {"W": np.ones((2, 3)), "attn.b": np.zeros(3)}
    grads = {"W": np.full((2, 3), 0.5), "attn.b": np.ones(3)}
    assert set(optim.SGD(0.1).state_dict()) == {"t"}
    sgd = optim.SGD(0.1, momentum=0.9)
    sgd.step(params, grads)
    assert set(sgd.state_dict()) == {"t", "momentum_buffer.W", "momentum_buffer.attn.b"}
    adam = optim.Adam()
    adam.step(params, grads)
    state = adam.state_dict()
    assert set(state) == {"t", "m.W", "v.W", "m.attn.b", "v.attn.b"}
    assert state["t"].shape == () and state["t"].dtype == np.int64 and int(state["t"]) == 1
    np.testing.assert_allclose(state["m.W"], 0.1 * grads["W"], rtol=1e-15)  # (1 − β1) g after one step from 0
    np.testing.assert_allclose(state["v.attn.b"], 0.001 * grads["attn.b"] ** 2, rtol=1e-15)
    saved = {key: value.copy() for key, value in state.items()}
    adam.step(params, grads)  # the returned dict is a snapshot, not a view of the live buffers
    assert all(np.array_equal(state[key], saved[key]) for key in saved)
    other = optim.Adam()
    other.load_state_dict(state)
    state["m.W"][...] = 123.0  # load_state_dict copied: editing the source afterwards changes nothing
    assert not np.any(other.state_dict()["m.W"] == 123.0)


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors, and a failed step changes nothing
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_step_rejects_bad_grads_and_changes_nothing(make):
    params = {"W": np.ones((3, 2)), "b": np.zeros(2)}
    opt = make()
    opt.step(params, {"W": np.ones((3, 2)), "b": np.ones(2)})
    before, state = {n: p.copy() for n, p in params.items()}, opt.state_dict()
    bad = [
        ({"W": np.ones((3, 2))}, ValueError, r"missing \['b'\]"),
        ({"W": np.ones((3, 2)), "b": np.ones(2), "c": np.ones(1)}, ValueError, r"unexpected \['c'\]"),
        ({"W": np.ones((2, 3)), "b": np.ones(2)}, ValueError, r"grads\['W'\] must have shape \(3, 2\) to match params\['W'\], got shape \(2, 3\)"),
        ({"W": np.ones((3, 2), np.float32), "b": np.ones(2)}, TypeError, r"grads\['W'\] must have the dtype of params\['W'\], float64, got float32"),
        ({"W": np.ones((3, 2), np.int64), "b": np.ones(2)}, TypeError, r"grads\['W'\] must be a floating-point array"),
    ]
    for grads, error, message in bad:
        with pytest.raises(error, match=message):
            opt.step(params, grads)
    for name in params:
        assert np.array_equal(params[name], before[name]), f"a rejected step changed params[{name!r}]"
    assert all(np.array_equal(opt.state_dict()[k], state[k]) for k in state), "a rejected step changed the state"


def test_step_rejects_params_it_cannot_update_in_place():
    with pytest.raises(TypeError, match=r"params\['W'\] must be a floating-point NumPy array.*got list"):
        optim.SGD(0.1).step({"W": [1.0, 2.0]}, {"W": np.ones(2)})
    with pytest.raises(TypeError, match=r"params\['W'\] must be a floating-point NumPy array.*got dtype int64"):
        optim.SGD(0.1).step({"W": np.arange(2)}, {"W": np.ones(2)})
    frozen = np.ones(2)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['W'\] must be writeable"):
        optim.Adam().step({"W": frozen}, {"W": np.ones(2)})
    with pytest.raises(TypeError, match="params must be a dict"):
        optim.Adam().step([np.ones(2)], {"W": np.ones(2)})


def test_step_rejects_another_models_params():
    opt = optim.Adam()
    opt.step({"W": np.ones(2)}, {"W": np.ones(2)})
    with pytest.raises(ValueError, match=r"'m' buffers for \['W'\], but params has \['V'\]"):
        opt.step({"V": np.ones(2)}, {"V": np.ones(2)})
    with pytest.raises(ValueError, match=r"buffer for 'W' has shape \(2,\).*params\['W'\] has shape \(3,\)"):
        opt.step({"W": np.ones(3)}, {"W": np.ones(3)})


@pytest.mark.parametrize("make, error, message", [
    (lambda: optim.SGD(-0.1), ValueError, "lr must be a finite number ≥ 0, got -0.1"),
    (lambda: optim.SGD(float("nan")), ValueError, "lr must be a finite number"),
    (lambda: optim.SGD("0.1"), TypeError, "lr must be a float or a schedule"),
    (lambda: optim.SGD(0.1, momentum=1.0), ValueError, r"momentum must be a number in \[0, 1\), got 1.0"),
    (lambda: optim.SGD(0.1, momentum=-0.5), ValueError, "momentum must be a number in"),
    (lambda: optim.Adam(betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be a number in \[0, 1\)"),
    (lambda: optim.Adam(betas=0.9), ValueError, "betas must be a pair"),
    (lambda: optim.Adam(eps=-1e-8), ValueError, "eps must be a finite number ≥ 0"),
    (lambda: optim.constant(-1.0), ValueError, "lr must be a finite number ≥ 0"),
    (lambda: optim.transformer_schedule(0, 10), ValueError, "d_model must be a positive int, got 0"),
    (lambda: optim.transformer_schedule(512, 1.5), ValueError, "warmup must be a positive int, got 1.5"),
])
def test_constructors_reject_bad_settings(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_bad_schedule_value_is_caught_at_its_step():
    opt = optim.SGD(lambda t: 0.1 if t < 3 else -1.0)
    params, grads = {"W": np.ones(2)}, {"W": np.ones(2)}
    opt.step(params, grads)
    opt.step(params, grads)
    with pytest.raises(ValueError, match="returned -1.0 for step 3"):
        opt.step(params, grads)
    assert opt.t == 2


@pytest.mark.parametrize("state, message", [
    ({}, "state must have the step count 't'"),
    ({"t": np.array(1.5)}, r"state\['t'\] must be a non-negative integer scalar"),
    ({"t": np.array(-1)}, r"state\['t'\] must be a non-negative integer scalar"),
    ({"t": np.array([1])}, r"state\['t'\] must be a non-negative integer scalar"),
    ({"t": np.array(1), "m.W": np.ones(2), "v.W": np.ones(2), "exp_avg.W": np.ones(2)}, r"unexpected keys \['exp_avg.W'\]"),
    ({"t": np.array(1), "m.W": np.ones(2)}, r"\['m', 'v'\] buffers of the same shapes for the same parameters"),
    ({"t": np.array(1), "m.W": np.ones(2), "v.W": np.ones(3)}, "buffers of the same shapes"),
])
def test_load_state_dict_rejects_bad_states(state, message):
    opt = optim.Adam()
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    assert opt.t == 0 and opt.state_dict().keys() == {"t"}, "a rejected state was partly loaded"


def test_sgd_without_momentum_rejects_a_momentum_state():
    with pytest.raises(ValueError, match=r"unexpected keys \['momentum_buffer.W'\]"):
        optim.SGD(0.1).load_state_dict({"t": np.array(3), "momentum_buffer.W": np.ones(2)})


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


@given(d_model=st.integers(1, 1024), warmup=st.integers(1, 400))
def test_transformer_schedule_peaks_at_warmup(d_model, warmup):
    schedule = optim.transformer_schedule(d_model, warmup)
    rates = np.array([schedule(step) for step in range(1, 3 * warmup + 2)])
    assert int(np.argmax(rates)) + 1 == warmup, f"the peak is at step {int(np.argmax(rates)) + 1}, not at warmup = {warmup}"
    assert math.isclose(schedule(warmup), (d_model * warmup) ** -0.5, rel_tol=1e-12)
    assert np.all(np.diff(rates[:warmup]) > 0) and np.all(np.diff(rates[warmup - 1:]) < 0)


@given(d_model=st.integers(1, 1024), warmup=st.integers(1, 5000), step=st.integers(1, 10**6))
def test_transformer_schedule_is_eq_3(d_model, warmup, step):
    """Each branch of Eq. (3) on its own: linear warm-up up to `warmup`, then d_model^−0.5 / √step."""
    if step <= warmup:
        expected = step / (math.sqrt(d_model) * warmup**1.5)
    else:
        expected = 1.0 / math.sqrt(d_model * step)
    assert math.isclose(optim.transformer_schedule(d_model, warmup)(step), expected, rel_tol=1e-12)


def test_transformer_schedule_of_the_paper():
    schedule = optim.transformer_schedule(512, 4000)  # base model: d_model = 512, warmup_steps = 4000
    assert math.isclose(schedule(4000), 6.987712429686844e-4, rel_tol=1e-12)
    assert math.isclose(schedule(1), 512**-0.5 * 4000**-1.5, rel_tol=1e-12)
    assert math.isclose(schedule(100_000), 1.0 / math.sqrt(512 * 100_000), rel_tol=1e-12)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="step must be an int ≥ 1"):
            schedule(bad)


@given(d_model=st.integers(1, 256), warmup=st.integers(1, 50), total=st.integers(1, 400), data=st.data())
def test_cooldown_leaves_the_paper_schedule_then_falls_linearly_to_zero(d_model, warmup, total, data):
    """scratch/translation.py's cool-down: Eq. (3) × 1.5 up to step total − cooldown, then × (total + 1 − step) / cooldown."""
    from scratch.translation import scaled_schedule

    cooldown = data.draw(st.integers(1, total), label="cooldown")
    paper, cooled = optim.transformer_schedule(d_model, warmup), scaled_schedule(d_model, warmup, 1.5, cooldown, total)
    for step in range(1, total + 3):
        factor = min(1.0, max(0.0, (total + 1 - step) / cooldown))
        assert math.isclose(cooled(step), 1.5 * paper(step) * factor, rel_tol=1e-12, abs_tol=0.0), f"step {step}"
    assert cooled(total) > 0 and cooled(total + 1) == 0.0  # the last step still learns, a step after it never does
    assert [scaled_schedule(d_model, warmup, 1.5)(t) for t in (1, total)] == [1.5 * paper(1), 1.5 * paper(total)]


def test_cooldown_arguments_get_clear_errors():
    from scratch.translation import scaled_schedule

    for kwargs, fragment in (({"cooldown": -1, "total": 10}, "cooldown must be an int ≥ 0"),
                             ({"cooldown": 2.5, "total": 10}, "cooldown must be an int ≥ 0"),
                             ({"cooldown": 11, "total": 10}, "needs a total step count ≥ it"),
                             ({"cooldown": 5, "total": None}, "needs a total step count ≥ it")):
        with pytest.raises(ValueError, match=fragment):
            scaled_schedule(16, 4, 1.0, **kwargs)


def test_constant_schedule():
    schedule = optim.constant(0.25)
    assert [schedule(t) for t in (1, 2, 1000)] == [0.25, 0.25, 0.25]
    with pytest.raises(TypeError, match="constant\\(lr\\) takes a number"):
        optim.constant(schedule)


def test_a_state_without_buffers_cannot_resume_adam():
    """t = 5 with no moments (say, the state of an SGD without momentum) would silently restart m and v."""
    opt = optim.Adam()
    opt.load_state_dict({"t": np.array(5)})
    with pytest.raises(ValueError, match=r"'m' buffers for \[\], but params has \['W'\]"):
        opt.step({"W": np.ones(2)}, {"W": np.ones(2)})


def test_step_decay():
    from scratch.optim import step_decay

    schedule = step_decay(3e-3, [10, 20], [1 / 3, 1 / 15])
    assert [schedule(s) for s in (1, 10, 11, 20, 21)] == [3e-3, 3e-3, 3e-3 / 3, 3e-3 / 3, 3e-3 / 15]
    with pytest.raises(ValueError, match="boundaries must be increasing"):
        step_decay(1e-3, [20, 10], [0.5, 0.1])
