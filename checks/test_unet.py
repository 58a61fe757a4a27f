"""The digit U-Net (scratch/unet.py): central differences for every parameter and the input, group norm on its
own and against torch, one image's ε̂ independent of its batch, float32 in and out, the ends of t, the null
token, and the errors a user meets first."""

import numpy as np
import pytest

from checks.tolerances import GRADCHECK_RTOL, assert_clear_error, assert_close
from scratch import unet as U
from scratch.gradcheck import relative_error

pytestmark = pytest.mark.diffusion

# Small enough for central differences in a second: 8×8 images (8 → 4 → 2), a handful of channels.
TINY = U.UNetConfig(channels=(4, 4, 6), emb_dim=6, time_dim=4, groups=2, num_steps=10)


def setup(config=TINY, batch=2, side=8, dtype=np.float64, seed=0):
    """Parameters moved off their initial values (zero-initialised convolutions would hide their inputs' gradients)."""
    rng = np.random.default_rng(seed)
    params = U.init_unet(config, rng, dtype)
    for name, p in params.items():
        p[...] = rng.standard_normal(p.shape) * 0.4 + (1.0 if name.endswith("gamma") else 0.0)
    x = rng.standard_normal((batch, 1, side, side)).astype(dtype)  # (B, 1, H, W)
    return params, x, rng


def directional_error(loss, grad, array, rng, eps=1e-6):
    """(relative error, analytic, numeric) of ⟨grad, v⟩ against the central difference of loss along a random v."""
    v = rng.standard_normal(array.shape)
    saved = array.copy()
    array[...] = saved + eps * v
    plus = loss()
    array[...] = saved - eps * v
    minus = loss()
    array[...] = saved
    numeric, analytic = (plus - minus) / (2.0 * eps), float(np.sum(grad * v))
    return relative_error(analytic, numeric), analytic, numeric


@pytest.mark.parametrize("t, cond", [([0, 9], [3, U.NULL]), ([9, 0], [U.NULL, U.NULL]), ([4, 4], [0, 9])],
                         ids=["t=0,T-1 word and null", "all null", "two words"])
def test_unet_backward_matches_central_differences_for_every_parameter_and_the_input(t, cond):
    params, x, rng = setup()
    t, cond = np.array(t), np.array(cond)
    g = rng.standard_normal(x.shape)  # a random upstream gradient: no bug hides behind a .sum()

    def loss():
        return float(np.sum(U.unet_forward(params, x, t, TINY, cond)[0] * g))

    eps, cache = U.unet_forward(params, x, t, TINY, cond)
    dx, grads = U.unet_backward_with_input(g, cache)
    assert set(grads) == set(params), f"grads keys differ from the parameters': {set(grads) ^ set(params)}"
    assert set(params) == set(U.parameter_shapes(TINY))
    errors = {name: directional_error(loss, grads[name], params[name], rng) for name in params}
    errors["x_t"] = directional_error(loss, dx, x, rng)
    bad = {name: e for name, e in errors.items() if e[0] > GRADCHECK_RTOL}
    assert not bad, (f"scratch U-Net: the hand-written gradient disagrees with central differences (rtol {GRADCHECK_RTOL:g}) for "
                     + ", ".join(f"{n} (rel {e[0]:.2g}: analytic {e[1]:.8g}, numeric {e[2]:.8g})" for n, e in bad.items()))
    assert np.array_equal(U.unet_backward(g, cache)["unet.mid.conv1.w"], grads["unet.mid.conv1.w"])


def test_the_word_table_gradient_lands_on_the_rows_of_the_words_used():
    params, x, rng = setup(batch=3)
    _, cache = U.unet_forward(params, x, np.array([1, 2, 3]), TINY, np.array([7, 7, U.NULL]))
    table = U.unet_backward(rng.standard_normal(x.shape), cache)["unet.word.table"]  # (11, E)
    used = np.zeros(U.NULL + 1, bool)
    used[[7, U.NULL]] = True
    assert np.all(table[~used] == 0.0), "rows of words absent from the batch must get gradient 0"
    assert np.all(np.abs(table[used]).sum(axis=1) > 0.0), "the rows of the words used must get a gradient"


def test_group_norm_backward_matches_central_differences_and_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 4, 5))
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    g = rng.standard_normal(x.shape)
    y, cache = U.group_norm_forward(x, gamma, beta, 3)
    dx, dgamma, dbeta = U.group_norm_backward(g, cache)
    for name, array, grad in (("x", x, dx), ("gamma", gamma, dgamma), ("beta", beta, dbeta)):
        error = directional_error(lambda: float(np.sum(U.group_norm_forward(x, gamma, beta, 3)[0] * g)), grad, array, rng)
        assert error[0] < GRADCHECK_RTOL, f"group norm d{name}: relative error {error[0]:.3g} (analytic {error[1]}, numeric {error[2]})"
    # each image's groups have mean 0 and variance 1 before γ and β
    xg = ((y - beta[:, None, None]) / gamma[:, None, None]).reshape(3, 3, -1)
    assert_close(xg.mean(axis=2), np.zeros((3, 3)), impl="scratch", what="group norm's group means")
    assert np.allclose(xg.var(axis=2), 1.0, atol=1e-4), "group norm's group variances must be 1 (to ε = 1e-5)"
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.group_norm(xt, 3, gt, bt, eps=1e-5)
    yt.backward(torch.tensor(g))
    assert_close(y, yt.detach().numpy(), impl="scratch", what="group norm vs torch.nn.functional.group_norm")
    for name, ours, theirs in (("dx", dx, xt.grad), ("dgamma", dgamma, gt.grad), ("dbeta", dbeta, bt.grad)):
        assert_close(ours, theirs.numpy(), impl="scratch", what=f"group norm {name} vs torch")


