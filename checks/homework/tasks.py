"""The graded functions: one small entry per function, grouped by module, modules by topic.

An entry says which module holds the function, how Hypothesis draws its inputs (a dict of
named values: arrays, ints, strings, None, a config), how to call it (`Forward`: the function
on some of those values; `Backward`: the reference forward on them, then the submission's
backward on the reference's cache and an upstream gradient), and which parts of the result
to compare (a path of indices, keys or field names into the return value).

Why the backward gets the reference's cache: a student's backward is then graded on its own,
whatever their forward does. The cache classes (`SoftmaxCache`, …) are skeleton code outside
the solution blocks, so the submission rebuilds the same structure from the arrays it is sent.

`Steps` grades what keeps state from one call to the next (an optimizer, a decoding cache): the
child builds the object, or receives the state, then makes a whole sequence of calls in a row,
the state living in the child between them, and every call's outputs are compared, so a step
that forgets to update its state loses its point at the next call.

Adding a function is one entry here. Adding a topic is its entries plus a line in TOPICS.
"""

from typing import NamedTuple

import hypothesis.strategies as st
import numpy as np
from hypothesis import assume
from hypothesis.extra import numpy as hnp

from checks import strategies as S


class Forward(NamedTuple):
    function: str
    args: tuple  # names of case values, passed positionally
    outputs: dict  # output name → path into the return value


class Backward(NamedTuple):
    forward: str  # run by the parent on the reference only, for the cache
    args: tuple
    function: str
    dout: str  # name of the case value holding the upstream gradient
    outputs: dict  # gradient name → path; "d<arg>" is the gradient of arg, "grads" that of "params"
    target: tuple = (0,)  # the forward output that dout is the gradient of


class Steps(NamedTuple):
    """A sequence of calls in one child, compared after every call (see `sequence`).

    The case holds "steps", a list with one dict per call of that call's own values (a gradient,
    a token). `build`, when given, is called first, once: (constructor of the module, names of
    case values it takes). Each call is `callee(*args)`: a function of the module, or ".name" a
    method of the built object, "." the object itself. An argument name is a key of the step's
    dict, else a case value shared by every call: sent once, so what one call changes in it is
    what the next call gets. `outputs`: name → path whose first element is "return" or an
    argument's name; `inspect`: a method of the built object whose result is compared after
    every call too ("state_dict": the optimizer's state). `carry`: argument name → path into the
    previous call's return value: from the second call on, that argument is what the call before
    returned there, for a pure step that hands back its new state (gpt_step's key/value cache);
    the first call gets the case value.
    """

    function: str  # what is graded, as its NotImplementedError names it: "SGD.step", "decoder_step"
    build: tuple
    callee: str
    args: tuple
    outputs: dict
    inspect: str = ""
    label: str = "step"  # one call, in the feedback: "step 2: params.W differs"
    carry: dict = None  # {"kv": ("return", 1)}: the next call's kv is this call's return value [1]


def sequence(call, case):
    """(slots, steps, names) for protocol.run_steps: the values to send, the calls, and what the
    feedback calls each of those calls."""
    slots = []

    def slot(value):
        slots.append(value)
        return len(slots) - 1

    built = [slot(case[name]) for name in call.build[1]] if call.build else []
    shared = {name: slot(case[name]) for name in dict.fromkeys(call.args) if name not in case["steps"][0]}
    own = [{name: slot(value) for name, value in step.items()} for step in case["steps"]]
    first, steps, names = len(slots), [], []
    if call.build:
        steps.append([call.build[0], built, []])
        names.append(f"{call.build[0]}({', '.join(call.build[1])})")
    obj = first  # the built object's slot
    callee = f"@{obj}{call.callee}".rstrip(".") if call.callee.startswith(".") else call.callee
    carry, previous = call.carry or {}, None  # previous: the slot of the last call's return value

    def argument(name, values):
        if name in values:
            return values[name]
        if name in carry and previous is not None:
            return [previous, *carry[name][1:]]  # a path into what the call before returned
        return shared[name]

    def where(path, arguments):
        if path[0] == "return":
            return [result, *path[1:]]
        given = arguments[call.args.index(path[0])]
        return [*(given if isinstance(given, list) else [given]), *path[1:]]

    for k, values in enumerate(own, start=1):
        arguments = [argument(name, values) for name in call.args]
        result = first + len(steps)
        selection = [[f"{call.label} {k}: {name}", where(path, arguments)] for name, path in call.outputs.items()]
        previous = result
        steps.append([callee, arguments, selection])
        names.append(f"{call.label} {k}")
        if call.inspect:
            steps.append([f"@{obj}.{call.inspect}", [], [[f"{call.label} {k}: {call.inspect}", [first + len(steps)]]]])
            names.append(f"{call.inspect}() after {call.label} {k}")
    return slots, steps, names


class Task(NamedTuple):
    name: str  # the function's name, also the student's pytest marker
    module: str  # scratch.<module>
    cases: object  # a Hypothesis strategy of dicts; "dtype" names the tolerance row
    call: object  # Forward or Backward
    returns: str  # what the function returns, for feedback when the shape of the result is wrong
    exact: bool = False  # boolean outputs: compared for equality


def by_dtype(build):
    """Draw float64 or float32 (float64 first, so failures shrink to it), then the case itself."""
    return st.sampled_from(S.DTYPES).flatmap(lambda dtype: build(dtype).map(lambda case: {**case, "dtype": np.dtype(dtype).name}))


def pair(module, op, cases, args, out, dout, grads, returns):
    """The two tasks of one forward/backward pair: `op`_forward and `op`_backward."""
    return [
        Task(f"{op}_forward", module, cases, Forward(f"{op}_forward", args, out), "(out, cache)"),
        Task(f"{op}_backward", module, cases, Backward(f"{op}_forward", args, f"{op}_backward", dout, grads), returns),
    ]


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------


@st.composite
def _linear(draw, dtype):
    """x (..., I) with up to two leading axes, so a dW that forgets to flatten them shows."""
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple))
    i, o = draw(S.distinct_pair(1, 4))
    return {"x": draw(S.floats(dtype, (*lead, i))), "W": draw(S.floats(dtype, (i, o))),
            "b": draw(S.floats(dtype, (o,))), "dout": draw(S.floats(dtype, (*lead, o)))}


