"""The GPT in TensorFlow 2: scratch/gpt.py with tf ops, every backward by tf.GradientTape.

Read it beside scratch/gpt.py: the names, the arguments and the NumPy-in/NumPy-out interface are
the same; each forward runs under a GradientTape, each backward asks the tape for the
vector-Jacobian product instead of the hand-derived lines. Inputs are checked by scratch's own
helpers, so a bad input raises the same error here as there.

After the functions comes the model the TensorFlow way: `GPT`, a `tf.Module` holding one
`tf.Variable` per scratch parameter (same names, same (in, out) layout: nothing is transposed),
called as `model(tokens)` → logits, with `to_tf_gpt` / `from_tf_gpt`. The tensor functions read
every size they need at run time, so they also run inside a `tf.function` (the trainer's step).
`filter_logits` and `sample` come from ports/tensorflow/sampling.py, re-exported as scratch/gpt.py
re-exports scratch's.

Shape letters as in scratch: B batch, T positions, V vocabulary, D model width, H heads.
"""

import numpy as np
import tensorflow as tf

from ports.tensorflow.attention import _watched
from ports.tensorflow.sampling import filter_logits, sample  # noqa: F401 (re-exported, as scratch/gpt.py does)
from ports.tensorflow.transformer import Cache, _cross_entropy, _gradients, _layer_norm, _multi_head, _watched_params
from scratch.gpt import GPTConfig, check_gpt_inputs, init_gpt, layer_names, parameter_shapes  # noqa: F401
from scratch.layers import GELU_C
from scratch.transformer import prefixed
from scratch.validate import as_float_array

__all__ = [
    "GPTConfig", "parameter_shapes", "init_gpt", "gelu_forward", "gelu_backward", "mlp_forward", "mlp_backward",
    "block_forward", "block_backward", "gpt_forward", "gpt_backward", "gpt_loss_forward", "gpt_loss_backward",
    "filter_logits", "sample", "GPT", "to_tf_gpt", "from_tf_gpt",
]


# ----------------------------------------------------------------------------------------------
# The building blocks on tensors: shared by the functions below and by the tf.Module at the end
# ----------------------------------------------------------------------------------------------


def _gelu(x):
    # Hendrycks and Gimpel 2016, Eq. 2, the tanh form: gelu(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))
    return 0.5 * x * (1.0 + tf.tanh(GELU_C * (x + 0.044715 * x * x * x)))


def _mlp(h, p):
    # mlp(h) = gelu(h W1 + b1) W2 + b2: widen to 4D, GELU, back to D
    return _gelu(h @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]  # (B, T, D)


def _causal(t):
    """(T, T) bool, True on and below the diagonal; t may be a tensor known only at run time."""
    return tf.cast(tf.linalg.band_part(tf.ones((t, t)), -1, 0), tf.bool)


def _block(x, p, n_head):
    """Pre-norm: x₁ = x + attn(ln_1(x)), causal; y = x₁ + mlp(ln_2(x₁)). p: one block's params, prefix removed."""
    mask = _causal(tf.shape(x)[1])  # (T, T), position t attends to positions ≤ t
    h1 = _layer_norm(x, p["ln_1.gamma"], p["ln_1.beta"])  # (B, T, D)
    x1 = x + _multi_head(h1, h1, prefixed(p, "attn."), n_head, mask)  # (B, T, D)
    return x1 + _mlp(_layer_norm(x1, p["ln_2.gamma"], p["ln_2.beta"]), prefixed(p, "mlp."))  # (B, T, D)


def _gpt(tokens, p, config):
    """logits (B, T, V) for token ids (B, T), an integer tensor; p a dict of tensors or variables."""
    # x = wte[tokens] + wpe[0 … T−1]
    x = tf.gather(p["wte"], tokens) + p["wpe"][: tf.shape(tokens)[1]]  # (B, T, D)
    for i in range(config.n_layer):
        x = _block(x, prefixed(p, f"h.{i}."), config.n_head)  # (B, T, D)
    h = _layer_norm(x, p["ln_f.gamma"], p["ln_f.beta"])  # (B, T, D)
    # logits = ln_f(x) wteᵀ: the output layer is the token embedding, transposed (tied)
    return tf.matmul(h, p["wte"], transpose_b=True)  # (B, T, V)