def test_upsample_backward_is_the_adjoint_of_upsampling():
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 8, 10))
    y, cache = U.upsample_forward(x)
    assert y.shape == (2, 3, 8, 10) and np.array_equal(y[:, :, 5, 7], x[:, :, 2, 3])
    # ⟨up(x), g⟩ = ⟨x, upᵀ(g)⟩
    assert np.isclose(np.sum(y * g), np.sum(x * U.upsample_backward(g, cache)))


def test_an_image_gets_the_same_noise_prediction_alone_or_in_a_batch():
    # group norm, not batch norm: the guided sampler stacks conditional and null rows in one batch
    params, x, _ = setup(batch=3)
    t, cond = np.array([0, 5, 9]), np.array([2, U.NULL, 8])
    together = U.unet_forward(params, x, t, TINY, cond)[0]
    for b in range(3):
        alone = U.unet_forward(params, x[b:b + 1], t[b:b + 1], TINY, cond[b:b + 1])[0]
        assert_close(alone, together[b:b + 1], impl="scratch", what=f"image {b}'s ε̂ alone vs in a batch of 3")


def test_no_word_is_the_null_token_and_the_word_changes_the_prediction():
    params, x, _ = setup()
    t = np.array([3, 3])
    null = U.unet_forward(params, x, t, TINY, None)[0]
    assert np.array_equal(null, U.unet_forward(params, x, t, TINY, np.array([U.NULL, U.NULL]))[0])
    worded = U.unet_forward(params, x, t, TINY, np.array([4, 4]))[0]
    assert np.max(np.abs(worded - null)) > 1e-3, "the word's embedding must change ε̂"


def test_float32_stays_float32_and_the_full_size_network_maps_28_by_28_digits():
    config = U.UNetConfig()
    params = U.init_unet(config, np.random.default_rng(0), np.float32)
    x = np.zeros((2, 1, 28, 28), np.float32)
    eps, cache = U.unet_forward(params, x, np.array([0, config.num_steps - 1]), config, np.array([1, U.NULL]))
    assert eps.shape == (2, 1, 28, 28) and eps.dtype == np.float32
    grads = U.unet_backward(np.ones_like(eps), cache)
    wrong = {k: g.dtype for k, g in grads.items() if g.dtype != np.float32 or g.shape != params[k].shape}
    assert not wrong, f"float32 parameters must get float32 gradients of their shapes, got {wrong}"


def test_digit_words_are_the_number_words_of_the_corpus():
    from scratch.data import number_words

    assert U.DIGIT_WORDS == tuple(number_words(d)[0] for d in range(10))
    assert U.word_ids(["three", "Nine", None, ""]).tolist() == [3, 9, U.NULL, U.NULL]
    assert_clear_error("scratch", "a word that is not a digit", lambda: U.word_ids(["eleven"]), ValueError,
                       ["'eleven'", "zero"])


def test_bad_inputs_get_one_clear_error():
    params, x, _ = setup()
    t, cond = np.array([0, 1]), np.array([0, 1])
    T = TINY.num_steps
    cases = [
        ("t = T", lambda: U.unet_forward(params, x, np.array([0, T]), TINY, cond), ValueError, ["t", f"[0, {T - 1}]", "[0, 10]"]),
        ("t < 0", lambda: U.unet_forward(params, x, np.array([-1, 0]), TINY, cond), ValueError, ["t", "[-1, 0]"]),
        ("float t", lambda: U.unet_forward(params, x, np.array([0.5, 1.0]), TINY, cond), TypeError, ["t", "float64"]),
        ("t of the wrong length", lambda: U.unet_forward(params, x, np.array([0]), TINY, cond), ValueError, ["(2,)", "(1,)"]),
        ("cond out of range", lambda: U.unet_forward(params, x, t, TINY, np.array([0, 11])), ValueError,
         ["cond", "NULL = 10", "[0, 11]"]),
        ("a parameter missing", lambda: U.unet_forward({k: v for k, v in params.items() if k != "unet.mid.emb.W"}, x, t,
                                                       TINY, cond), ValueError, ["unet.mid.emb.W", "(6, 6)", "nothing"]),
        ("x_t without its channel axis", lambda: U.unet_forward(params, x[:, 0], t, TINY, cond), ValueError,
         ["x_t", "(B, 1, H, W)", "(2, 8, 8)"]),
        ("a side not divisible by 4", lambda: U.unet_forward(params, x[:, :, :6, :6], t, TINY, cond), ValueError,
         ["x_t", "divisible by 4", "(2, 1, 6, 6)"]),
        ("float32 x_t with float64 parameters", lambda: U.unet_forward(params, x.astype(np.float32), t, TINY, cond),
         TypeError, ["float32", "float64"]),
        ("groups not dividing the channels", lambda: U.init_unet(U.UNetConfig(channels=(4, 4, 6), groups=4),
                                                                 np.random.default_rng(0)), ValueError, ["groups = 4", "6"]),
    ]
    for what, call, error, fragments in cases:
        assert_clear_error("scratch", what, call, error, fragments)