@st.composite
def _elementwise(draw, dtype, bound=3.0):
    """x with, often, an exact 0 in it: the kink of relu, where its derivative is taken to be 0."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    scale = draw(st.sampled_from([1.0, 10.0]))  # 10: σ(±30) must not overflow
    x = draw(S.floats(dtype, shape, bound)) * np.asarray(scale, dtype)
    if draw(st.booleans()):
        x.flat[draw(st.integers(0, x.size - 1))] = 0.0
    return {"x": x, "negative_slope": draw(st.sampled_from([0.01, 0.2])), "dout": draw(S.floats(dtype, shape))}


LAYERS = pair("layers", "linear", by_dtype(_linear), ("x", "W", "b"), {"y": (0,)}, "dout",
              {"dx": (0,), "dW": (1,), "db": (2,)}, "(dx, dW, db)")
LAYERS += pair("layers", "relu", by_dtype(_elementwise), ("x",), {"y": (0,)}, "dout", {"dx": ()}, "dx")
LAYERS += pair("layers", "leaky_relu", by_dtype(_elementwise), ("x", "negative_slope"), {"y": (0,)}, "dout", {"dx": ()}, "dx")
LAYERS += pair("layers", "tanh", by_dtype(_elementwise), ("x",), {"y": (0,)}, "dout", {"dx": ()}, "dx")
LAYERS += pair("layers", "sigmoid", by_dtype(_elementwise), ("x",), {"y": (0,)}, "dout", {"dx": ()}, "dx")


@st.composite
def _embedding(draw, dtype):
    """ids (...) into a (V, D) table with V ≠ D; ids always repeat, as a sentence's tokens do, so a
    dtable that keeps one gradient per row instead of their sum shows."""
    v, d = draw(S.distinct_pair(1, 5), label="V, D")
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4).filter(lambda s: np.prod(s) > 1), label="ids shape")
    ids = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, v - 1)), label="ids")
    ids.flat[-1] = ids.flat[0]  # at least one id twice
    return {"ids": ids, "table": draw(S.floats(dtype, (v, d))), "dout": draw(S.floats(dtype, (*shape, d)))}


LAYERS += pair("layers", "embedding", by_dtype(_embedding), ("ids", "table"), {"y": (0,)}, "dout", {"dtable": ()}, "dtable")

# ----------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------


def _softmax(dtype):
    """Scores of order 1, or of order 1000, where exp overflows unless the maximum is subtracted."""
    scales = st.sampled_from([1.0, 1000.0])
    return st.tuples(S.softmax_cases(dtype), scales).map(
        lambda cs: {**cs[0]._asdict(), "x": cs[0].x * np.asarray(cs[1], dtype)})


def _attention(dtype):
    return st.booleans().flatmap(lambda empty: S.attention_cases(dtype, empty_rows=empty)).map(lambda c: c._asdict())


def _multi_head(dtype):
    return st.booleans().flatmap(lambda empty: S.multi_head_cases(dtype, empty_rows=empty)).map(lambda c: c._asdict())


_causal = st.integers(0, 6).map(lambda t: {"t": t, "dtype": "bool"})


@st.composite
def _padding(draw):
    t_k, t_q = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    lengths = draw(hnp.arrays(np.int64, draw(st.integers(1, 3)), elements=st.integers(0, t_k)))
    return {"lengths": lengths, "t_k": t_k, "t_q": t_q, "dtype": "bool"}


ATTENTION = pair("attention", "softmax", by_dtype(_softmax), ("x", "axis", "mask"), {"out": (0,)}, "dout", {"dx": ()}, "dx")
ATTENTION += [
    Task("causal_mask", "attention", _causal, Forward("causal_mask", ("t",), {"mask": ()}), "a (t, t) bool array", exact=True),
    Task("padding_mask", "attention", _padding(), Forward("padding_mask", ("lengths", "t_k", "t_q"), {"mask": ()}),
         "a (B, t_q, t_k) bool array", exact=True),
]
ATTENTION += pair("attention", "scaled_dot_product_attention", by_dtype(_attention), ("q", "k", "v", "mask"),
                  {"out": (0,)}, "dout", {"dq": (0,), "dk": (1,), "dv": (2,)}, "(dq, dk, dv)")
ATTENTION += pair("attention", "multi_head_attention", by_dtype(_multi_head), ("x_q", "x_kv", "params", "num_heads", "mask"),
                  {"out": (0,)}, "dout", {"dx_q": (0,), "dx_kv": (1,), "grads": (2,)}, "(dx_q, dx_kv, grads)")

# ----------------------------------------------------------------------------------------------
# vae
# ----------------------------------------------------------------------------------------------


def _latent(dtype):
    return S.latent_cases(dtype).map(lambda c: c._asdict())


def _bernoulli(dtype):
    """Logits of order 1, or of order 30, where log σ(l) computed naively is log 0 = −inf."""
    return st.tuples(S.bernoulli_cases(dtype), st.sampled_from([1.0, 30.0])).map(
        lambda cs: {**cs[0]._asdict(), "logits": cs[0].decoded * np.asarray(cs[1], dtype)})


def _gaussian(dtype):
    return S.gaussian_likelihood_cases(dtype).map(lambda c: {**c._asdict(), "mean": c.decoded})


def _vae(dtype):
    return st.sampled_from(S.VAE_KINDS).flatmap(lambda kind: S.vae_cases(dtype, kind)).map(lambda c: c._asdict())


VAE_OUTPUTS = {name: (0, name) for name in ("loss", "elbo", "reconstruction", "kl", "mu", "log_var", "z", "decoded")}
VAE = pair("vae", "reparameterize", by_dtype(_latent), ("mu", "log_var", "eps"), {"z": (0,)}, "dz",
           {"dmu": (0,), "dlog_var": (1,)}, "(dmu, dlog_var)")
VAE += pair("vae", "gaussian_kl", by_dtype(_latent), ("mu", "log_var"), {"kl": (0,)}, "dkl",
            {"dmu": (0,), "dlog_var": (1,)}, "(dmu, dlog_var)")
VAE += pair("vae", "bernoulli_log_likelihood", by_dtype(_bernoulli), ("x", "logits"), {"log_likelihood": (0,)}, "dll",
            {"dlogits": ()}, "dlogits")
VAE += pair("vae", "gaussian_log_likelihood", by_dtype(_gaussian), ("x", "mean", "log_var"), {"log_likelihood": (0,)},
            "dll", {"dmean": (0,), "dlog_var": (1,)}, "(dmean, dlog_var)")
VAE += [
    Task("vae_forward", "vae", by_dtype(_vae), Forward("vae_forward", ("x", "params", "eps", "config"), VAE_OUTPUTS),
         "(VAEOutput, cache)"),
    Task("vae_backward", "vae", by_dtype(_vae), Backward("vae_forward", ("x", "params", "eps", "config"), "vae_backward",
                                                         "dloss", {"grads": ()}, (0, "loss")), "a dict of gradients keyed like params"),
]

# ----------------------------------------------------------------------------------------------
# gan
# ----------------------------------------------------------------------------------------------


def _gan_loss(dtype):
    """Logits of order 1, or of order 30, where log σ(l) computed naively is log 0 = −inf."""
    return st.tuples(S.gan_loss_cases(dtype), st.sampled_from([1.0, 30.0])).map(lambda cs: {
        **cs[0]._asdict(), "real_logits": cs[0].real_logits * np.asarray(cs[1], dtype),
        "fake_logits": cs[0].fake_logits * np.asarray(cs[1], dtype)})


@st.composite
def _densities(draw, dtype):
    """Two densities ≥ 0 at the same points; zeros in both happen (D* is ½ there, not 0/0)."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    return {"p_data": np.abs(draw(S.floats(dtype, shape))), "p_g": np.abs(draw(S.floats(dtype, shape)))}