def _lm_loss(tokens, p, config, pad_id):
    """The mean next-token cross-entropy over the targets that are not pad_id, tokens (B, T + 1)."""
    logits = _gpt(tokens[:, :-1], p, config)  # (B, T, V)
    targets = tf.reshape(tokens[:, 1:], (-1,))  # (B·T,)
    counted = tf.ones_like(targets, tf.bool) if pad_id is None else tf.not_equal(targets, pad_id)
    return _cross_entropy(tf.reshape(logits, (-1, config.vocab_size)), targets, counted, 0.0)


def _check_params(params, config):
    """scratch's checks of every parameter (names, shapes, one dtype), with no tokens to check."""
    check_gpt_inputs(np.zeros((0, 1), np.int64), params, config)
    return np.asarray(params["wte"]).dtype


# ----------------------------------------------------------------------------------------------
# GELU, the MLP and the block
# ----------------------------------------------------------------------------------------------


def gelu_forward(x):
    """gelu(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))), scratch/layers.py's GELU."""
    x = as_float_array("x", x)
    with tf.GradientTape() as tape:
        xt = _watched(tape, x)
        y = _gelu(xt)
    return y.numpy(), Cache(tape, (xt,), y)


def gelu_backward(dout, cache):
    (dx,) = _gradients(dout, cache)
    return dx


MLP_NAMES = ("W1", "b1", "W2", "b2")


def mlp_forward(h, p):
    """mlp(h) = gelu(h W1 + b1) W2 + b2 for h (B, T, D): widen to 4D, GELU, back to D."""
    h = as_float_array("h", h)
    with tf.GradientTape() as tape:
        ht, pt = _watched(tape, h), _watched_params(tape, p, MLP_NAMES)
        m = _mlp(ht, pt)  # (B, T, D)
    return m.numpy(), Cache(tape, (ht, *pt.values()), m)


def mlp_backward(dm, cache):
    dh, *grads = _gradients(dm, cache)
    return dh, dict(zip(MLP_NAMES, grads))


def block_forward(x, params, i, n_head):
    """Block i of the stack on x (B, T, D), causal; returns (y (B, T, D), cache)."""
    x, names = as_float_array("x", x), layer_names(i)
    with tf.GradientTape() as tape:
        xt, p = _watched(tape, x), _watched_params(tape, params, names)
        y = _block(xt, prefixed(p, f"h.{i}."), n_head)  # (B, T, D)
    return y.numpy(), (Cache(tape, (xt, *p.values()), y), names)


def block_backward(dy, cache):
    """Return (dx, grads) with grads keyed like block i's parameters ("h.{i}.…")."""
    cache, names = cache
    dx, *grads = _gradients(dy, cache)
    return dx, dict(zip(names, grads))


# ----------------------------------------------------------------------------------------------
# The model and its language-model loss
# ----------------------------------------------------------------------------------------------


def gpt_forward(tokens, params, config):
    """logits (B, T, V) for tokens (B, T): logits[:, t] scores the token after position t, from positions ≤ t."""
    tokens = check_gpt_inputs(tokens, params, config)
    with tf.GradientTape() as tape:
        p = _watched_params(tape, params, parameter_shapes(config))
        logits = _gpt(tf.constant(tokens, tf.int64), p, config)  # (B, T, V)
    return logits.numpy(), (Cache(tape, tuple(p.values()), logits), tuple(p))


def gpt_backward(dlogits, cache):
    """grads for every parameter, keyed and ordered like params, from dlogits (B, T, V)."""
    cache, names = cache
    return dict(zip(names, _gradients(dlogits, cache)))