GAN = pair("gan", "discriminator_loss", by_dtype(_gan_loss), ("real_logits", "fake_logits"), {"loss": (0,)}, "dloss",
           {"d_real_logits": (0,), "d_fake_logits": (1,)}, "(d_real_logits, d_fake_logits)")
GAN += pair("gan", "generator_loss", by_dtype(_gan_loss), ("fake_logits", "kind"), {"loss": (0,)}, "dloss",
            {"d_fake_logits": ()}, "d_fake_logits")
GAN += [Task("optimal_discriminator", "gan", by_dtype(_densities), Forward("optimal_discriminator", ("p_data", "p_g"),
                                                                          {"d_star": ()}), "an array shaped like p_data")]


def _gan_net(dtype):
    """A small GAN (packing 1 or 2, linear or sigmoid output), its data, noise and upstream gradients."""
    return S.gan_cases(dtype).map(lambda case: case._asdict())


GAN += pair("gan", "generator", by_dtype(_gan_net), ("z", "params", "config"), {"x": (0,)}, "dx",
            {"dz": (0,), "grads": (1,)}, "(dz, grads)")
GAN += pair("gan", "discriminator", by_dtype(_gan_net), ("x", "params", "config"), {"logits": (0,)}, "dlogits",
            {"dx": (0,), "grads": (1,)}, "(dx, grads)")
GAN += [
    Task("discriminator_step", "gan", by_dtype(_gan_net), Forward("discriminator_step", ("x", "z", "params", "config"),
                                                                  {"loss": (0,), "grads": (1,)}), "(loss, grads)"),
    Task("generator_step", "gan", by_dtype(_gan_net), Forward("generator_step", ("z", "params", "config", "kind"),
                                                              {"loss": (0,), "grads": (1,)}), "(loss, grads)"),
]

# ----------------------------------------------------------------------------------------------
# transformer
# ----------------------------------------------------------------------------------------------

# t = 0 and d_model = 0 give empty arrays; an odd d_model has one more sin column than cos columns.
_positions = st.tuples(st.integers(0, 8), st.integers(0, 8)).map(lambda td: {"t": td[0], "d_model": td[1], "dtype": "float64"})


def _layer_norm(dtype):
    return S.layer_norm_cases(dtype).map(lambda c: c._asdict())


def _feed_forward(dtype):
    return S.feed_forward_cases(dtype).map(lambda c: c._asdict())


def _encoder_layer(dtype):
    return S.encoder_layer_cases(dtype).map(lambda c: c._asdict())


def _decoder_layer(dtype):
    return S.decoder_layer_cases(dtype).map(lambda c: c._asdict())


def _cross_entropy(dtype):
    """One case in four has every target ignored (loss 0, gradient 0, not 0/0); logits of order 1, or
    of order 1000, where exp overflows unless the maximum is subtracted."""
    return st.tuples(st.sampled_from([False, False, False, True]).flatmap(lambda all_ignored: S.cross_entropy_cases(
        dtype, all_ignored=all_ignored)), st.sampled_from([1.0, 1000.0])).map(
        lambda cs: {**cs[0]._asdict(), "logits": cs[0].logits * np.asarray(cs[1], dtype)})


TRANSFORMER = [Task("positional_encoding", "transformer", _positions,
                    Forward("positional_encoding", ("t", "d_model"), {"pe": ()}), "a (t, d_model) array")]
TRANSFORMER += pair("transformer", "layer_norm", by_dtype(_layer_norm), ("x", "gamma", "beta"), {"y": (0,)}, "dout",
                    {"dx": (0,), "dgamma": (1,), "dbeta": (2,)}, "(dx, dgamma, dbeta)")
TRANSFORMER += pair("transformer", "feed_forward", by_dtype(_feed_forward), ("x", "params"), {"y": (0,)}, "dout",
                    {"dx": (0,), "grads": (1,)}, "(dx, grads)")
TRANSFORMER += pair("transformer", "encoder_layer", by_dtype(_encoder_layer), ("x", "params", "num_heads", "mask", "norm_first"),
                    {"y": (0,)}, "dout", {"dx": (0,), "grads": (1,)}, "(dx, grads)")
TRANSFORMER += pair("transformer", "decoder_layer", by_dtype(_decoder_layer),
                    ("y", "memory", "params", "num_heads", "self_mask", "memory_mask", "norm_first"), {"out": (0,)}, "dout",
                    {"dy": (0,), "dmemory": (1,), "grads": (2,)}, "(dy, dmemory, grads)")
TRANSFORMER += pair("transformer", "cross_entropy", by_dtype(_cross_entropy),
                    ("logits", "targets", "label_smoothing", "ignore_index"), {"loss": (0,)}, "dloss", {"dlogits": ()}, "dlogits")

# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------


@st.composite
def _decoder_step(draw, dtype):
    """A tiny model, a decoding state after 0 to T − 1 steps of the reference (its key/value cache
    filled that far), and the next 1 to T − that many tokens of every row, fed one call after
    another to the same state: each step must attend over the cache and add its own key and value
    to it, or the next step's logits are wrong."""
    from scratch.decoding import decoder_step, start_decoding

    case = draw(S.transformer_cases(dtype))
    t = case.tgt_in.shape[1]
    done = draw(st.integers(0, t - 1), label="steps already decoded")
    calls = draw(st.integers(1, t - done), label="calls in a row")
    state = start_decoding(case.src, case.params, case.config)
    for j in range(done):
        decoder_step(case.tgt_in[:, j], state, case.params, case.config)
    return {"state": state, "params": case.params, "config": case.config,
            "steps": [{"tokens": case.tgt_in[:, j]} for j in range(done, done + calls)]}


DECODING = [Task("decoder_step", "decoding", by_dtype(_decoder_step),
                 Steps("decoder_step", (), "decoder_step", ("tokens", "state", "params", "config"), {"logits": ("return",)}),
                 "logits (N, V)")]

# ----------------------------------------------------------------------------------------------
# optim
# ----------------------------------------------------------------------------------------------

_PARAMETER_NAMES = ("W", "b", "attn.W_q")  # a dotted name, as the models' flat dicts have


def _gradients(dtype, shape):
    """floats() with |g| < 1e-6 set to 0: a gradient of 1e-160 squares to a subnormal, whose
    rounding is no longer relative, and two correct Adams would then disagree through v alone."""
    return S.floats(dtype, shape).map(lambda a: np.where(np.abs(a) < 1e-6, 0.0, a).astype(dtype))


@st.composite
def _optimizer_steps(draw, dtype):
    """A flat dict of parameters and 1 to 4 steps of gradients with its keys and shapes."""
    names = draw(st.lists(st.sampled_from(_PARAMETER_NAMES), min_size=1, max_size=2, unique=True), label="names")
    shapes = {name: draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=3), label=f"shape of {name}") for name in names}
    params = {name: draw(S.floats(dtype, shape)) for name, shape in shapes.items()}
    grads = st.fixed_dictionaries({name: _gradients(dtype, shape) for name, shape in shapes.items()})
    return {"params": params, "steps": draw(st.lists(grads.map(lambda g: {"grads": g}), min_size=1, max_size=4))}


def _sgd(dtype):
    """SGD as torch.optim.SGD has it: momentum 0 (plain steps) or heavy-ball momentum."""
    settings = st.fixed_dictionaries({"lr": st.sampled_from([0.1, 1.0, 0.01]), "momentum": st.sampled_from([0.9, 0.0, 0.5])})
    return st.tuples(settings, _optimizer_steps(dtype)).map(lambda sc: {**sc[0], **sc[1]})


def _adam(dtype):
    """Adam with torch's defaults for β and ε, or with a short memory (β2 = 0.9) where the bias
    correction stays large for several steps, or β1 = 0 (no momentum); ε of 1e-8 or 1e-3."""
    settings = st.fixed_dictionaries({"lr": st.sampled_from([0.1, 1.0, 0.01]),
                                      "betas": st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]),
                                      "eps": st.sampled_from([1e-8, 1e-3])})
    return st.tuples(settings, _optimizer_steps(dtype)).map(lambda sc: {**sc[0], **sc[1]})


@st.composite
def _schedule(draw):
    """Eq. (3)'s d_model and warmup, then the steps asked for: step 1, the last step of the warm-up
    (the peak) and the next, anywhere in between, and far past it, where the rate decays as 1/√step."""
    d_model = draw(st.sampled_from([512, 64]) | st.integers(1, 1024), label="d_model")
    warmup = draw(st.integers(1, 4000), label="warmup")
    step = st.one_of(st.just(1), st.just(warmup), st.just(warmup + 1), st.integers(1, 2 * warmup), st.integers(10**5, 10**7))
    steps = draw(st.lists(step, min_size=1, max_size=5), label="steps")
    return {"d_model": d_model, "warmup": warmup, "steps": [{"step": s} for s in steps], "dtype": "float64"}


OPTIM = [
    Task("sgd_step", "optim", by_dtype(_sgd), Steps("SGD.step", ("SGD", ("lr", "momentum")), ".step", ("params", "grads"),
                                                    {"params": ("params",)}, inspect="state_dict"),
         "None (the arrays of params are updated in place)"),
    Task("adam_step", "optim", by_dtype(_adam), Steps("Adam.step", ("Adam", ("lr", "betas", "eps")), ".step", ("params", "grads"),
                                                      {"params": ("params",)}, inspect="state_dict"),
         "None (the arrays of params are updated in place)"),
    Task("transformer_schedule", "optim", _schedule(),
         Steps("transformer_schedule", ("transformer_schedule", ("d_model", "warmup")), ".", ("step",), {"lr": ("return",)},
               label="call"), "a schedule: a function of the step returning a float"),
]

# ----------------------------------------------------------------------------------------------
# conv (and batch norm, which lives in layers.py but is taught with the convolutions)
# ----------------------------------------------------------------------------------------------

_CONV_ARGS = ("x", "w", "b", "stride", "padding", "dilation")
_CONV_TRANSPOSE_ARGS = ("x", "w", "b", "stride", "padding", "output_padding", "dilation")
_CONV_GRADS = {"dx": (0,), "dw": (1,), "db": (2,)}