def gpt_loss_forward(tokens, params, config, pad_id=None):
    """The causal language-model loss of sequences tokens (B, T + 1): each position predicts the next.

    Inputs tokens[:, :−1], targets tokens[:, 1:]; the mean cross-entropy in nats over the targets
    that are not `pad_id`. Returns (loss, cache).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must have shape (B, T + 1) with T ≥ 1 (inputs and the targets shifted by one), "
                         f"got shape {tokens.shape}")
    check_gpt_inputs(tokens[:, :-1], params, config)
    with tf.GradientTape() as tape:
        p = _watched_params(tape, params, parameter_shapes(config))
        # −(1/N) Σ log softmax(logits)[target], N the number of targets that are not padding
        loss = _lm_loss(tf.constant(tokens, tf.int64), p, config, pad_id)
    return float(loss), (Cache(tape, tuple(p.values()), loss), tuple(p))


def gpt_loss_backward(dloss, cache):
    """grads of dloss · loss for every parameter."""
    cache, names = cache
    return dict(zip(names, _gradients(np.asarray(dloss), cache)))


# ----------------------------------------------------------------------------------------------
# The model as a tf.Module
# ----------------------------------------------------------------------------------------------


class GPT(tf.Module):
    """The GPT as a `tf.Module`: `params`, one `tf.Variable` per scratch parameter, same names and layout.

    Initialised by scratch's `init_gpt` with a NumPy generator seeded by `seed`, so a model built
    here starts from the weights scratch starts from. `model(tokens (B, T))` → logits (B, T, V);
    `model.loss(tokens (B, T + 1), pad_id)` → the language-model loss; `generate` samples.
    """

    def __init__(self, config, dtype=tf.float32, seed=0, name="gpt"):
        super().__init__(name=name)
        self.config = config
        initial = init_gpt(config, np.random.default_rng(seed), tf.as_dtype(dtype).as_numpy_dtype)
        # name → tf.Variable; tf.Module tracks the dict, so these are its trainable_variables
        self.params = {key: tf.Variable(value, name=key.replace(".", "_")) for key, value in initial.items()}

    def __call__(self, tokens):
        return _gpt(tf.convert_to_tensor(tokens, tf.int64), self.params, self.config)  # (B, T, V)

    def loss(self, tokens, pad_id=None):
        return _lm_loss(tf.convert_to_tensor(tokens, tf.int64), self.params, self.config, pad_id)

    def generate(self, prompt, max_new_tokens, rng, temperature=1.0, top_k=None, top_p=None):
        """prompt (B, T₀) ids followed by up to max_new_tokens drawn ones, as a NumPy array.

        scratch's generate(use_cache=False): no key/value cache, each step runs the model on the whole
        sequence again, and stops at block_size + 1 tokens (the learned positions end there). Each token
        is drawn by `sample` with the NumPy generator `rng`, one uniform number per row and step, as
        scratch draws them, so the same generator gives scratch's tokens.
        """
        tokens = np.asarray(prompt)
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.config.block_size:
            raise ValueError(f"prompt must have shape (B, T₀) with 1 ≤ T₀ ≤ block_size = {self.config.block_size}, "
                             f"got shape {tokens.shape}")
        for _ in range(min(int(max_new_tokens), self.config.block_size + 1 - tokens.shape[1])):
            logits = self(tokens)[:, -1].numpy()  # (B, V)
            nxt = sample(logits, rng, temperature, top_k, top_p)  # (B,)
            tokens = np.concatenate([tokens, nxt[:, None].astype(tokens.dtype)], axis=1)
        return tokens


def to_tf_gpt(params, config):
    """A `GPT` tf.Module holding copies of a scratch parameter dict (same names, shapes, dtype)."""
    dtype = _check_params(params, config)
    model = GPT(config, dtype=tf.as_dtype(dtype))
    for name, variable in model.params.items():
        variable.assign(params[name])
    return model


def from_tf_gpt(model):
    """The scratch parameter dict of a `GPT` tf.Module (the inverse of `to_tf_gpt`)."""
    return {name: model.params[name].numpy().copy() for name in parameter_shapes(model.config)}