def _conv(transposed, bias=False):
    """S.conv_cases as a dict; bias=True gives every case a bias (a backward's db must be an array to
    be compared, so the backward is graded with one; the forward also meets b = None)."""
    @st.composite
    def build(draw, dtype):
        case = draw(S.conv_cases(dtype, transposed))
        if bias and case.b is None:
            case = case._replace(b=draw(S.floats(dtype, (case.dout.shape[1],)), label="b"))
        return case._asdict()
    return build


def _batch_norm(dtype):
    return S.batch_norm_cases(dtype).map(lambda c: c._asdict())


@st.composite
def _batch_norm_running(draw, dtype):
    """The running statistics and a batch_norm_forward cache from the reference (the skeleton's
    BatchNormCache), momentum 0.1 (PyTorch's) or another."""
    from scratch.layers import batch_norm_forward

    case = draw(S.batch_norm_cases(dtype))
    _, cache = batch_norm_forward(case.x, case.gamma, case.beta)
    return {"running_mean": case.running_mean, "running_var": case.running_var, "cache": cache,
            "momentum": draw(st.sampled_from([0.1, 0.5, 1.0]), label="momentum")}


CONV = [
    Task("conv2d_forward", "conv", by_dtype(_conv(False)), Forward("conv2d_forward", _CONV_ARGS, {"out": (0,)}), "(out, cache)"),
    Task("conv2d_backward", "conv", by_dtype(_conv(False, bias=True)),
         Backward("conv2d_forward", _CONV_ARGS, "conv2d_backward", "dout", _CONV_GRADS), "(dx, dw, db)"),
    Task("conv_transpose2d_forward", "conv", by_dtype(_conv(True)),
         Forward("conv_transpose2d_forward", _CONV_TRANSPOSE_ARGS, {"out": (0,)}), "(out, cache)"),
    Task("conv_transpose2d_backward", "conv", by_dtype(_conv(True, bias=True)),
         Backward("conv_transpose2d_forward", _CONV_TRANSPOSE_ARGS, "conv_transpose2d_backward", "dout", _CONV_GRADS),
         "(dx, dw, db)"),
]
LAYERS += pair("layers", "batch_norm", by_dtype(_batch_norm), ("x", "gamma", "beta"), {"y": (0,)}, "dout",
               {"dx": (0,), "dgamma": (1,), "dbeta": (2,)}, "(dx, dgamma, dbeta)")
LAYERS += [
    Task("batch_norm_update_running", "layers", by_dtype(_batch_norm_running),
         Forward("batch_norm_update_running", ("running_mean", "running_var", "cache", "momentum"),
                 {"running_mean": (0,), "running_var": (1,)}), "(running_mean, running_var)"),
    Task("batch_norm_eval", "layers", by_dtype(_batch_norm),
         Forward("batch_norm_eval", ("x", "gamma", "beta", "running_mean", "running_var"), {"y": ()}), "y"),
]

# ----------------------------------------------------------------------------------------------
# flash (scratch/flash_attention.py)
# ----------------------------------------------------------------------------------------------


def _flash(dtype):
    """Causal (Tq = Tk) or not (Tq ≠ Tk), T up to 7 and blocks of 1 to 4, so that the keys span several blocks and
    the running maximum grows; the forward is graded on its output and on the cache's log-sum-exp."""
    return S.flash_cases(dtype, max_t=7, max_block=4).map(lambda c: c._asdict())


FLASH = pair("flash_attention", "flash_attention", by_dtype(_flash), ("q", "k", "v", "causal", "block_q", "block_k"),
             {"out": (0,), "lse": (1, "lse")}, "dout", {"dq": (0,), "dk": (1,), "dv": (2,)}, "(dq, dk, dv)")

# ----------------------------------------------------------------------------------------------
# metrics (scratch/metrics.py): scores of two sets of features, plain functions returning floats
# ----------------------------------------------------------------------------------------------


@st.composite
def _feature_sets(draw, dtype, names=("a", "b"), extra=0):
    """Two sets of Gaussian features from a drawn seed, N, M ≥ d + 2 + extra: full-rank covariances, where every
    correct way of taking the square root agrees to 1e-12 (a singular Σ leaves √ε ≈ 1e-8 between two of them),
    and no two distances tie (precision/recall compare distances with radii). The second set is shifted and
    scaled, so that no term of a score is zero by accident."""
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    d = draw(st.integers(1, 5), label="d")
    n, m = (draw(st.integers(d + 2 + extra, 16), label=f"rows of {name}") for name in names)
    shift, scale = draw(st.sampled_from([0.5, 0.0, -2.0]), label="shift"), draw(st.sampled_from([1.5, 1.0, 0.3]), label="scale")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d))  # (N, d)
    b = scale * rng.standard_normal((m, d)) + shift  # (M, d)
    return {names[0]: a.astype(dtype), names[1]: b.astype(dtype)}


def _precision_recall(dtype):
    return _feature_sets(dtype, ("real", "fake"), extra=2).flatmap(
        lambda case: st.integers(1, 3).map(lambda k: {**case, "k": k}))


@st.composite
def _probs(draw, dtype):
    """Softmax rows (N, K) of drawn logits, some sharp (near one-hot), some flat."""
    seed, n, k = draw(st.integers(0, 2**32 - 1), label="seed"), draw(st.integers(1, 12), label="N"), draw(st.integers(2, 10), label="K")
    logits = draw(st.sampled_from([4.0, 1.0, 0.0]), label="sharpness") * np.random.default_rng(seed).standard_normal((n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"probs": (e / e.sum(axis=1, keepdims=True)).astype(dtype)}


METRICS = [
    Task("frechet_distance", "metrics", by_dtype(_feature_sets), Forward("frechet_distance", ("a", "b"), {"fid": ()}),
         "a float"),
    Task("kernel_distance", "metrics", by_dtype(_feature_sets), Forward("kernel_distance", ("a", "b"), {"kid": ()}),
         "a float"),
    Task("precision_recall", "metrics", by_dtype(_precision_recall),
         Forward("precision_recall", ("real", "fake", "k"), {"precision": (0,), "recall": (1,)}), "(precision, recall)"),
    Task("inception_score", "metrics", by_dtype(_probs), Forward("inception_score", ("probs",), {"is": ()}), "a float"),
]

# ----------------------------------------------------------------------------------------------
# gpt (scratch/gpt.py), its sampling filters (scratch/sampling.py), and GELU (in layers.py)
# ----------------------------------------------------------------------------------------------

LAYERS += pair("layers", "gelu", by_dtype(_elementwise), ("x",), {"y": (0,)}, "dout", {"dx": ()}, "dx")


@st.composite
def _block(draw, dtype):
    """Block i of a tiny GPT (S.gpt_cases: 1 or 2 blocks, 1 or 2 heads, T ≤ 6), its own parameters only
    ("h.{i}.…", so a block that reads h.0 whatever i is shows), x (B, T, D) with every row's features
    spread (layer norm divides by their spread) and an upstream gradient dy."""
    from scratch.gpt import layer_names

    case = draw(S.gpt_cases(dtype))
    (b, t), d = case.tokens.shape, case.config.d_model
    i = draw(st.integers(0, case.config.n_layer - 1), label="i")
    return {"x": S.spread_rows(draw(S.floats(dtype, (b, t, d)), label="x")), "i": i, "n_head": case.config.n_head,
            "params": {name: case.params[name] for name in layer_names(i)}, "dy": draw(S.floats(dtype, (b, t, d)), label="dy")}


# How close p may come to the mass of a top set and still have one right answer: closer, two correct
# filters that add the same probabilities in another order (from the top, or from the bottom as the
# reference does) may round to opposite sides of p. p drawn "near" a mass sits 100 margins from it.
_MASS_MARGIN = {"float64": 1e-9, "float32": 1e-5}


def _top_masses(logits, top_k):
    """Per row, the probability mass of its 1, 2, … most likely tokens (the whole row's left out) after
    top-k, in float64: what top-p compares with p."""
    from scratch.sampling import filter_logits

    z = filter_logits(logits, top_k).astype(np.float64)  # (B, V)
    masses = []
    for row in z:
        finite = np.sort(row[np.isfinite(row)])[::-1]  # most likely first
        p = np.exp(finite - finite[0])
        masses.append(np.cumsum(p / p.sum())[:-1])
    return masses


@st.composite
def _filters(draw, logits, dtype):
    """top_k (None, or 1 to 9: at, below and beyond V, often on a tie) and top_p (None, a round value, any
    value, or one just above or below the mass of a top set), p never within a margin of such a mass."""
    top_k = draw(st.none() | st.integers(1, 9), label="top_k")
    masses = np.concatenate(_top_masses(logits, top_k))
    kind = draw(st.sampled_from(["near a mass", "none", "round", "any"]), label="top_p drawn")
    if kind == "near a mass" and masses.size:
        side = draw(st.sampled_from([1.0, -1.0]), label="above or below")
        top_p = min(float(draw(st.sampled_from(list(masses)), label="mass")) + side * 100 * _MASS_MARGIN[dtype], 1.0)
    elif kind == "any":
        top_p = draw(st.floats(0.01, 1.0), label="top_p")
    elif kind == "round":
        top_p = draw(st.sampled_from([0.5, 0.9, 0.25, 0.75, 1.0]), label="top_p")
    else:
        top_p = None
    assume(top_p is None or not np.any(np.abs(masses - top_p) <= _MASS_MARGIN[dtype]))
    return top_k, top_p


@st.composite
def _filter_logits(draw, dtype):
    """S.logits_with_ties (levels shared by many tokens, −inf now and then), in the dtype, and the filters."""
    logits = draw(S.logits_with_ties(), label="logits").astype(dtype)
    top_k, top_p = draw(_filters(logits, np.dtype(dtype).name))
    return {"logits": logits, "top_k": top_k, "top_p": top_p}


_DRAWS_PER_ROW = 16


@st.composite
def _sample(draw):
    """Logits with ties, a temperature (1, 0: the argmax, sharper, flatter, any), the filters on the tempered
    logits, and a generator from a drawn seed: the child gets a fresh generator in the same state
    (protocol.pack), so a correct sample draws the reference's uniform numbers and its tokens. Each row is
    drawn from 16 times (logits (16, B, V): a leading axis too), so that a sample that gets the distribution
    wrong picks another token somewhere. float64: the tokens are ids, and float32 probabilities summed in
    two orders would move the bins by 1e-7."""
    rows = draw(S.logits_with_ties(), label="logits")
    logits = np.repeat(rows[None], _DRAWS_PER_ROW, axis=0)  # (16, B, V)
    temperature = draw(st.sampled_from([1.0, 0.0, 0.5, 2.0]) | st.floats(0.05, 5.0), label="temperature")
    top_k, top_p = draw(_filters(rows / temperature if temperature > 0 else rows, "float64"))
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    return {"logits": logits, "rng": np.random.default_rng(seed), "temperature": temperature, "top_k": top_k,
            "top_p": top_p, "dtype": "float64"}


@st.composite
def _gpt_step(draw, dtype):
    """A tiny GPT, its key/value cache after 0 to block_size − 1 steps of the reference, and the next 1 to
    block_size − that many tokens of every row, fed one call after another, each call given the cache the
    call before returned: a step must embed its token at position t (the cache's length), attend over
    the cache and hand back the cache with its own key and value added, or the next step's logits are wrong."""
    from scratch.gpt import empty_kv_cache, gpt_step

    case = draw(S.gpt_cases(dtype))
    config, b = case.config, case.tokens.shape[0]
    tokens = draw(hnp.arrays(np.int64, (b, config.block_size), elements=st.integers(0, config.vocab_size - 1)),
                  label="tokens")
    done = draw(st.integers(0, config.block_size - 1), label="steps already decoded")
    calls = draw(st.integers(1, config.block_size - done), label="calls in a row")
    kv = empty_kv_cache(case.params, config, b)
    for j in range(done):
        _, kv = gpt_step(tokens[:, j], kv, case.params, config)
    return {"kv": kv, "params": case.params, "config": config,
            "steps": [{"tokens": tokens[:, j]} for j in range(done, done + calls)]}


SAMPLING = [
    Task("filter_logits", "sampling", by_dtype(_filter_logits),
         Forward("filter_logits", ("logits", "top_k", "top_p"), {"logits": ()}),
         "logits (..., V), the removed tokens at −inf", exact=True),  # kept values are the input's own: bit for bit
    Task("sample", "sampling", _sample(), Forward("sample", ("logits", "rng", "temperature", "top_k", "top_p"),
                                                  {"tokens": ()}), "token ids (...), one per row of logits"),
]
GPT = pair("gpt", "block", by_dtype(_block), ("x", "params", "i", "n_head"), {"y": (0,)}, "dy",
           {"dx": (0,), "grads": (1,)}, "(dx, grads)")
GPT += [Task("gpt_step", "gpt", by_dtype(_gpt_step),
             Steps("gpt_step", (), "gpt_step", ("tokens", "kv", "params", "config"), {"logits": ("return", 0)},
                   carry={"kv": ("return", 1)}), "(logits (B, V), kv)")]

# ----------------------------------------------------------------------------------------------
# diffusion (scratch/diffusion.py) and classifier-free guidance's mix (scratch/unet.py)
# ----------------------------------------------------------------------------------------------


@st.composite
def _diffusion_schedule(draw):
    """β (T,) of the linear or the cosine schedule, T from 1 to 12, float64 as beta_schedule gives it: with T
    this small, the cosine schedule's last β is its cap 0.999 (ᾱ near 0, x̂_0 amplified), and T = 1 is one step."""
    from scratch.diffusion import beta_schedule

    return beta_schedule(draw(st.sampled_from(["linear", "cosine"]), label="schedule"), draw(st.integers(1, 12), label="T"))


@st.composite
def _diffusion_batch(draw, dtype, names):
    """Arrays of one shape (B, ...), B from 1 to 4 with 1 to 3 data axes (a 2-D point, an image (C, H, W)), one per name."""
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=4, max_side=3), label="shape")
    return {name: draw(S.floats(dtype, shape), label=name) for name in names}


@st.composite
def _diffusion_steps(draw, batch, num_steps):
    """t (B,) int in [0, T); one case in two has t = 0 in its first row, the step with no noise."""
    t = draw(hnp.arrays(np.int64, (batch,), elements=st.integers(0, num_steps - 1)), label="t")
    if draw(st.booleans(), label="a row at t = 0"):
        t[0] = 0
    return t


@st.composite
def _q_sample(draw, dtype):
    from scratch.diffusion import alpha_bar

    alphas_cumprod = alpha_bar(draw(_diffusion_schedule()))  # (T,) float64
    case = draw(_diffusion_batch(dtype, ("x0", "eps")))
    return {**case, "t": draw(_diffusion_steps(len(case["x0"]), len(alphas_cumprod))), "alphas_cumprod": alphas_cumprod}


@st.composite
def _eps_loss(draw, dtype):
    return {**draw(_diffusion_batch(dtype, ("eps_pred", "eps"))), "dloss": draw(st.sampled_from([1.0, -0.5]) | st.floats(-3, 3),
                                                                                 label="dloss")}


@st.composite
def _ddpm_step(draw, dtype):
    """ε̂, x_t and the noise z of one reverse step; every t = 0 may come with noise None (the contract allows it)."""
    betas = draw(_diffusion_schedule())
    case = draw(_diffusion_batch(dtype, ("eps_pred", "x_t", "noise")))
    t = draw(_diffusion_steps(len(case["x_t"]), len(betas)))
    if not t.any() and draw(st.booleans(), label="noise None"):
        case["noise"] = None
    return {**case, "t": t, "betas": betas}


@st.composite
def _ddim_step(draw, dtype):
    """A DDIM step from t to any t_prev < t, −1 and −2 included (both the end, ᾱ = 1); η 0 (deterministic: noise
    None or ignored), ½ or 1 (DDPM's σ when t_prev = t − 1)."""
    from scratch.diffusion import alpha_bar

    alphas_cumprod = alpha_bar(draw(_diffusion_schedule()))
    case = draw(_diffusion_batch(dtype, ("eps_pred", "x_t", "noise")))
    t = draw(_diffusion_steps(len(case["x_t"]), len(alphas_cumprod)))
    t_prev = np.array([draw(st.integers(-2, int(step) - 1), label="t_prev") for step in t], dtype=np.int64)
    eta = draw(st.sampled_from([0.0, 1.0, 0.5]), label="eta")
    if eta == 0.0 and draw(st.booleans(), label="noise None"):
        case["noise"] = None
    return {**case, "t": t, "t_prev": t_prev, "alphas_cumprod": alphas_cumprod, "eta": eta}


@st.composite
def _guidance(draw, dtype):
    """ε(x, word) and ε(x, ∅) and a scale: 0 and 1 (the two models themselves), a usual one (3, 7.5), any in [0, 10]."""
    case = draw(_diffusion_batch(dtype, ("eps_cond", "eps_uncond")))
    return {**case, "scale": draw(st.sampled_from([3.0, 0.0, 1.0, 7.5]) | st.floats(0.0, 10.0), label="scale")}


DIFFUSION = [
    Task("q_sample", "diffusion", by_dtype(_q_sample), Forward("q_sample", ("x0", "t", "eps", "alphas_cumprod"), {"x_t": ()}),
         "x_t, shaped like x0"),
    *pair("diffusion", "eps_loss", by_dtype(_eps_loss), ("eps_pred", "eps"), {"loss": (0,)}, "dloss", {"deps_pred": ()},
          "d eps_pred, shaped like eps_pred"),
    Task("ddpm_step", "diffusion", by_dtype(_ddpm_step), Forward("ddpm_step", ("eps_pred", "t", "x_t", "betas", "noise"),
                                                                 {"x_prev": ()}), "x_{t−1}, shaped like x_t"),
    Task("ddim_step", "diffusion", by_dtype(_ddim_step),
         Forward("ddim_step", ("eps_pred", "t", "t_prev", "x_t", "alphas_cumprod", "eta", "noise"), {"x_prev": ()}),
         "x_{t_prev}, shaped like x_t"),
]
UNET = [Task("guidance_mix", "unet", by_dtype(_guidance), Forward("guidance_mix", ("eps_cond", "eps_uncond", "scale"),
                                                                  {"eps": ()}), "the guided ε, shaped like eps_cond")]

# ----------------------------------------------------------------------------------------------
# dcgan (scratch/dcgan.py): the two networks, on the conv ops and batch norm
# ----------------------------------------------------------------------------------------------


@st.composite
def _dcgan(draw, dtype, evaluation=True):
    """A tiny DCGAN (Z ≤ 3, 1 or 2 channels where the paper has hundreds) on the real 28×28 images, B from 1 to 3,
    its inputs and upstream gradients drawn from a seed: thousands of numbers, which Hypothesis need not shrink one
    by one. Weights of scale 1/√fan-in, so that tanh and the logits stay away from saturation; γ near 1. With
    `evaluation`, one case in two gives running statistics (stats: evaluation mode, the batch's own statistics
    unused); else stats is None, the training mode whose cache a backward needs."""
    from scratch.dcgan import BATCH_NORMS, SIDE, DCGANConfig, parameter_shapes

    config = DCGANConfig(z_dim=draw(st.integers(1, 3), label="Z"), gen_width=draw(st.integers(1, 2), label="g"),
                         disc_width=draw(st.integers(1, 2), label="d"), slope=draw(st.sampled_from([0.2, 0.05]), label="slope"))
    b = draw(st.integers(1, 3), label="B")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    params = {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith("gamma"):
            params[name] = 1.0 + 0.2 * rng.standard_normal(shape)
        elif len(shape) == 1:  # a bias or a β
            params[name] = 0.2 * rng.standard_normal(shape)
        else:  # a transposed conv's output pixel sums C_in · 2 · 2 taps; a conv's C_in · 4 · 4; a linear map's `in`
            fan_in = shape[0] * 4 if name in ("gen.W2", "gen.W3") else shape[0] if len(shape) == 2 else np.prod(shape[1:])
            params[name] = rng.standard_normal(shape) / np.sqrt(fan_in)
    stats = None
    if evaluation and draw(st.booleans(), label="evaluation mode"):
        stats = {}
        for bn in BATCH_NORMS:
            c = parameter_shapes(config)[f"{bn}.gamma"]
            stats[f"{bn}.running_mean"] = 0.3 * rng.standard_normal(c)
            stats[f"{bn}.running_var"] = rng.uniform(0.5, 2.0, c)
    case = {"z": rng.standard_normal((b, config.z_dim)), "x": rng.uniform(-1.0, 1.0, (b, 1, SIDE, SIDE)),
            "dx": rng.standard_normal((b, 1, SIDE, SIDE)), "dlogits": rng.standard_normal(b), "params": params, "stats": stats}
    cast = {k: ({n: a.astype(dtype) for n, a in v.items()} if isinstance(v, dict) else v.astype(dtype)) for k, v in case.items()
            if v is not None}
    return {**case, **cast, "config": config}


def _dcgan_training(dtype):
    return _dcgan(dtype, evaluation=False)


# Named dcgan_…: gan.py has a generator_forward too, and a name is its task's pytest marker.
DCGAN = [
    Task("dcgan_generator_forward", "dcgan", by_dtype(_dcgan),
         Forward("generator_forward", ("z", "params", "config", "stats"), {"x": (0,)}), "(x, cache)"),
    Task("dcgan_generator_backward", "dcgan", by_dtype(_dcgan_training),
         Backward("generator_forward", ("z", "params", "config"), "generator_backward", "dx", {"dz": (0,), "grads": (1,)}),
         "(dz, grads)"),
    Task("dcgan_discriminator_forward", "dcgan", by_dtype(_dcgan),
         Forward("discriminator_forward", ("x", "params", "config", "stats"), {"logits": (0,)}), "(logits, cache)"),
    Task("dcgan_discriminator_backward", "dcgan", by_dtype(_dcgan_training),
         Backward("discriminator_forward", ("x", "params", "config"), "discriminator_backward", "dlogits",
                  {"dx": (0,), "grads": (1,)}), "(dx, grads)"),
]

# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------

TASKS = {"layers": LAYERS, "attention": ATTENTION, "vae": VAE, "gan": GAN, "transformer": TRANSFORMER, "decoding": DECODING,
         "optim": OPTIM, "conv": CONV, "flash_attention": FLASH, "metrics": METRICS, "sampling": SAMPLING, "gpt": GPT,
         "diffusion": DIFFUSION, "unet": UNET, "dcgan": DCGAN}

# topic → the modules it hands out, in the order a student works through them; the scratch
# modules these import are handed out too (transformer's decoding brings encoder_decoder, the
# whole model, which has nothing to write). A topic whose module does not exist yet in scratch/,
# or has no entries here, is refused with a clear message.
TOPICS = {
    "attention": ("layers", "attention"),
    "vae": ("layers", "vae"),
    "gan": ("layers", "gan"),
    "transformer": ("layers", "attention", "transformer", "decoding"),
    "optim": ("optim",),
    "conv": ("layers", "conv"),  # batch norm's four functions are graded with layers
    "flash": ("flash_attention",),  # the forward and the backward; attention.py comes along, as flash imports it
    "metrics": ("metrics",),  # FID, KID, precision/recall, the Inception Score: no gradients, plain functions
    "gpt": ("layers", "attention", "transformer", "sampling", "gpt"),  # GELU is in layers; the block needs layer norm
    "diffusion": ("diffusion", "unet"),  # q_sample, the ε loss, the DDPM and DDIM steps; the guidance mix is in unet.py
    "dcgan": ("layers", "conv", "gan", "dcgan"),  # the networks on the conv ops and batch norm; the game is gan.py's
}


def tasks_for(modules):
    """Every task of these modules, in registry order, each module once."""
    seen = []
    for module in modules:
        if module not in seen:
            seen.append(module)
    return [task for module in seen for task in TASKS.get(module, [])]
